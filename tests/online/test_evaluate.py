"""`alignjax eval`: statistics against SciPy / hand-computed values, and a sweep on a tiny
model whose table must agree with rewards recomputed from the saved responses."""

import functools
import json
import re

import numpy as np
import pytest

from alignjax.commands import eval as eval_cmd
from alignjax.evaluation import grid as eval_grid
from alignjax.evaluation.steerability import average_ranks, pareto_mask, spearman
from test_generate_cli import byte_model  # noqa: F401  (the session fixture)

scipy_stats = pytest.importorskip("scipy.stats")


def test_average_ranks_by_hand():
    assert average_ranks([10, 20, 20, 5, 20]).tolist() == [2.0, 4.0, 4.0, 1.0, 4.0]


def test_spearman_by_hand_with_ties():
    # x ranks [1.5, 1.5, 3, 4], y ranks [1, 3, 2, 4]; centred (-1, -1, .5, 1.5) . (-1.5, .5, -.5, 1.5)
    # = 3, squared norms 4.5 and 5.
    assert spearman([0, 0, 1, 2], [1, 3, 2, 4]) == pytest.approx(3 / np.sqrt(4.5 * 5), abs=1e-12)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


@pytest.mark.parametrize("seed", range(4))
def test_spearman_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, 60).astype(float)  # heavy ties, like weights on a grid
    y = rng.integers(0, 10, 60) + 0.5 * x
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic, abs=1e-12)


def test_pareto_mask_by_hand():
    points = [[0, 3], [1, 2], [1, 1], [3, 0], [0, 3], [2, 0]]
    # [1, 1] is dominated by [1, 2]; [2, 0] by [3, 0]; the tied [0, 3]s dominate neither.
    assert pareto_mask(points).tolist() == [True, True, False, True, True, False]


def test_weight_grid():
    two = eval_grid.weight_grid(["helpful", "harmless"], 5)
    assert [p.targets["helpful"] for p in two] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(p.fields["weights"]["harmless"] == 1 - p.targets["helpful"] for p in two)
    three = eval_grid.weight_grid(["a", "b", "c"], 3)
    assert len(three) == 6 and all(sum(p.targets.values()) == pytest.approx(1.0) for p in three)
    with pytest.raises(ValueError, match="at least two distinct"):
        eval_grid.weight_grid(["a"], 5)


def test_parse_reward_arg():
    assert eval_grid.parse_reward_arg("length") == ("length", {"name": "length"})
    assert eval_grid.parse_reward_arg(
        "formal=keyword_count:keywords=[Certainly, In my view],case_sensitive=true"
    ) == (
        "formal",
        {"name": "keyword_count", "keywords": ["Certainly", "In my view"], "case_sensitive": True},
    )
    with pytest.raises(ValueError, match="is not key=value"):
        eval_grid.parse_reward_arg("length:words")


CONDITIONS = """\
system: Be helpful.
conditions:
  terse: {user_info: "Say little.", targets: {length: 0}}
  wordy: {user_info: "Say a lot.", targets: {length: 1, cats: 1}}
  plain: {user_info: "Just answer.", targets: {length: 0.5, cats: 0}}
"""


def _write_inputs(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": p, "chosen": "x"}) + "\n" for p in ("Hi", "Tell me more", "Why?"))
    )
    spec = tmp_path / "conditions.yaml"
    spec.write_text(CONDITIONS)
    return str(prompts), str(spec)


