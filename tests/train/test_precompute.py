"""`alignjax precompute-ref` and training with `loss.reference: precomputed`.

The runs are real processes on the tiny model: a DPO stage with the reference in the
step, the same stage after `precompute-ref` with the reference read from the table,
and a run whose data changed after the table was written. The table itself is checked
against a float64 NumPy forward of the reference model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import train_helpers as th
import yaml

from alignjax.train.config import Stage, stages
from alignjax.train.datasets import stage_data
from alignjax.train.fingerprints import data_identity, fingerprint
from alignjax.train.reference_table import TABLE_DIR, ReferenceTable, load_table, table_path, write_table

STEPS = 6
N_TRAIN, N_EVAL = 96, 32
TRAIN_TABLE = "stage 'train' data.train"


def _write_data(directory: str) -> tuple[str, str]:
    """A slice of the built-in conditioned-style task, as plain files (no `builtin:`)."""
    from alignjax.tasks import BUILTIN_TASKS

    full = os.path.join(directory, "full")
    BUILTIN_TASKS["conditioned_style"](full, seed=0)
    out = []
    for name, n in (("train", N_TRAIN), ("eval", N_EVAL)):
        with open(os.path.join(full, f"{name}.jsonl")) as f:
            lines = f.readlines()[:n]
        path = os.path.join(directory, f"{name}.jsonl")
        with open(path, "w") as f:
            f.writelines(lines)
        out.append(path)
    return out[0], out[1]


def _config(path: str, run_dir: str, train: str, evaluation: str, reference: str) -> str:
    cfg = th.tiny_config(run_dir)
    del cfg["stages"]
    cfg["data"] = dict(cfg["data"], train=train, eval={"heldout": evaluation})
    del cfg["data"]["builtin"]
    cfg["loss"]["reference"] = reference
    cfg["train"].update(steps=STEPS, save_every=STEPS)
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def _precompute(config: str, cache: str, log_path: str, expect_rc: int = 0) -> str:
    # The module's own entry point: the same `main` that `alignjax precompute-ref` calls.
    with open(log_path, "w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "alignjax.commands.precompute_ref", config],
            cwd=th.REPO,
            env=th.train_env(1, cache),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=240,
        )
    with open(log_path) as f:
        text = f.read()
    assert proc.returncode == expect_rc, f"precompute-ref exited {proc.returncode}:\n{text[-4000:]}"
    return text


@dataclasses.dataclass(frozen=True)
class Runs:
    root: str
    train_path: str
    eval_path: str
    in_step_dir: str
    precomputed_dir: str
    precomputed_config: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory, compile_cache) -> Runs:
    root = str(tmp_path_factory.mktemp("precompute"))
    train, evaluation = _write_data(root)
    in_step_dir, precomputed_dir = os.path.join(root, "in_step"), os.path.join(root, "precomputed")
    in_step = _config(os.path.join(root, "in_step.yaml"), in_step_dir, train, evaluation, "model")
    precomputed = _config(
        os.path.join(root, "precomputed.yaml"), precomputed_dir, train, evaluation, "precomputed"
    )
    th.run(in_step, cache_dir=compile_cache, log_path=os.path.join(root, "in_step.log"))
    _precompute(precomputed, compile_cache, os.path.join(root, "precompute.log"))
    th.run(precomputed, cache_dir=compile_cache, log_path=os.path.join(root, "precomputed.log"))
    return Runs(root, train, evaluation, in_step_dir, precomputed_dir, precomputed)


def _table(run_dir: str, what: str):
    directory = os.path.join(run_dir, TABLE_DIR)
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json"):
            with open(os.path.join(directory, name)) as f:
                info = json.load(f)
            if info.get("what") == what:
                with np.load(os.path.join(directory, name[: -len(".json")] + ".npz")) as table:
                    return info, {k: table[k] for k in table.files}
    raise AssertionError(f"no table for {what} in {directory}: {os.listdir(directory)}")


@pytest.mark.slow
def test_precomputed_reference_trains_exactly_like_the_in_step_reference(runs):
    expected, actual = th.losses(runs.in_step_dir), th.losses(runs.precomputed_dir)
    assert sorted(actual) == list(range(1, STEPS + 1))
    th.assert_losses_match(actual, expected, range(1, STEPS + 1), 1e-5, "precomputed vs in-step reference")
    # The implicit rewards use the reference too, so their metrics must agree as well.
    by_step = {r["step"]: r for r in th.metrics(runs.precomputed_dir) if "loss" in r}
    for r in th.metrics(runs.in_step_dir):
        if "rewards/margins" in r:
            assert abs(by_step[r["step"]]["rewards/margins"] - r["rewards/margins"]) <= 1e-5, r["step"]
    # Summed log-probs near -300 carry float32 steps of 3e-5: a relative bound for those.
    # (At step 1 the in-step reference is the policy's own values, exactly; the table's,
    # computed by another program, differ from them by ~1e-6, and the runs drift that much.)
    th.assert_eval_match(
        runs.precomputed_dir, runs.in_step_dir, 1e-5, "eval with precomputed reference", rtol=1e-6
    )
    # No reference model was held (nor saved) by the precomputed run.
    assert os.path.isdir(os.path.join(runs.in_step_dir, "reference", "train"))
    assert not os.path.exists(os.path.join(runs.precomputed_dir, "reference"))
    info, table = _table(runs.precomputed_dir, TRAIN_TABLE)
    assert info["records"] == N_TRAIN and len(table["record_key_N"]) == N_TRAIN
    _table(runs.precomputed_dir, "stage 'train' data.eval.heldout")


@pytest.mark.slow
def test_table_matches_a_float64_forward_of_the_reference(runs):
    import jax
    import jax.numpy as jnp

    from alignjax.convert.loading import load_model
    from alignjax.data.byte_tokenizer import VOCAB_SIZE, make_byte_tokenizer
    from alignjax.data.pipeline import make_pipeline
    from alignjax.data.records import record_key
    from alignjax.models import decoder, head
    from alignjax.train.config import load_config

    cfg = load_config(runs.precomputed_config)
    model = load_model(cfg.model, jax.random.key(cfg.seed), vocab_size=VOCAB_SIZE)
    _, table = _table(runs.precomputed_dir, TRAIN_TABLE)
    (_, dcfg), *_ = stage_data(stages(cfg)[0], 0, None, cfg.run_dir).tables
    dcfg = dataclasses.replace(dcfg, batch_size=1)
    wanted = {record_key(0, 0), record_key(0, 57)}
    # The model's float32 logits; everything after them in float64 NumPy.
    logits_fn = jax.jit(
        lambda p, tokens: head.logits_BxLxV(
            p,
            model.cfg,
            decoder.apply(p, model.cfg, tokens, jnp.arange(tokens.shape[1])[None], jnp.ones_like(tokens)),
        )
    )
    checked = 0
    with make_pipeline(dataclasses.replace(dcfg, batch_size=1), make_byte_tokenizer()) as pipeline:
        for batch in pipeline:
            key = int(batch.record_key_P[0])
            if key not in wanted:
                continue
            expected = []
            for row in (0, 1):  # padded pair: row 0 chosen, row 1 rejected
                keep = batch.segment_ids_BxL[row] > 0
                tokens = batch.tokens_BxL[row][keep][None]
                mask = batch.loss_mask_BxL[row][keep]
                logits = np.asarray(logits_fn(model.params, tokens), np.float64)[0]
                shifted = logits - logits.max(-1, keepdims=True)
                logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
                targets = tokens[0, 1:]
                expected.append(float(np.sum(logp[np.arange(len(targets)), targets] * mask[1:])))
            at = int(np.searchsorted(table["record_key_N"], key))
            assert table["record_key_N"][at] == key
            np.testing.assert_allclose(
                [table["chosen_N"][at], table["rejected_N"][at]], expected, rtol=2e-6, atol=2e-4
            )
            checked += 1
            if checked == len(wanted):
                break
    assert checked == len(wanted)


@pytest.mark.slow
def test_changed_data_file_is_a_stale_table_error_naming_the_command(runs, tmp_path, compile_cache):
    data = tmp_path / "data"
    data.mkdir()
    with open(runs.train_path) as f:
        lines = f.readlines()
    record = json.loads(lines[3])
    record["chosen"] += " Indeed."
    lines[3] = json.dumps(record) + "\n"
    train = str(data / "train.jsonl")
    with open(train, "w") as f:
        f.writelines(lines)
    eval_path = shutil.copy(runs.eval_path, str(data / "eval.jsonl"))
    run_dir = str(tmp_path / "run")
    shutil.copytree(os.path.join(runs.precomputed_dir, TABLE_DIR), os.path.join(run_dir, TABLE_DIR))
    config = _config(str(tmp_path / "changed.yaml"), run_dir, train, eval_path, "precomputed")

    out = th.run(config, cache_dir=compile_cache, log_path=str(tmp_path / "changed.log"), expect_rc=2)

    assert f"{TRAIN_TABLE}: loss.reference=precomputed, but there is no table" in out, out[-3000:]
    assert "is stale: data.sources[0].sha256 changed" in out, out[-3000:]
    assert f"Run `alignjax precompute-ref {config}` to compute it" in out
    assert not th.finalized_steps(run_dir)


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_changed_max_length_is_a_stale_table_error(tmp_path, request, where):
    """Tables are written, found and explained the same way in a local run_dir and in a bucket."""
    from alignjax.data.byte_tokenizer import make_byte_tokenizer
    from alignjax.train.config import TrainConfig

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    tokenizer = make_byte_tokenizer()
    model_id = {
        "hf_config": {"hidden_size": 8},
        "dtype": "float32",
        "param_dtype": "float32",
        "params": "0" * 64,
    }

    def identity(max_length):
        cfg = TrainConfig()
        cfg.data.train, cfg.data.max_length, cfg.data.max_prompt_length = str(data), max_length, 32
        ((label, dcfg),) = stage_data(Stage("train", cfg, 0, 1), 0, None, cfg.run_dir).tables
        assert label == "data.train"
        return data_identity(dcfg, tokenizer)

    run_dir = (
        str(tmp_path / "run") if where == "local" else f"{request.getfixturevalue('gcs')}/{tmp_path.name}"
    )
    with pytest.raises(
        ValueError, match=r"no table .*Run `alignjax precompute-ref x.yaml` to compute it"
    ) as missing:
        load_table(
            run_dir,
            model_id,
            identity(128),
            what="stage 'train' data.train",
            command="alignjax precompute-ref x.yaml",
        )
    assert "stale" not in str(missing.value)
    old = identity(128)
    fp = fingerprint(model_id, old)
    write_table(
        table_path(run_dir, fp),
        np.array([1 << 40], np.int64),
        np.zeros(1, np.float32),
        np.zeros(1, np.float32),
        {"what": "stage 'train' data.train", "model": model_id, "data": old},
    )
    assert load_table(run_dir, model_id, old, what="stage 'train' data.train", command="c").path.endswith(
        f"{fp}.npz"
    )
    with pytest.raises(ValueError, match=r"is stale: data.max_length: 128 -> 96\. Run `c`"):
        load_table(run_dir, model_id, identity(96), what="stage 'train' data.train", command="c")
    changed_model = dict(model_id, params="1" * 64)
    with pytest.raises(ValueError, match=r"is stale: model.params changed"):
        load_table(run_dir, changed_model, old, what="stage 'train' data.train", command="c")


def test_a_pair_missing_from_the_table_is_an_error_naming_its_record():
    from alignjax.data.record_types.preference import PairBatch
    from alignjax.data.records import record_key

    table = ReferenceTable(
        "t.npz",
        np.array([record_key(0, 1), record_key(1, 4)], np.int64),
        np.array([-3.0, -5.0], np.float32),
        np.array([-4.0, -6.0], np.float32),
        ("a.jsonl", "b.jsonl"),
        "alignjax precompute-ref c.yaml",
    )
    zeros = np.zeros((4, 8), np.int32)

    def batch(keys, valid):
        return PairBatch(
            zeros,
            zeros,
            zeros,
            zeros,
            np.zeros((4, 1), np.int32),
            np.zeros((4, 1), np.int32),
            np.array(valid, np.int32),
            np.zeros(2, np.int32),
            np.zeros(2, np.int32),
            record_key_P=np.array(keys, np.int64),
        )

    out = table.attach(batch([record_key(1, 4), 0], [1, 0]))  # the second pair is padding
    np.testing.assert_array_equal(out.ref_chosen_logps_P, [-5.0, 0.0])
    np.testing.assert_array_equal(out.ref_rejected_logps_P, [-6.0, 0.0])
    with pytest.raises(
        ValueError,
        match=r"t.npz: no reference log-probs for the pair from b.jsonl row 2 "
        r"\(record key 2199023255554\).*alignjax precompute-ref c.yaml",
    ):
        table.attach(batch([record_key(0, 1), record_key(1, 2)], [1, 1]))


@pytest.mark.parametrize("loss_type", ["sparsepo", "pdpo", "tdpo"])
def test_precomputed_is_refused_where_the_reference_works_token_by_token(loss_type):
    from alignjax.train.config import LossSection

    with pytest.raises(
        ValueError, match=rf"loss.reference=precomputed is not supported for loss.type={loss_type}"
    ):
        LossSection(type=loss_type, reference="precomputed")
    with pytest.raises(ValueError, match=r"loss.reference='frozen': use model or precomputed"):
        LossSection(reference="frozen")
