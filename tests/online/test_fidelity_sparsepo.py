"""`alignjax eval --fidelity sparsepo`: the sentiment task holds what the reproduction
assumes, and its scores, KL, mask statistics and dominance match independent cases."""

import json
import re

import numpy as np
import pytest

from alignjax.commands import eval as eval_cmd
from alignjax.evaluation import fidelity
from alignjax.evaluation.fidelity import generation_kl, sparsepo
from alignjax.tasks import BUILTIN_TASKS, sentiment_words
from alignjax.train.config import LossSection
from alignjax.train.methods.sparsepo import SparsePOSection


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _words(text):
    return re.findall(r"[a-z]+|[^a-z ]", text.lower())


def test_chosen_and_rejected_differ_only_in_lexicon_words(tmp_path):
    paths = BUILTIN_TASKS["sentiment_words"](str(tmp_path), n_train=300, n_eval=40)
    positive, negative = set(sentiment_words.POSITIVE), set(sentiment_words.NEGATIVE)
    for name in ("train", "eval"):
        for r in _read(paths[name]):
            chosen, rejected = _words(r["chosen"]), _words(r["rejected"])
            assert len(chosen) == len(rejected)
            diff = [(c, w) for c, w in zip(chosen, rejected) if c != w]
            assert len(diff) == 2
            assert all(c in positive and w in negative for c, w in diff)
            assert sentiment_words.score(r["chosen"]) == 1.0 and sentiment_words.score(r["rejected"]) == -1.0


def test_splits_are_disjoint_and_sft_is_mixed(tmp_path):
    paths = BUILTIN_TASKS["sentiment_words"](str(tmp_path), n_train=400, n_eval=40)
    train, held = _read(paths["train"]), _read(paths["eval"])
    prompts = {r["prompt"] for r in _read(paths["eval_prompts"])}
    heldout_items, train_items = sentiment_words.split_items(0)
    assert not set(heldout_items) & set(train_items)
    assert prompts == {sentiment_words.prompt(i) for i in heldout_items}
    assert {r["prompt"] for r in held} <= prompts
    assert not {r["prompt"] for r in train} & prompts
    sft = _read(paths["sft"])
    assert not {r["prompt"] for r in sft} & prompts
    scores = np.array([sentiment_words.score(r["response"]) for r in sft])
    # each of the two slots is positive or negative at random: all three scores, mean near 0
    assert set(scores.tolist()) == {-1.0, 0.0, 1.0}
    assert abs(scores.mean()) < 0.15


def test_lexicon_score_and_spans():
    text = "The cafe was Great, and the staff was unpleasant; pleasant-ish."
    spans = sentiment_words.lexicon_spans(text)
    assert [(text[s:e], p) for s, e, p in spans] == [("Great", 1), ("unpleasant", -1), ("pleasant", 1)]
    assert sentiment_words.score(text) == pytest.approx(1 / 3)
    assert sentiment_words.score("great great great") == 1.0
    assert sentiment_words.score("The cafe was fine.") == 0.0
    assert sentiment_words.score("greatness") == 0.0  # whole words only


def test_sentiment_flags_by_character_overlap():
    pieces = ["The ", "ca", "fe was gr", "eat", ", ok", "."]
    assert sparsepo.sentiment_flags(pieces).tolist() == [False, False, True, True, False, False]
    bytes_ = list("was awful.")
    assert sparsepo.sentiment_flags(bytes_).tolist() == [False] * 4 + [True] * 5 + [False]


def test_mask_statistics():
    weights_T = np.array([0.0, 0.0, 2.0, 1.0, 0.0, 3.0])
    sentiment_T = np.array([False, False, True, False, False, True])
    stats = sparsepo.mask_statistics(weights_T, sentiment_T)
    assert stats["sparsity"] == pytest.approx(0.5)
    assert stats["mean"] == pytest.approx(1.0)
    assert stats["mean_sentiment"] == pytest.approx(2.5)
    assert stats["mean_other"] == pytest.approx(0.25)
    assert stats["sentiment_over_other"] == pytest.approx(10.0)
    assert (stats["tokens"], stats["sentiment_tokens"]) == (6, 2)


def test_dominated():
    assert sparsepo.dominated((2.0, 0.5), [(1.0, 0.6)])
    assert sparsepo.dominated((2.0, 0.5), [(2.0, 0.6)])
    assert not sparsepo.dominated((2.0, 0.5), [(2.0, 0.5)])  # equal is not dominance
    assert not sparsepo.dominated((2.0, 0.5), [(1.0, 0.4), (3.0, 0.9)])
    assert not sparsepo.dominated((2.0, 0.5), [])


def test_response_batch_and_sequence_kl():
    tokens_BxL, segments_BxL, mask_BxL = generation_kl.response_batch([[1, 2], [3]], [[4, 5, 6], [7]], 0, 4)
    assert tokens_BxL.tolist() == [[1, 2, 4, 5, 6, 0, 0, 0], [3, 7, 0, 0, 0, 0, 0, 0]]
    assert segments_BxL.tolist() == [[1] * 5 + [0] * 3, [1, 1] + [0] * 6]
    assert mask_BxL.tolist() == [[0, 0, 1, 1, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0]]
    rng = np.random.default_rng(0)
    policy_BxL, ref_BxL = rng.normal(size=(2, 8)), rng.normal(size=(2, 8))
    expected = [(policy_BxL[0, 2:5] - ref_BxL[0, 2:5]).sum(), policy_BxL[1, 1] - ref_BxL[1, 1]]
    np.testing.assert_allclose(generation_kl.sequence_kl_N(policy_BxL, ref_BxL, mask_BxL), expected)


