"""TRL's DPOConfig options against float64 NumPy written from TRL's formulas: f-DPO scores,
LD-DPO's length-desensitised sums, WPO's pair weights, reference-free DPO. Batches carry
padding (NaN where nothing may be read) and unused pair slots."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from alignjax.losses.dpo_combined import DPOConfig, dpo_loss, implicit_rewards
from alignjax.losses.dpo_pair_losses import PairLogps
from alignjax.losses.f_divergence import F_DIVERGENCE_LOSSES, f_divergence_scores
from alignjax.losses.length_desensitised import length_desensitised_sums
from alignjax.losses.logps import token_log_sum_sq_probs

BETA, EPS, TAU = 0.3, 0.1, 0.05
# Pair slots 2 and 5 are unused: no tokens in slot 2, real-looking tokens in slot 5.
VALID = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 0.0])


def logsig(x):
    return -np.logaddexp(0.0, -x)


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_scores(r, kind, alpha):
    if kind == "reverse_kl" or (kind == "alpha_divergence" and alpha == 1.0):
        return r
    if kind == "forward_kl":
        return 1.0 - np.exp(-r)
    if kind == "js_divergence":
        return np.log(2.0 * np.exp(r) / (1.0 + np.exp(r)))
    return (np.exp(np.minimum((alpha - 1.0) * r, 80.0)) - 1.0) / (alpha - 1.0)


def np_pair_loss(name, sw, sl, nw, nl, nll, e):
    """TRL's per-pair losses of the chosen/rejected scores sw, sl (log-ratios for reverse KL)."""
    b, d = BETA, sw - sl
    table = {
        "sigmoid": lambda: -(1 - e) * logsig(b * d) - e * logsig(-b * d),
        "hinge": lambda: np.maximum(0.0, 1 - b * d),
        "ipo": lambda: (sw / nw - sl / nl - 1 / (2 * b)) ** 2,
        "robust": lambda: (-(1 - e) * logsig(b * d) + e * logsig(-b * d)) / (1 - 2 * e),
        "exo_pair": lambda: (
            sig(b * d) * (logsig(b * d) - np.log(1 - e)) + sig(-b * d) * (logsig(-b * d) - np.log(e))
        ),
        "discopop": lambda: (1 - sig(b * d / TAU)) * -logsig(b * d) + np.exp(-b * d + logsig(b * d / TAU)),
        "sigmoid_norm": lambda: -logsig(b * (sw / nw - sl / nl)),
        "sft": lambda: np.full_like(sw, nll),
    }
    return table[name]()


def random_sums(seed, b=6):
    """Per-pair sums reduced in float64 from per-token values with padding, as `pair_sums` gives them."""
    rng = np.random.default_rng(seed)
    out = {}
    for side in ("chosen", "rejected"):
        lens = rng.integers(1, 10, size=b)
        lens[2] = 0  # the empty unused slot
        keep = np.arange(9)[None, :] < lens[:, None]
        pol = -rng.uniform(0.05, 3.0, size=(b, 9))
        ref = np.minimum(pol + rng.normal(scale=0.5, size=(b, 9)), -1e-3)
        aligned = rng.normal(scale=0.3, size=(b, 9)) - 0.2
        out[side] = [np.where(keep, x, 0.0).sum(1) for x in (pol, ref, aligned)] + [lens.astype(np.float64)]
    return out


def pairs_of(sums, dtype=jnp.float32, reference=True, aligned=False):
    (lw, rw, aw, nw), (ll, rl, al, nl) = sums["chosen"], sums["rejected"]
    f = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    return PairLogps(
        f(lw),
        f(ll),
        f(nw),
        f(nl),
        f(rw) if reference else None,
        f(rl) if reference else None,
        chosen_aligned_logps_B=f(aw) if aligned else None,
        rejected_aligned_logps_B=f(al) if aligned else None,
    )


def np_nll(lw, nw, weight):
    return -(weight * lw).sum() / (weight * nw).sum()


def np_valid_mean(x):
    return (VALID * np.where(VALID > 0, x, 0.0)).sum() / VALID.sum()


# --- f-divergence -----------------------------------------------------------------------

FDIV_CASES = [
    ("forward_kl", 0.5),
    ("js_divergence", 0.5),
    ("alpha_divergence", 0.5),
    ("alpha_divergence", 1.0),  # the limit: reverse KL
    ("alpha_divergence", 40.0),  # (alpha - 1) * r beyond 80 on some pairs: the clamp
]


