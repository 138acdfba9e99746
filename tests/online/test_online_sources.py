"""MO-ODPO's online pairs and online CUT's judged responses, against independent checks."""

import numpy as np
import pytest

from alignjax.data.byte_tokenizer import make_byte_tokenizer
from alignjax.data.config import DataConfig
from alignjax.data.pipeline import make_pipeline
from alignjax.rewards.judges import build_judge
from alignjax.online.mo_odpo import draw_weights
from alignjax.online.online_cut import OnlineCutSource, OnlineSampling
from alignjax.rewards.functions import build_reward
from mo_odpo_source import (
    REWARDS,
    make_source,
    pair_texts,
    prompt_data_cfg,
    prompt_text,
    tiny_model,
    write_prompts,
)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture()
def prompts_file(tmp_path):
    return write_prompts(tmp_path / "prompts.jsonl", ["cats", "dogs", "rain", "tea", "maps", "ink"])


def _short_weight(batch, tok, i):
    """The weight of the first objective, read back from pair i's rendered prompt."""
    return float(prompt_text(batch, tok, i).split("Weights: short ")[1].split("%")[0]) / 100


def mentions_prompt(prompts, responses, word):
    return [None if word in r else f"Mention {word}." for r in responses]


@pytest.mark.parametrize("grid", [None, 4])
def test_draw_weights_lie_on_the_simplex(grid):
    w = draw_weights(np.random.default_rng(0), 2000, 3, alpha=1.0, grid=grid)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-12)
    assert (w >= 0).all()
    if grid:
        np.testing.assert_allclose(w * grid, np.round(w * grid), atol=1e-12)
    # Dirichlet(1, 1, 1) has mean 1/3 per objective; snapping keeps it close.
    np.testing.assert_allclose(w.mean(0), 1 / 3, atol=0.03)


def test_pairs_prefer_the_higher_weighted_score_and_replay_exactly(model, prompts_file):
    cfg, params = model
    source, tok = make_source(model, prompts_file)
    batch = source.next_for(params, step=7)
    assert batch.pair_valid_P.sum() == source.last_metrics["online/pairs"] > 0
    rewards = [build_reward(r) for r in REWARDS]
    p = batch.num_pairs
    for i in range(p):
        if not batch.pair_valid_P[i]:
            continue
        texts = pair_texts(batch, tok, i)
        w_short = _short_weight(batch, tok, i)
        w = np.array([w_short, 1 - w_short])
        scores = np.array([[float(r(["x"], [t])[0]) for r in rewards] for t in texts])
        chosen_score, rejected_score = scores @ w
        assert chosen_score > rejected_score, (texts, w)
    # The same step of a fresh source (a resumed run) yields the same batch.
    again, _ = make_source(model, prompts_file)
    replay = again.next_for(params, step=7)
    np.testing.assert_array_equal(replay.tokens_BxL, batch.tokens_BxL)


def test_threshold_judge_and_python_judge():
    judge = build_judge(
        {
            "name": "threshold",
            "reward": {"name": "length", "unit": "words"},
            "threshold": 2,
            "below": False,
            "critique": "{score:.0f} words is too many",
        }
    )
    assert judge(["q", "q"], ["one two", "one two three"]) == [None, "3 words is too many"]
    py = build_judge({"name": "python", "function": f"{__name__}:mentions_prompt", "word": "tea"})
    assert py(["tea?", "tea?"], ["I like tea", "no"]) == [None, "Mention tea."]
    with pytest.raises(ValueError, match="unknown judge 'llm'"):
        build_judge({"name": "llm"})


def test_online_cut_marks_judged_responses_unsatisfactory(model, prompts_file):
    cfg, params = model
    tok = make_byte_tokenizer()
    dcfg = prompt_data_cfg(prompts_file)
    judge = {
        "name": "threshold",
        "reward": {"name": "length", "unit": "chars"},
        "threshold": 6,
        "below": False,
        "critique": "Too long.",
    }
    source = OnlineCutSource(
        make_pipeline(dcfg, tok),
        DataConfig(**{**dcfg.__dict__, "record_type": "cut"}),
        tok,
        cfg,
        judge,
        OnlineSampling(max_new_tokens=12),
        seed=0,
        per_host_batch=4,
        pad_id=tok.pad_token_id,
    )
    batch = source.next_for(params, step=0)
    e = batch.is_satisfactory_E.shape[0]
    for i in range(e):
        if not batch.example_valid_E[i]:
            continue
        ids = batch.tokens_BxL[i][batch.loss_mask_BxL[i] == 1]
        text = tok.decode([t for t in ids if t != tok.eos_token_id], skip_special_tokens=True)
        assert bool(batch.is_satisfactory_E[i]) == (len(text) <= 6), text
        row_text = tok.decode(batch.tokens_BxL[i].tolist(), skip_special_tokens=False)
        assert ("Too long." in row_text) == (not batch.is_satisfactory_E[i])


def test_per_objective_winners_pair_each_objective_with_its_weight(model, prompts_file):
    _, params = model
    source, tok = make_source(model, prompts_file, per_objective_winners=True)
    batch = source.next_for(params, step=3)
    rewards = [build_reward(r) for r in REWARDS]
    assert batch.pair_weight_P is not None and batch.pair_valid_P.sum() > 0
    np.testing.assert_array_equal(batch.pair_weight_P[batch.pair_valid_P == 0], 0.0)
    for i in np.flatnonzero(batch.pair_valid_P):
        texts = pair_texts(batch, tok, i)
        w_short = _short_weight(batch, tok, i)
        w = np.array([w_short, 1 - w_short])
        scores = np.array([[float(r(["x"], [t])[0]) for r in rewards] for t in texts])
        # The pair is the best vs the worst on one objective k, and carries w_k.
        ks = [k for k in range(2) if np.isclose(w[k], batch.pair_weight_P[i])]
        assert ks and any(scores[0, k] > scores[1, k] for k in ks), (texts, w, batch.pair_weight_P[i])


def test_dpo_pair_weights_give_the_weighted_mean():
    from alignjax.losses.dpo_combined import DPOConfig, dpo_loss
    from alignjax.losses.dpo_pair_losses import PairLogps

    rng = np.random.default_rng(0)
    c, r, rc, rr = (rng.normal(size=6) * 5 for _ in range(4))
    lens = np.full(6, 4.0)
    weights = np.array([0.25, 0.75, 1.0, 0.0, 0.5, 0.5])
    loss, _, _ = dpo_loss(PairLogps(c, r, lens, lens, rc, rr), DPOConfig(beta=0.1), {}, valid_B=weights)
    z = 0.1 * ((c - rc) - (r - rr))
    per_pair = np.log1p(np.exp(-z))  # -log sigmoid(z), float64
    np.testing.assert_allclose(float(loss), np.sum(weights * per_pair) / np.sum(weights), rtol=1e-5)