def test_condition_sweep_table_agrees_with_saved_responses(byte_model, tmp_path):  # noqa: F811
    prompts, spec = _write_inputs(tmp_path)
    out = tmp_path / "eval"
    code = eval_cmd.main(
        [
            byte_model["ckpt"],
            "--config",
            byte_model["config"],
            "--prompts",
            prompts,
            "--condition-spec",
            spec,
            "--reward",
            "length",
            "--reward",
            "cats=keyword_count:keywords=[e, a]",
            "--num-samples",
            "2",
            "--max-new-tokens",
            "12",
            "--temperature",
            "1.0",
            "--seed",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    table = json.loads((out / "table.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [p["name"] for p in table["points"]] == ["terse", "wordy", "plain"]
    assert table["objectives"] == ["length", "cats"] and len(samples) == 3 * 3 * 2
    # Independent scores: character count, and case-insensitive counts of "e" and "a".
    recomputed = {
        "length": lambda r: len(r),
        "cats": lambda r: len(re.findall("e", r, re.I)) + len(re.findall("a", r, re.I)),
    }
    for point in table["points"]:
        mine = [s for s in samples if s["point"] == point["name"]]
        assert point["n"] == len(mine) == 6
        for label, score in recomputed.items():
            values = np.asarray([score(s["response"]) for s in mine], float)
            assert point["scores"][label]["mean"] == pytest.approx(values.mean(), abs=1e-9)
            assert point["scores"][label]["std"] == pytest.approx(values.std(), abs=1e-9)
    targets = {"terse": 0.0, "wordy": 1.0, "plain": 0.5}
    x = [targets[s["point"]] for s in samples]
    y = [len(s["response"]) for s in samples]
    means = [p["scores"]["length"]["mean"] for p in table["points"]]
    steer = table["steerability"]["length"]
    if np.ptp(y) > 0:
        assert steer["samples"] == pytest.approx(scipy_stats.spearmanr(x, y).statistic, abs=1e-9)
    assert steer["grid_means"] == pytest.approx(scipy_stats.spearmanr([0, 1, 0.5], means).statistic, abs=1e-9)
    assert table["steerability"]["cats"]["n_points"] == 2  # terse sets no target for cats
    png = (out / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(str(out / "pareto.png")).shape[0] > 100


def test_weights_sweep_renders_weights(byte_model, tmp_path):  # noqa: F811
    prompts, _ = _write_inputs(tmp_path)
    out = tmp_path / "eval"
    code = eval_cmd.main(
        [
            byte_model["ckpt"],
            "--config",
            byte_model["config"],
            "--prompts",
            prompts,
            "--max-prompts",
            "2",
            "--weights-grid",
            "helpful,harmless",
            "--grid-steps",
            "3",
            "--reward",
            "helpful=length",
            "--reward",
            "harmless=keyword_presence:keywords=[a]",
            "--max-new-tokens",
            "8",
            "--temperature",
            "0",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    table = json.loads((out / "table.json").read_text())
    assert [p["fields"]["weights"] for p in table["points"]] == [
        {"helpful": 0.0, "harmless": 1.0},
        {"helpful": 0.5, "harmless": 0.5},
        {"helpful": 1.0, "harmless": 0.0},
    ]
    assert set(table["steerability"]) == {"helpful", "harmless"}
    assert all(p["n"] == 2 for p in table["points"])
    means = np.asarray([[p["scores"][k]["mean"] for k in ("helpful", "harmless")] for p in table["points"]])
    assert table["pareto"] == [p["name"] for p, keep in zip(table["points"], pareto_mask(means)) if keep]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--reward", "keyword:keywords=[please]"], "unknown reward 'keyword'; known rewards: ["),
        (["--reward", "length:unit=bytes"], "unit='bytes' is not one of"),
        (["--reward", "length:size=3"], "got unknown arguments ['size']"),
        (["--reward", "length", "--reward", "length"], "reward labels ['length'] are used twice"),
        ([], "no rewards: give --reward NAME"),
    ],
)
def test_reward_errors_are_explained(tmp_path, capsys, flags, message):
    code = eval_cmd.main(["unused", "--out", str(tmp_path), "--weights-grid", "a,b", *flags])
    assert code == 2
    assert message in capsys.readouterr().err


def test_sweep_errors_are_explained(byte_model, tmp_path, capsys):  # noqa: F811
    prompts, spec = _write_inputs(tmp_path)
    base = [
        byte_model["ckpt"],
        "--config",
        byte_model["config"],
        "--prompts",
        prompts,
        "--reward",
        "length",
        "--out",
        str(tmp_path / "o"),
    ]
    assert eval_cmd.main(base + ["--conditions", "terse,loud", "--condition-spec", spec]) == 2
    assert "['loud'] not in" in capsys.readouterr().err
    assert eval_cmd.main(base + ["--weights-grid", "a,b", "--condition-spec", spec]) == 2
    assert "choose one sweep" in capsys.readouterr().err


PDPO_CONFIG = """\
model: {preset: tiny}
data: {train: data/train.jsonl, max_length: 96, max_prompt_length: 48}
loss: {type: pdpo, beta: 0.5, pdpo: {n_user_tokens: 2}}
stages: [{name: pdpo}]
"""
PAIRS = [
    ("Hi", "Hello there.", "Go away.", "ann"),
    ("Why?", "Because.", "Because, you see, reasons.", "bob"),
    ("Tea?", "Yes please.", "No.", "ann"),
    ("Name?", "Bo.", "It is Bo.", "bob"),
]


def _pdpo_run(byte_model, tmp_path):  # noqa: F811
    """A P-DPO run directory around the tiny model: random user model, model as reference."""
    import jax

    from alignjax.convert import api
    from alignjax.convert import model_checkpoint as mc
    from alignjax.models.user_model import UserModel

    cfg, params, meta = api.load_hf_model(byte_model["hf"])
    users = UserModel(num_users=3, width=cfg.hidden_size, num_tokens=2).init(
        jax.random.key(0), np.zeros(1, np.int32)
    )
    users = jax.tree.map(
        lambda x: np.random.default_rng(1).normal(0, 1.0, x.shape).astype(np.float32), users["params"]
    )
    run = tmp_path / "run"
    mc.save_model(
        str(run / "checkpoints"),
        {**params, "user_model": users},
        meta,
        step=5,
        tokenizer_dir=byte_model["hf"],
    )
    mc.save_model(str(run / "reference" / "pdpo"), params, meta, step=0)
    (run / "data").mkdir()
    rows = [{"prompt": p, "chosen": c, "rejected": r, "user_id": u} for p, c, r, u in PAIRS]
    (run / "data" / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    (run / "config.yaml").write_text(PDPO_CONFIG)
    return run, cfg, params, users


def test_pdpo_user_accuracy_matches_hand_computed_margins(byte_model, tmp_path, monkeypatch):  # noqa: F811
    import jax
    import jax.numpy as jnp

    from alignjax.models import decoder, head
    from alignjax.generation.soft_prompt import soft_tokens_BxTxD
    from test_generate_cli import BOS_ID, EOS_ID, PAD_ID

    run, cfg, params, users = _pdpo_run(byte_model, tmp_path)
    monkeypatch.chdir(run)  # the config's data.train is relative to the run
    code = eval_cmd.main(
        [str(run), "--pdpo-eval", str(run / "data" / "train.jsonl"), "--out", str(tmp_path / "o")]
    )
    assert code == 0
    table = json.loads((tmp_path / "o" / "table.json").read_text())["pdpo_accuracy"]

    length = 48  # every sequence right-padded to one length (causal: nothing leaks back), one compile

    @functools.partial(jax.jit, static_argnums=2)
    def token_logps(tokens_1xL, embeds_1xTxD, use_slots):
        extra = decoder.ExtraEmbeddings(embeds_1xTxD, jnp.asarray([[1, 2]]))
        hidden = decoder.apply(
            params,
            cfg,
            tokens_1xL,
            jnp.arange(length)[None],
            jnp.ones((1, length), jnp.int32),
            extra if use_slots else None,
        )
        return jax.nn.log_softmax(head.logits_BxLxV(params, cfg, hidden)[0], axis=-1)

    def response_logp(prompt_ids, response_ids, embeds=None):
        ids = prompt_ids + response_ids
        tokens = np.zeros((1, length), np.int32)
        tokens[0, : len(ids)] = ids
        logp = np.asarray(
            token_logps(
                tokens,
                embeds if embeds is not None else np.zeros((1, 2, cfg.hidden_size)),
                embeds is not None,
            ),
            np.float64,
        )
        return sum(logp[t - 1, ids[t]] for t in range(len(prompt_ids), len(ids)))

    margins = {"ann": [], "bob": []}
    for prompt, chosen, rejected, user in PAIRS:
        # Plain-text records with no conditioning skip the chat template, as in training.
        with_slots, without = [BOS_ID, PAD_ID, PAD_ID, *prompt.encode()], [BOS_ID, *prompt.encode()]
        embeds = soft_tokens_BxTxD(users, [{"ann": 1, "bob": 2}[user]])  # sorted ids -> 1, 2
        reward = [
            response_logp(with_slots, [*y.encode(), EOS_ID], embeds)
            - response_logp(without, [*y.encode(), EOS_ID])
            for y in (chosen, rejected)
        ]
        margins[user].append(0.5 * (reward[0] - reward[1]))
    for user, values in margins.items():
        assert table[user]["n"] == 2
        assert table[user]["margin"] == pytest.approx(np.mean(values), abs=2e-4)
        assert table[user]["accuracy"] == np.mean(np.asarray(values) > 0)
    assert table["all"]["n"] == 4