@pytest.mark.parametrize("kind,alpha", FDIV_CASES)
@pytest.mark.parametrize("name", F_DIVERGENCE_LOSSES)
def test_f_divergence_losses_match_numpy(name, kind, alpha):
    sums = random_sums(seed=F_DIVERGENCE_LOSSES.index(name))
    (lw, rw, _, nw), (ll, rl, _, nl) = sums["chosen"], sums["rejected"]
    e = 0.0 if name in ("hinge", "ipo", "sigmoid_norm", "discopop", "sft") else EPS
    cfg = DPOConfig(
        loss_type=(name,),
        beta=BETA,
        label_smoothing=e,
        discopop_tau=TAU,
        f_divergence_type=kind,
        f_alpha_divergence_coef=alpha,
    )
    # Scores near exp(80) square past float32's range in ipo: the clamp case runs in float64.
    clamped = alpha == 40.0
    dtype = jnp.float64 if clamped else jnp.float32
    with jax.enable_x64(clamped):
        loss, metrics, _ = jax.jit(lambda p: dpo_loss(p, cfg, valid_B=jnp.asarray(VALID, dtype)))(
            pairs_of(sums, dtype)
        )
    sw, sl = np_scores(lw - rw, kind, alpha), np_scores(ll - rl, kind, alpha)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # the empty slot; exp(-z) of z << 0
        want = np_valid_mean(np_pair_loss(name, sw, sl, nw, nl, np_nll(lw, nw, VALID), e))
    np.testing.assert_allclose(loss, want, rtol=1e-9 if clamped else 2e-5, atol=1e-6)
    # Rewards stay beta * log-ratio whatever the divergence (TRL's metrics).
    np.testing.assert_allclose(metrics["rewards/chosen"], np_valid_mean(BETA * (lw - rw)), rtol=1e-5)
    if name != "sft" and not (kind == "alpha_divergence" and alpha == 1.0):
        plain = DPOConfig(loss_type=(name,), beta=BETA, label_smoothing=e, discopop_tau=TAU)
        assert abs(float(dpo_loss(pairs_of(sums), plain, valid_B=jnp.asarray(VALID))[0]) - want) > 1e-4


def test_alpha_divergence_clamp_was_reached():
    sums = random_sums(seed=F_DIVERGENCE_LOSSES.index("sigmoid"))
    r = np.concatenate([sums["chosen"][0] - sums["chosen"][1], sums["rejected"][0] - sums["rejected"][1]])
    assert np.any(39.0 * r > 80.0) and np.any(39.0 * r < 80.0)


def test_f_divergence_scores_at_extremes_are_finite_and_exact():
    r = jnp.array([-30.0, -1e-4, 0.0, 1e-4, 30.0, 200.0], jnp.float32)
    for kind, alpha in FDIV_CASES:
        got = np.asarray(f_divergence_scores(r, kind, alpha), np.float64)
        want = np_scores(np.asarray(r, np.float64), kind, alpha)
        assert np.all(np.isfinite(got)), kind
        # atol: js near r = 0 is log 2 - log 2 + r/2 in float32, as TRL computes it.
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=f"{kind} {alpha}")
    np.testing.assert_allclose(f_divergence_scores(r, "reverse_kl"), r)


@pytest.mark.parametrize("kind,alpha", FDIV_CASES[:3])
def test_f_divergence_gradient_in_float64(kind, alpha):
    cfg = DPOConfig(
        loss_type=("sigmoid", "ipo"), beta=BETA, f_divergence_type=kind, f_alpha_divergence_coef=alpha
    )
    with jax.enable_x64(True):
        base = pairs_of(random_sums(seed=3), jnp.float64)
        f = lambda c, r: dpo_loss(base._replace(chosen_logps_B=c, rejected_logps_B=r), cfg)[0]  # noqa: E731
        check_grads(f, (base.chosen_logps_B, base.rejected_logps_B), order=1, modes=["rev"], eps=1e-6)


# --- LD-DPO ---------------------------------------------------------------------------


