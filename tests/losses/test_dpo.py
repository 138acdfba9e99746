"""The DPO family registry against float64 NumPy written from docs/methods.md / TRL."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from alignjax.losses.dpo_combined import LOSSES, DPOConfig, dpo_loss, init_dpo_state
from alignjax.losses.dpo_pair_losses import PairLogps, RunningMean
from alignjax.losses.sequence import sequence_logps

BETA, EPS, TAU = 0.3, 0.1, 0.05


def logsig(x):
    return -np.logaddexp(0.0, -x)


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def smoothed(z, e):
    return -(1 - e) * logsig(z) - e * logsig(-z)


def np_reference(name, lw, ll, rw, rl, nw, nl, cfg, bco_mean=0.0):
    """Per-pair losses from the formulas, in float64."""
    b, e = cfg.beta, cfg.label_smoothing
    r_w, r_l = lw - rw, ll - rl
    d = r_w - r_l
    nll = -lw.sum() / nw.sum()
    avg_w, avg_l = lw / nw, ll / nl
    table = {
        "sigmoid": lambda: -(1 - e) * logsig(b * d) - e * logsig(-b * d),
        "hinge": lambda: np.maximum(0.0, 1 - b * d),
        "ipo": lambda: (r_w / nw - r_l / nl - 1 / (2 * b)) ** 2,
        "robust": lambda: (-(1 - e) * logsig(b * d) + e * logsig(-b * d)) / (1 - 2 * e),
        "exo_pair": lambda: (
            sig(b * d) * (logsig(b * d) - np.log(1 - e)) + sig(-b * d) * (logsig(-b * d) - np.log(e))
        ),
        "nca_pair": lambda: -logsig(b * r_w) - 0.5 * logsig(-b * r_w) - 0.5 * logsig(-b * r_l),
        "bco_pair": lambda: -logsig(b * r_w - bco_mean) - logsig(-(b * r_l - bco_mean)),
        "sppo_hard": lambda: (r_w - 1 / (2 * b)) ** 2 + (r_l + 1 / (2 * b)) ** 2,
        "aot": lambda: smoothed(b * (np.sort(lw - ll) - np.sort(rw - rl)), e),
        "aot_pair": lambda: smoothed(b * (np.sort(r_w) - np.sort(r_l)), e),
        "aot_unpaired": lambda: smoothed(b * (np.sort(r_w) - np.sort(r_l)), e),
        "apo_zero": lambda: 1 - sig(b * r_w) + sig(b * r_l),
        "apo_down": lambda: sig(b * r_w) + 1 - sig(b * d),
        "discopop": lambda: (
            (1 - sig(b * d / cfg.discopop_tau)) * -logsig(b * d)
            + sig(b * d / cfg.discopop_tau) * np.exp(-b * d)
        ),
        "sigmoid_norm": lambda: -logsig(b * (r_w / nw - r_l / nl)),
        "sft": lambda: np.full_like(lw, nll),
        "simpo": lambda: smoothed(cfg.simpo_beta * (avg_w - avg_l) - cfg.simpo_gamma, e),
        "cpo": lambda: smoothed(b * (lw - ll), e),
        "orpo": lambda: (
            nll
            - cfg.orpo_lambda
            * logsig((avg_w - avg_l) - (np.log(1 - np.exp(avg_w)) - np.log(1 - np.exp(avg_l))))
        ),
    }
    return table[name]()


def np_rewards(name, lw, ll, rw, rl, nw, nl, cfg):
    if name == "simpo":
        return cfg.simpo_beta * lw / nw, cfg.simpo_beta * ll / nl
    if name == "orpo":
        return cfg.orpo_lambda * lw / nw, cfg.orpo_lambda * ll / nl
    if name == "cpo":
        return cfg.beta * lw, cfg.beta * ll
    return cfg.beta * (lw - rw), cfg.beta * (ll - rl)


def random_token_batch(seed, b=6, length=9):
    """Per-token logps with padding, reduced with sequence_logps (as the trainer does)."""
    rng = np.random.default_rng(seed)
    out = {}
    for side in ("chosen", "rejected"):
        lens = rng.integers(1, length + 1, size=b)
        mask = (np.arange(length)[None, :] < lens[:, None]).astype(np.float32)
        # Per-token logps in (-3, 0); reference close to the policy.
        pol = -rng.uniform(0.05, 3.0, size=(b, length))
        ref = pol + rng.normal(scale=0.4, size=(b, length))
        ref = np.minimum(ref, -1e-3)
        pol[mask == 0] = np.nan if side == "chosen" else -50.0  # padding must not leak
        out[side] = (pol, ref, mask)
    return out


def pairs_from_tokens(tokens, dtype=jnp.float32):
    sums = {}
    for side, (pol, ref, mask) in tokens.items():
        s, n = sequence_logps(jnp.asarray(pol, dtype), jnp.asarray(mask))
        r, _ = sequence_logps(jnp.asarray(ref, dtype), jnp.asarray(mask))
        sums[side] = (s, n, r)
    return PairLogps(
        sums["chosen"][0],
        sums["rejected"][0],
        sums["chosen"][1],
        sums["rejected"][1],
        sums["chosen"][2],
        sums["rejected"][2],
    )


def np_sums(tokens):
    out = []
    for side in ("chosen", "rejected"):
        pol, ref, mask = tokens[side]
        keep = mask > 0
        out.append(
            (np.where(keep, pol, 0.0).sum(1), np.where(keep, ref, 0.0).sum(1), keep.sum(1).astype(np.float64))
        )
    (lw, rw, nw), (ll, rl, nl) = out
    return lw, ll, rw, rl, nw, nl


def config_for(name):
    return DPOConfig(
        loss_type=(name,),
        beta=BETA,
        label_smoothing=EPS if name not in ("sigmoid_norm",) else 0.0,
        discopop_tau=TAU,
    )


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_loss_and_metrics_match_numpy(name):
    tokens = random_token_batch(seed=sorted(LOSSES).index(name))
    cfg = config_for(name)
    pairs = pairs_from_tokens(tokens)
    state = init_dpo_state(cfg)
    loss, metrics, new_state = jax.jit(lambda p, s: dpo_loss(p, cfg, s))(pairs, state)

    lw, ll, rw, rl, nw, nl = np_sums(tokens)
    bco_mean = cfg.beta * np.concatenate([lw - rw, ll - rl]).mean()  # first step: mean = batch
    want = np_reference(name, lw, ll, rw, rl, nw, nl, cfg, bco_mean).mean()
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics[f"loss/{name}"], want, rtol=1e-5, atol=1e-6)

    cr, rr = np_rewards(name, lw, ll, rw, rl, nw, nl, cfg)
    if name == "sft":  # no reward of its own: falls back to the reference log-ratio
        cr, rr = cfg.beta * (lw - rw), cfg.beta * (ll - rl)
    np.testing.assert_allclose(metrics["rewards/chosen"], cr.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["rewards/rejected"], rr.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["rewards/margins"], (cr - rr).mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["rewards/accuracies"], (cr > rr).mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["logps/chosen"], lw.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["logps/rejected"], ll.mean(), rtol=1e-5)
    if name == "bco_pair":
        np.testing.assert_allclose(new_state["bco_pair"].mean, bco_mean, rtol=1e-5)
        np.testing.assert_allclose(metrics["bco/delta"], bco_mean, rtol=1e-5)
    if name == "orpo":
        avg_w, avg_l = lw / nw, ll / nl
        log_odds = (avg_w - avg_l) - (np.log1p(-np.exp(avg_w)) - np.log1p(-np.exp(avg_l)))
        np.testing.assert_allclose(metrics["log_odds_chosen"], log_odds.mean(), rtol=1e-5)
        np.testing.assert_allclose(metrics["log_odds_ratio"], logsig(log_odds).mean(), rtol=1e-5)
        np.testing.assert_allclose(metrics["nll_loss"], -lw.sum() / nw.sum(), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_loss_gradient_in_float64(name):
    cfg = config_for(name)
    tokens = random_token_batch(seed=7, b=4, length=5)
    with jax.enable_x64(True):
        base = pairs_from_tokens(tokens, jnp.float64)
        state = init_dpo_state(cfg)

        def f(chosen, rejected):
            pairs = base._replace(chosen_logps_B=chosen, rejected_logps_B=rejected)
            if name == "bco_pair":
                # delta is a detached running statistic: hold it fixed, as the gradient does.
                return jnp.mean(LOSSES[name].fn(pairs, cfg, RunningMean(jnp.float64(0.3), 1.0)))
            return dpo_loss(pairs, cfg, state)[0]

        # Sorting (aot) is piecewise smooth; the random batch has no ties.
        check_grads(
            jax.jit(f),
            (base.chosen_logps_B, base.rejected_logps_B),
            order=1,
            modes=["rev"],
            eps=1e-6,
            atol=1e-6,
            rtol=1e-6,
        )


def test_sigmoid_is_ln2_when_policy_equals_reference():
    x = jnp.array([-12.5, -3.0, -40.0], jnp.float32)
    pairs = PairLogps(x, x - 2.0, jnp.ones(3), jnp.ones(3), x, x - 2.0)
    loss, metrics, _ = dpo_loss(pairs, DPOConfig())
    assert float(loss) == pytest.approx(math.log(2.0), abs=1e-7)
    assert float(metrics["rewards/margins"]) == 0.0
    assert float(metrics["rewards/accuracies"]) == 0.0


def test_weighted_sum_of_losses_is_rpo():
    tokens = random_token_batch(seed=11)
    cfg = DPOConfig(loss_type=["sigmoid", "sft", "ipo"], loss_weights=[1.0, 0.5, 0.25], beta=BETA)
    loss, metrics, _ = dpo_loss(pairs_from_tokens(tokens), cfg)
    lw, ll, rw, rl, nw, nl = np_sums(tokens)
    want = sum(
        w * np_reference(n, lw, ll, rw, rl, nw, nl, cfg).mean()
        for n, w in [("sigmoid", 1.0), ("sft", 0.5), ("ipo", 0.25)]
    )
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["nll_loss"], -lw.sum() / nw.sum(), rtol=1e-5)


@pytest.mark.parametrize("terms", [("sigmoid", "sft"), ("orpo",)])
def test_nll_terms_weigh_pairs_and_ignore_unused_slots_that_hold_tokens(terms):
    """Pair weights reach the token-pooled NLL (the `sft` term, ORPO's NLL, `nll_loss`):
    sum_i w_i * NLL tokens_i / sum_i w_i * len_i, in float64, with a zero-weight slot whose
    tokens are real (not emptied) and weights other than 0 and 1."""
    tokens = random_token_batch(seed=12)
    weights = np.array([1.0, 0.0, 2.0, 0.5, 0.0, 1.5])
    cfg = DPOConfig(loss_type=terms, loss_weights=[1.0] * len(terms), beta=BETA)
    loss, metrics, _ = dpo_loss(pairs_from_tokens(tokens), cfg, valid_B=jnp.asarray(weights, jnp.float32))
    lw, ll, rw, rl, nw, nl = np_sums(tokens)
    nll = -(weights * lw).sum() / (weights * nw).sum()
    used = weights > 0

    def weighted_mean(x):
        return (weights[used] * x[used]).sum() / weights.sum()

    r_w, r_l = lw - rw, ll - rl
    if terms == ("orpo",):
        avg_w, avg_l = lw / nw, ll / nl
        log_odds = (avg_w - avg_l) - (np.log(1 - np.exp(avg_w)) - np.log(1 - np.exp(avg_l)))
        want = nll - cfg.orpo_lambda * weighted_mean(logsig(log_odds))
    else:
        want = weighted_mean(-logsig(BETA * (r_w - r_l))) + nll
    np.testing.assert_allclose(metrics["nll_loss"], nll, rtol=1e-5)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    # The unweighted NLL differs: the check can tell weights apart from no weights.
    assert abs(-lw.sum() / nw.sum() - nll) > 1e-2


def test_bco_running_mean_is_carried_across_steps():
    cfg = DPOConfig(loss_type="bco_pair", beta=BETA)
    state = init_dpo_state(cfg)
    batch_means, step = [], jax.jit(lambda p, s: dpo_loss(p, cfg, s))
    for seed in (1, 2, 3):
        tokens = random_token_batch(seed)
        lw, ll, rw, rl, nw, nl = np_sums(tokens)
        batch_means.append(cfg.beta * np.concatenate([lw - rw, ll - rl]).mean())
        loss, _, state = step(pairs_from_tokens(tokens), state)
    running = np.mean(batch_means)
    np.testing.assert_allclose(state["bco_pair"].mean, running, rtol=1e-5)
    want = np_reference("bco_pair", lw, ll, rw, rl, nw, nl, cfg, bco_mean=running).mean()
    np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_discopop_is_finite_for_very_negative_margins():
    x = jnp.array([-10.0, -10.0], jnp.float32)
    pairs = PairLogps(x - 900.0, x, jnp.ones(2), jnp.ones(2), x, x)
    loss, _, _ = dpo_loss(pairs, DPOConfig(loss_type="discopop", beta=1.0))
    # exp(-z) is weighted by sig(z / tau) ~ exp(z / tau): the product vanishes.
    np.testing.assert_allclose(loss, 900.0, rtol=1e-6)


def test_config_and_input_errors_are_actionable():
    with pytest.raises(ValueError, match="choose from"):
        DPOConfig(loss_type="kto")
    with pytest.raises(ValueError, match="one weight per loss"):
        DPOConfig(loss_type=("sigmoid", "sft"), loss_weights=(1.0,))
    with pytest.raises(ValueError, match="label_smoothing > 0"):
        DPOConfig(loss_type="exo_pair")
    x = jnp.zeros(2)
    with pytest.raises(ValueError, match="reference log-probs"):
        dpo_loss(PairLogps(x, x, x + 1, x + 1), DPOConfig())
    with pytest.raises(ValueError, match="init_dpo_state"):
        dpo_loss(PairLogps(x, x, x + 1, x + 1, x, x), DPOConfig(loss_type="bco_pair"))


def test_reference_free_losses_need_no_reference():
    tokens = random_token_batch(seed=5)
    pairs = pairs_from_tokens(tokens)._replace(ref_chosen_logps_B=None, ref_rejected_logps_B=None)
    cfg = DPOConfig(loss_type=("simpo", "sft"))
    loss, _, _ = dpo_loss(pairs, cfg)
    lw, ll, rw, rl, nw, nl = np_sums(tokens)
    want = (
        np_reference("simpo", lw, ll, rw, rl, nw, nl, cfg).mean()
        + np_reference("sft", lw, ll, rw, rl, nw, nl, cfg).mean()
    )
    np.testing.assert_allclose(loss, want, rtol=1e-5)
