"""CUT (paper and authors'-code forms) against float64 NumPy written from docs/methods.md."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from alignjax.losses.cut import CUTConfig, cut_loss, response_logps, split_views

B, R = 6, 7


def random_views(seed):
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, R + 1, size=B)
    mask = (np.arange(R)[None] < lens[:, None]).astype(np.float64)
    without = -rng.uniform(0.05, 4.0, size=(B, R))
    # The judgment raises some tokens' probability a lot, others barely.
    with_ = np.minimum(without + rng.normal(scale=0.6, size=(B, R)), -1e-4)
    negative = np.array([1, 0, 1, 1, 0, 1], bool)
    with_[mask == 0] = 3.0  # padding must not leak
    without[mask == 0] = 0.0
    return with_, without, mask, negative


def np_cut(with_, without, mask, negative, lam, a, g, detection, form):
    keep = mask > 0
    neg = keep & negative[:, None]
    p_with, p_without = np.exp(with_), np.exp(without)
    if detection == "ratio":
        flagged = (p_with / p_without > lam) & neg
    else:
        flagged = (p_with - lam * p_without > 0) & neg
    nll = -with_[keep].mean()
    n = neg.sum()
    if form == "paper":
        log_1mp = np.log(1 - np.where(flagged, p_without, 0.0))
        terms = np.where(flagged, a * p_with**g * log_1mp, without)
        ul = -terms[neg].sum() / max(n, 1)
        loss = nll + ul
    else:
        x = np.where(flagged, 1 - p_without, p_without)
        x = np.where(x == 0, 1e-5, x)
        terms = np.where(flagged, a * np.log(x), np.log(x))
        ul = -terms[neg].sum() / max(n, 1)
        loss = (nll + ul) / 2 if n else nll
    return loss, nll, ul, flagged[neg].mean() if n else 0.0


CASES = [
    ("ratio", "paper", 0.0),
    ("difference", "paper", 1.0),
    ("ratio", "paper", 2.0),
    ("ratio", "code", 0.0),
    ("difference", "code", 0.0),
]


@pytest.mark.parametrize("detection,form,g", CASES)
def test_cut_matches_numpy(detection, form, g):
    with_, without, mask, negative = random_views(0)
    cfg = CUTConfig(lam=1.2, a=0.5, g=g, detection=detection, form=form)
    loss, metrics = jax.jit(lambda *x: cut_loss(*x, cfg))(
        jnp.float32(with_), jnp.float32(without), jnp.asarray(mask), jnp.asarray(negative)
    )
    want, nll, ul, frac = np_cut(with_, without, mask, negative, 1.2, 0.5, g, detection, form)
    assert 0.0 < frac < 1.0  # the batch exercises both branches
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["nll"], nll, rtol=1e-5)
    np.testing.assert_allclose(metrics["unlikelihood"], ul, rtol=1e-5)
    np.testing.assert_allclose(metrics["flagged_fraction"], frac, rtol=1e-6)


def test_no_flagged_tokens_is_plain_nll():
    with_, without, mask, negative = random_views(1)
    loss, metrics = cut_loss(
        jnp.float32(with_), jnp.float32(without), jnp.asarray(mask), jnp.asarray(negative), CUTConfig(lam=1e9)
    )
    keep = mask > 0
    neg = keep & negative[:, None]
    want = -with_[keep].mean() - without[neg].mean()  # Align-P/N NLL + Misalign NLL
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert int(metrics["num_flagged"]) == 0


def test_code_form_without_negatives_is_nll_alone():
    with_, without, mask, _ = random_views(2)
    negative = np.zeros(B, bool)
    loss, _ = cut_loss(
        jnp.float32(with_),
        jnp.float32(without),
        jnp.asarray(mask),
        jnp.asarray(negative),
        CUTConfig(form="code"),
    )
    np.testing.assert_allclose(loss, -with_[mask > 0].mean(), rtol=1e-6)


def test_detection_is_detached_and_focal_weight_carries_no_gradient():
    with_, without, mask, negative = random_views(3)
    cfg = CUTConfig(lam=1.1, a=1.0, g=2.0)
    with jax.enable_x64(True):
        args = (jnp.asarray(with_), jnp.asarray(without), jnp.asarray(mask), jnp.asarray(negative))
        # Numerically differentiable only in the Misalign view: the focal weight and the
        # detection read the with-judgment view but are (by design) constants to autodiff.
        check_grads(
            jax.jit(lambda wo: cut_loss(args[0], wo, args[2], args[3], cfg)[0]),
            args[1:2],
            order=1,
            modes=["rev"],
            eps=1e-7,
            atol=1e-6,
            rtol=1e-6,
        )
        d_with = jax.grad(lambda w: cut_loss(w, *args[1:], cfg)[0])(args[0])
    # Only the NLL reaches the with-judgment view: -1/N on every response token.
    keep = mask > 0
    np.testing.assert_allclose(np.asarray(d_with)[keep], -1.0 / keep.sum(), rtol=1e-12)


def test_response_alignment_and_view_split():
    logps_2BxL = jnp.arange(4 * 6, dtype=jnp.float32).reshape(4, 6)
    with_, without = split_views(logps_2BxL)
    np.testing.assert_array_equal(without, np.arange(12, 24).reshape(2, 6))
    aligned = response_logps(with_, jnp.array([2, 4]), 3)
    np.testing.assert_array_equal(aligned, [[2, 3, 4], [10, 11, 11]])  # past the end: clamped
    with pytest.raises(ValueError, match="even number"):
        split_views(jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="g=0"):
        CUTConfig(form="code", g=1.0)