def ld_pairs(seed, num_pairs=5):
    """Prompts and responses as lists of per-token log-probs; pair slot 2 is unused (empty)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num_pairs):
        if i == 2:
            out.append(None)
            continue
        prompt = int(rng.integers(1, 4))
        chosen, rejected = (list(-rng.uniform(0.1, 3.0, size=int(rng.integers(1, 8)))) for _ in range(2))
        out.append((prompt, chosen, rejected))
    return out


def padded_layout(pairs, length=12):
    """Rows [0, P) chosen, [P, 2P) rejected; NaN on every position the mask excludes."""
    p = len(pairs)
    values = np.full((2 * p, length), np.nan)
    mask, segment, pair, chosen = (np.zeros((2 * p, length), np.int32) for _ in range(4))
    for i, item in enumerate(pairs):
        chosen[i], pair[i], pair[p + i] = 1, i, i
        if item is None:
            continue
        prompt, responses = item[0], item[1:]
        for row, response in ((i, responses[0]), (p + i, responses[1])):
            n = prompt + len(response)
            segment[row, :n] = 1
            mask[row, prompt:n] = 1
            values[row, prompt:n] = response
    return values, mask, segment, pair, chosen


def packed_layout(pairs, length=32):
    """Whole pairs packed into rows, chosen then rejected as consecutive segments."""
    rows = []
    for i, item in enumerate(pairs):
        if item is None:
            continue
        prompt, c, r = item
        need = 2 * prompt + len(c) + len(r)
        if not rows or rows[-1][0] + need > length:
            rows.append([0, []])
        rows[-1][1].append((i, prompt, c, r))
        rows[-1][0] += need
    shape = (len(rows), length)
    values = np.full(shape, np.nan)
    mask, segment, pair, chosen = (np.zeros(shape, np.int32) for _ in range(4))
    for b, (_, items) in enumerate(rows):
        col, seg = 0, 0
        for i, prompt, c, r in items:
            for is_chosen, response in ((1, c), (0, r)):
                seg += 1
                n = prompt + len(response)
                segment[b, col : col + n] = seg
                pair[b, col : col + n] = i
                chosen[b, col : col + n] = is_chosen
                mask[b, col + prompt : col + n] = 1
                values[b, col + prompt : col + n] = response
                col += n
    assert len(rows) > 1 and any(len(items) > 1 for _, items in rows)  # packing happened
    return values, mask, segment, pair, chosen


def np_ld_sums(pairs, alpha):
    out = np.zeros((2, len(pairs)))
    for i, item in enumerate(pairs):
        if item is None:
            continue
        _, c, r = item
        shared = min(len(c), len(r))
        for side, response in enumerate((c, r)):
            out[side, i] = sum(response[:shared]) + alpha * sum(response[shared:])
    return out


@pytest.mark.parametrize("layout", [padded_layout, packed_layout])
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_length_desensitised_sums_match_numpy(layout, alpha):
    pairs = ld_pairs(seed=int(alpha * 10))
    assert any(item and len(item[1]) != len(item[2]) for item in pairs)  # tails exist
    values, mask, segment, pair, chosen = layout(pairs)
    fn = jax.jit(lambda v: length_desensitised_sums(v, mask, segment, pair, chosen, len(pairs), alpha))
    got_c, got_r = fn(jnp.asarray(values, jnp.float32))
    want = np_ld_sums(pairs, alpha)
    np.testing.assert_allclose(got_c, want[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_r, want[1], rtol=1e-6, atol=1e-6)
    if alpha < 1.0:  # the weighting is visible: plain sums differ
        assert np.max(np.abs(np_ld_sums(pairs, 1.0) - want)) > 0.1

    # d sum / d token: 1 on the shared part, alpha on the tails, 0 off the responses (no NaN).
    grad = jax.grad(lambda v: sum(jnp.sum(x) for x in fn(v)))(jnp.asarray(np.nan_to_num(values), jnp.float32))
    weights = np.zeros_like(values)
    for b in range(values.shape[0]):
        seen = {}
        for t in np.flatnonzero(mask[b]):
            key = (pair[b, t], chosen[b, t])
            seen[key] = seen.get(key, 0) + 1
            _, c, r = pairs[pair[b, t]]
            weights[b, t] = 1.0 if seen[key] <= min(len(c), len(r)) else alpha
    np.testing.assert_allclose(grad, weights, atol=0)


def test_ld_sft_term_reads_the_plain_chosen_log_probs():
    """TRL's `sft` term takes the per-token log-probs as they are, whatever ld_alpha does."""
    pairs = ld_pairs(seed=4)
    values, mask, segment, pair, chosen = padded_layout(pairs)
    ld_c, ld_r = length_desensitised_sums(jnp.asarray(values), mask, segment, pair, chosen, len(pairs), 0.3)
    plain = np_ld_sums(pairs, 1.0)
    lens = np.array([[len(x[k]) if x else 0 for x in pairs] for k in (1, 2)], np.float64)
    ref = plain - 0.7  # a reference close to the policy
    p = PairLogps(
        ld_c, ld_r, jnp.asarray(lens[0]), jnp.asarray(lens[1]), jnp.asarray(ref[0]), jnp.asarray(ref[1])
    )
    p = p._replace(chosen_plain_logps_B=jnp.asarray(plain[0], jnp.float32))
    cfg = DPOConfig(loss_type=("sigmoid", "sft"), beta=BETA, ld_alpha=0.3)
    valid = np.array([1.0, 1.0, 0.0, 1.0, 1.0])
    loss, metrics, _ = dpo_loss(p, cfg, valid_B=jnp.asarray(valid))
    ld = np_ld_sums(pairs, 0.3)
    margin = (ld[0] - ref[0]) - (ld[1] - ref[1])
    nll = np_nll(plain[0], lens[0], valid)
    want = (valid * -logsig(BETA * margin)).sum() / valid.sum() + nll
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["nll_loss"], nll, rtol=1e-5)
    np.testing.assert_allclose(metrics["logps/chosen"], (valid * ld[0]).sum() / valid.sum(), rtol=1e-5)
    assert abs(np_nll(ld[0], lens[0], valid) - nll) > 1e-2  # LD sums would give another NLL