def test_sequence_kl_estimates_the_exact_kl():
    """Monte-Carlo mean of sum log pi - log pi_ref over samples of pi -> the exact sequence
    KL, on a two-step process small enough to enumerate."""
    rng = np.random.default_rng(1)
    pi_1, ref_1 = np.array([0.7, 0.3]), np.array([0.4, 0.6])
    pi_2, ref_2 = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.5, 0.5], [0.5, 0.5]])
    exact = sum(
        pi_1[a] * pi_2[a, b] * (np.log(pi_1[a] * pi_2[a, b]) - np.log(ref_1[a] * ref_2[a, b]))
        for a in range(2)
        for b in range(2)
    )
    n = 20000
    a_N = rng.choice(2, n, p=pi_1)
    b_N = (rng.random(n) > pi_2[a_N, 0]).astype(int)
    policy_Nx2 = np.log(np.stack([pi_1[a_N], pi_2[a_N, b_N]], -1))
    ref_Nx2 = np.log(np.stack([ref_1[a_N], ref_2[a_N, b_N]], -1))
    kl_N = generation_kl.sequence_kl_N(policy_Nx2, ref_Nx2, np.ones((n, 2)))
    assert kl_N.mean() == pytest.approx(exact, abs=0.02)


def test_method_of_reads_the_run_config():
    assert sparsepo.method_of(LossSection(type="sigmoid")) == "dpo"
    assert sparsepo.method_of(LossSection(type="tdpo")) == "tdpo"
    for weights, method in (("ones", "tdpo"), ("activations", "mapo"), ("learned", "learned")):
        loss = LossSection(type="sparsepo", sections={"sparsepo": SparsePOSection(weights=weights, kl=True)})
        assert sparsepo.method_of(loss) == method
        no_kl = LossSection(
            type="sparsepo", sections={"sparsepo": SparsePOSection(weights=weights, kl=False)}
        )
        if method == "tdpo":
            with pytest.raises(ValueError, match="is DPO"):
                sparsepo.method_of(no_kl)
        else:
            assert sparsepo.method_of(no_kl) == method + "_nokl"
            assert sparsepo.mask_kind(method + "_nokl") == method
    with pytest.raises(ValueError, match="given"):
        sparsepo.method_of(
            LossSection(type="sparsepo", sections={"sparsepo": SparsePOSection(weights="given")})
        )
    with pytest.raises(ValueError, match="ipo"):
        sparsepo.method_of(LossSection(type="ipo"))


def test_registered():
    assert fidelity.REPRODUCTIONS["sparsepo"] is sparsepo
    args = eval_cmd.fidelity_parser().parse_args(["sparsepo", "a", "b", "--out", "o"])
    assert (args.run_dirs, args.num_samples) == (["a", "b"], 32)


def test_report_and_plot(tmp_path):
    mask = {
        "sparsity": 0.4,
        "mean": 0.5,
        "mean_sentiment": 1.2,
        "mean_other": 0.3,
        "sentiment_over_other": 4.0,
    }
    points = [
        {"method": "dpo", "beta": 0.1, "reward": 0.5, "kl": 3.0, "accuracy": 1.0, "accuracy_plain": 1.0},
        dict(
            method="learned",
            beta=0.1,
            reward=0.6,
            kl=2.0,
            accuracy=1.0,
            accuracy_plain=0.9,
            mask=mask,
            dominated_by_dpo=False,
        ),
    ]
    table = {"points": points, "reference": {"reward": 0.0}, "num_prompts": 8, "num_samples": 4}
    lines = sparsepo.report(table)
    assert lines[2].split()[:5] == ["DPO", "0.1", "0.500", "3.00", "1.000"]
    assert lines[3].split()[-5:] == ["0.400", "1.200", "0.300", "4.00", "no"]
    sparsepo.plot(table, str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").stat().st_size > 0


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_mask_lr_scale_scales_only_the_mask_head(scale):
    import jax.numpy as jnp
    import optax

    from alignjax.train.methods import sparsepo as method

    loss = LossSection(
        type="sparsepo", sections={"sparsepo": SparsePOSection(weights="learned", mask_lr_scale=scale)}
    )
    objective = method.build(None, loss, {})
    lr = 1e-3
    tx = objective.wrap_optimizer(optax.adam(lambda count: lr), lambda count: lr)
    params = {"decoder": {"w": jnp.ones(3)}, "mask_head": {"b": jnp.ones(2)}}
    grads = {"decoder": {"w": jnp.full(3, 0.5)}, "mask_head": {"b": jnp.full(2, 0.5)}}
    updates, _ = tx.update(grads, tx.init(params), params)
    # Adam's first step moves each parameter by its learning rate; AdamW's decay adds lr * wd * p
    np.testing.assert_allclose(updates["decoder"]["w"], -lr, rtol=1e-4)
    np.testing.assert_allclose(updates["mask_head"]["b"], -scale * lr * (1 + 0.01), rtol=1e-4)