# --- WPO ------------------------------------------------------------------------------


def np_log_sum_sq(hidden, unembed, cap):
    z = np.einsum("bld,dv->blv", hidden, unembed)
    z = z if cap is None else cap * np.tanh(z / cap)
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return np.log(np.exp(2 * logp).sum(-1))


@pytest.mark.parametrize("token_chunk,vocab_chunk,cap", [(3, 7, None), (4, 29, 2.5), (64, 64, None)])
def test_log_sum_sq_probs_match_numpy_and_carry_no_gradient(token_chunk, vocab_chunk, cap):
    rng = np.random.default_rng(0)
    hidden, unembed = rng.normal(size=(2, 5, 8)) * 1.5, rng.normal(size=(8, 29)) * 0.7
    fn = lambda h, w: token_log_sum_sq_probs(  # noqa: E731
        h, w, final_logit_softcap=cap, token_chunk=token_chunk, vocab_chunk=vocab_chunk
    )
    got = jax.jit(fn)(jnp.float32(hidden), jnp.float32(unembed))
    want = np_log_sum_sq(hidden, unembed, cap)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.ptp(want) > 0.2  # distributions of different sharpness
    grads = jax.grad(lambda h, w: jnp.sum(fn(h, w)), argnums=(0, 1))(
        jnp.float32(hidden), jnp.float32(unembed)
    )
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in grads)


def np_wpo_weights(sums):
    (_, _, aw, nw), (_, _, al, nl) = sums["chosen"], sums["rejected"]
    return np.exp(aw / np.maximum(nw, 1.0)) * np.exp(al / np.maximum(nl, 1.0))


@pytest.mark.parametrize("names", [("sigmoid",), ("ipo",), ("sigmoid", "sft"), ("hinge", "nca_pair")])
def test_wpo_weights_every_per_pair_loss(names):
    sums = random_sums(seed=len(names))
    (lw, rw, _, nw), (ll, rl, _, nl) = sums["chosen"], sums["rejected"]
    weights = (1.0, 0.5)[: len(names)]
    cfg = DPOConfig(loss_type=names, loss_weights=weights, beta=BETA, use_weighting=True)
    loss, metrics, _ = jax.jit(lambda p: dpo_loss(p, cfg, valid_B=jnp.asarray(VALID, jnp.float32)))(
        pairs_of(sums, aligned=True)
    )
    wpo = np_wpo_weights(sums)
    assert np.ptp(wpo[VALID > 0]) > 0.05  # the pairs weigh differently
    nll = np_nll(lw, nw, VALID)
    want = 0.0
    for name, weight in zip(names, weights):
        if name == "nca_pair":
            per_pair = (
                -logsig(BETA * (lw - rw)) - 0.5 * logsig(-BETA * (lw - rw)) - 0.5 * logsig(-BETA * (ll - rl))
            )
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                per_pair = np_pair_loss(name, lw - rw, ll - rl, nw, nl, nll, 0.0)
        want += weight * np_valid_mean(per_pair * wpo)
        np.testing.assert_allclose(metrics[f"loss/{name}"], np_valid_mean(per_pair * wpo), rtol=1e-5)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    # The metrics are TRL's, unweighted.
    np.testing.assert_allclose(
        metrics["rewards/margins"], np_valid_mean(BETA * ((lw - rw) - (ll - rl))), rtol=1e-5
    )


def test_wpo_weights_are_held_fixed_in_the_gradient():
    """d loss / d aligned sums = 0, and each pair's policy gradient is its weight times the
    unweighted one (the weights are TRL's detached sequence probabilities)."""
    cfg = DPOConfig(beta=BETA, use_weighting=True)
    plain = DPOConfig(beta=BETA)
    with jax.enable_x64(True):
        sums = random_sums(seed=9)
        base = pairs_of(sums, jnp.float64, aligned=True)
        valid = jnp.asarray(VALID)

        def loss(config, c, r, ac, ar):
            p = base._replace(
                chosen_logps_B=c, rejected_logps_B=r, chosen_aligned_logps_B=ac, rejected_aligned_logps_B=ar
            )
            return dpo_loss(p, config, valid_B=valid)[0]

        args = (
            base.chosen_logps_B,
            base.rejected_logps_B,
            base.chosen_aligned_logps_B,
            base.rejected_aligned_logps_B,
        )
        g_c, g_r, g_ac, g_ar = jax.grad(lambda *a: loss(cfg, *a), argnums=(0, 1, 2, 3))(*args)
        p_c, p_r = jax.grad(lambda *a: loss(plain, *a), argnums=(0, 1))(*args)
        wpo = np_wpo_weights(sums)
        np.testing.assert_allclose(g_c, wpo * np.asarray(p_c), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(g_r, wpo * np.asarray(p_r), rtol=1e-12, atol=1e-15)
        assert float(jnp.max(jnp.abs(g_ac))) == 0.0 and float(jnp.max(jnp.abs(g_ar))) == 0.0
        assert float(jnp.max(jnp.abs(p_c))) > 1e-3


# --- reference-free -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sigmoid", "ipo", "aot"])
def test_reference_free_is_a_reference_of_zeros(name):
    sums = random_sums(seed=13)
    (lw, _, _, nw), (ll, _, _, nl) = sums["chosen"], sums["rejected"]
    cfg = DPOConfig(loss_type=(name,), beta=BETA, reference_free=True)
    assert not cfg.needs_reference and DPOConfig(loss_type=(name,)).needs_reference
    pairs = pairs_of(sums, reference=False)
    loss, metrics, _ = jax.jit(lambda p: dpo_loss(p, cfg))(pairs)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_pair = {
            "sigmoid": lambda: -logsig(BETA * (lw - ll)),
            "ipo": lambda: (lw / np.maximum(nw, 1) - ll / np.maximum(nl, 1) - 1 / (2 * BETA)) ** 2,
            "aot": lambda: -logsig(BETA * np.sort(lw - ll)),  # the reference gaps sort to zeros
        }[name]()
    np.testing.assert_allclose(loss, per_pair.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["rewards/chosen"], (BETA * lw).mean(), rtol=1e-5)
    chosen_r, rejected_r = implicit_rewards(pairs, cfg)
    np.testing.assert_allclose(chosen_r - rejected_r, BETA * (lw - ll), rtol=1e-5)
    # With the reference it would be another loss: the zeros are really used.
    with_ref = dpo_loss(pairs_of(sums), DPOConfig(loss_type=(name,), beta=BETA))[0]
    assert abs(float(with_ref) - float(loss)) > 1e-3


# --- options that do not apply ------------------------------------------------------------


def test_option_errors_name_the_option():
    with pytest.raises(ValueError, match=r"DPOConfig.f_divergence_type='kl': use one of reverse_kl"):
        DPOConfig(f_divergence_type="kl")
    with pytest.raises(ValueError, match=r"does not apply to loss types \['nca_pair'\]"):
        DPOConfig(loss_type=("sigmoid", "nca_pair"), f_divergence_type="forward_kl")
    with pytest.raises(ValueError, match=r"does not apply to loss types \['simpo'\]"):
        DPOConfig(loss_type="simpo", f_divergence_type="js_divergence")
    with pytest.raises(ValueError, match="f_alpha_divergence_coef=nan must be finite"):
        DPOConfig(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=math.nan)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"DPOConfig.ld_alpha={bad} must be in \[0, 1\]"):
            DPOConfig(ld_alpha=bad)
    with pytest.raises(ValueError, match=r"DPOConfig.use_weighting: loss types \['aot_pair'\] sort"):
        DPOConfig(loss_type="aot_pair", use_weighting=True)
    x = jnp.zeros(2)
    with pytest.raises(ValueError, match="chosen_aligned_logps_B"):
        dpo_loss(PairLogps(x, x, x + 1, x + 1, x, x), DPOConfig(use_weighting=True))
    # The defaults and every valid value build.
    for kind in ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"):
        DPOConfig(loss_type=F_DIVERGENCE_LOSSES[:-1] + ("sft",), label_smoothing=EPS, f_divergence_type=kind)
    DPOConfig(ld_alpha=0.0, use_weighting=True, reference_free=True)
