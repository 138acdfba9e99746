"""Chunked log-probs and token KL against float64 NumPy, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax.losses.logps import token_kl, token_logps
from alignjax.losses.memory import logps_memory_report

B, L, D, V = 2, 5, 8, 29
# (token_chunk, vocab_chunk, softcap): ragged tiles on both axes, one vocab tile, and
# chunks larger than the data; each with and without a Gemma-2 softcap somewhere.
CASES = [(3, 7, None), (4, 29, 2.5), (10, 8, 2.5), (64, 64, None)]


def _inputs(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(B, L, D)) * scale
    unembed = rng.normal(size=(D, V)) * 0.7
    targets = rng.integers(0, V, size=(B, L))
    cotangent = rng.normal(size=(B, L))
    return hidden, unembed, targets, cotangent


def _np_logps_and_grads(hidden, unembed, targets, cotangent, cap=None):
    """log p(target) and d(sum cotangent * logp)/d(hidden, unembed), by hand in float64."""
    raw = np.einsum("bld,dv->blv", hidden, unembed)
    z = raw if cap is None else cap * np.tanh(raw / cap)
    zmax = z.max(-1, keepdims=True)
    lse = zmax[..., 0] + np.log(np.exp(z - zmax).sum(-1))
    logps = np.take_along_axis(z, targets[..., None], -1)[..., 0] - lse
    onehot = np.eye(V)[targets]
    dz = cotangent[..., None] * (onehot - np.exp(z - lse[..., None]))
    if cap is not None:
        dz = dz * (1.0 - np.tanh(raw / cap) ** 2)
    return logps, np.einsum("blv,dv->bld", dz, unembed), np.einsum("bld,blv->dv", hidden, dz)


def _logps_and_grads(hidden, unembed, targets, cotangent, **kw):
    @jax.jit
    def run(h, w):
        logps, vjp = jax.vjp(lambda h, w: token_logps(h, w, targets, **kw), h, w)
        return (logps,) + vjp(cotangent.astype(logps.dtype))

    return run(hidden, unembed)


@pytest.mark.parametrize("token_chunk,vocab_chunk,cap", CASES)
def test_logps_and_grads_match_float64_reference_in_float32(token_chunk, vocab_chunk, cap):
    hidden, unembed, targets, cotangent = _inputs()
    want = _np_logps_and_grads(hidden, unembed, targets, cotangent, cap)
    got = _logps_and_grads(
        jnp.float32(hidden),
        jnp.float32(unembed),
        jnp.asarray(targets),
        jnp.float32(cotangent),
        final_logit_softcap=cap,
        token_chunk=token_chunk,
        vocab_chunk=vocab_chunk,
    )
    for g, w in zip(got, want):
        assert g.dtype == jnp.float32
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=2e-6)


def test_chunked_equals_naive_jax_path_in_float32():
    hidden, unembed, targets, cotangent = (jnp.asarray(x) for x in _inputs(seed=3))
    hidden, unembed, cotangent = (
        hidden.astype(jnp.float32),
        unembed.astype(jnp.float32),
        cotangent.astype(jnp.float32),
    )

    def naive(h, w):
        logits = jnp.einsum("bld,dv->blv", h, w, precision=jax.lax.Precision.HIGHEST)
        return jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]

    want = (naive(hidden, unembed),) + jax.grad(
        lambda h, w: jnp.sum(naive(h, w) * cotangent), argnums=(0, 1)
    )(hidden, unembed)
    got = _logps_and_grads(hidden, unembed, targets, cotangent, token_chunk=3, vocab_chunk=7)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=2e-6)


def test_logps_exact_in_float64():
    hidden, unembed, targets, cotangent = _inputs(seed=1, scale=3.0)
    want = _np_logps_and_grads(hidden, unembed, targets, cotangent, cap=4.0)
    with jax.enable_x64(True):
        got = _logps_and_grads(
            jnp.asarray(hidden),
            jnp.asarray(unembed),
            jnp.asarray(targets),
            jnp.asarray(cotangent),
            final_logit_softcap=4.0,
            token_chunk=4,
            vocab_chunk=6,
        )
        for g, w in zip(got, want):
            assert g.dtype == jnp.float64
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_bf16_inputs_are_scored_in_float32():
    hidden, unembed, targets, _ = _inputs(seed=2)
    h16, w16 = jnp.bfloat16(hidden), jnp.bfloat16(unembed)
    # The reference sees exactly the bf16-rounded values, upcast: only the arithmetic differs.
    want, _, _ = _np_logps_and_grads(
        np.asarray(h16, np.float64), np.asarray(w16, np.float64), targets, np.zeros((B, L))
    )
    got = token_logps(h16, w16, jnp.asarray(targets), token_chunk=4, vocab_chunk=8)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=2e-6)
    grads = jax.grad(lambda h, w: token_logps(h, w, jnp.asarray(targets)).sum(), (0, 1))(h16, w16)
    assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.bfloat16


def test_out_of_range_targets_score_zero_without_gradient():
    hidden, unembed, targets, cotangent = _inputs(seed=4)
    targets = targets.copy()
    targets[0, :2] = -100
    targets[1, 3] = V
    want_logps, _, _ = _np_logps_and_grads(hidden, unembed, np.clip(targets, 0, V - 1), cotangent)
    valid = (targets >= 0) & (targets < V)
    got, dh, _ = _logps_and_grads(
        jnp.float32(hidden),
        jnp.float32(unembed),
        jnp.asarray(targets),
        jnp.float32(cotangent),
        token_chunk=3,
        vocab_chunk=7,
    )
    np.testing.assert_allclose(got, np.where(valid, want_logps, 0.0), rtol=1e-6, atol=2e-6)
    np.testing.assert_array_equal(np.asarray(dh)[~valid], 0.0)


def _np_kl_and_grads(hp, wp, hr, wr, cotangent, cap=None):
    def logsoftmax(z):
        m = z.max(-1, keepdims=True)
        return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))

    raw_p = np.einsum("bld,dv->blv", hp, wp)
    zp = raw_p if cap is None else cap * np.tanh(raw_p / cap)
    zr = np.einsum("bld,dv->blv", hr, wr)
    zr = zr if cap is None else cap * np.tanh(zr / cap)
    lp, lr = logsoftmax(zp), logsoftmax(zr)
    kl = (np.exp(lr) * (lr - lp)).sum(-1)
    dz = cotangent[..., None] * (np.exp(lp) - np.exp(lr))
    if cap is not None:
        dz = dz * (1.0 - np.tanh(raw_p / cap) ** 2)
    return kl, np.einsum("blv,dv->bld", dz, wp), np.einsum("bld,blv->dv", hp, dz)


@pytest.mark.parametrize("token_chunk,vocab_chunk,cap", [(3, 7, None), (10, 8, 3.0)])
def test_token_kl_matches_float64_reference(token_chunk, vocab_chunk, cap):
    rng = np.random.default_rng(5)
    hp, wp = rng.normal(size=(B, L, D)), rng.normal(size=(D, V)) * 0.5
    hr, wr = rng.normal(size=(B, L, 6)), rng.normal(size=(6, V)) * 0.5  # different width
    cotangent = rng.normal(size=(B, L))
    want = _np_kl_and_grads(hp, wp, hr, wr, cotangent, cap)
    args = [jnp.float32(x) for x in (hp, wp, hr, wr)]
    kw = dict(final_logit_softcap=cap, token_chunk=token_chunk, vocab_chunk=vocab_chunk)
    _, grads = jax.jit(
        jax.value_and_grad(
            lambda *a: jnp.sum(token_kl(*a, **kw) * jnp.float32(cotangent)),
            argnums=(0, 1, 2, 3),
        )
    )(*args)
    kl = jax.jit(lambda *a: token_kl(*a, **kw))(*args)
    np.testing.assert_allclose(kl, want[0], rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(grads[0], want[1], rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(grads[1], want[2], rtol=1e-5, atol=2e-6)
    # The reference is a fixed target.
    np.testing.assert_array_equal(grads[2], 0.0)
    np.testing.assert_array_equal(grads[3], 0.0)


def test_token_kl_is_zero_for_identical_models():
    rng = np.random.default_rng(6)
    h, w = jnp.float32(rng.normal(size=(B, L, D))), jnp.float32(rng.normal(size=(D, V)))
    np.testing.assert_allclose(token_kl(h, w, h, w, token_chunk=3, vocab_chunk=7), 0.0, atol=2e-6)


def test_shape_errors_say_what_to_pass():
    hidden, unembed, targets, _ = _inputs()
    with pytest.raises(ValueError, match="embedding.T"):
        token_logps(jnp.float32(hidden), jnp.float32(unembed.T), jnp.asarray(targets))


def test_chunked_memory_does_not_grow_with_vocab_like_naive():
    # Compile-only (nothing runs): 512 tokens, width 64, vocab 32k vs 128k.
    small = logps_memory_report(2, 256, 64, 32 * 1024, token_chunk=256, vocab_chunk=4096)
    large = logps_memory_report(2, 256, 64, 128 * 1024, token_chunk=256, vocab_chunk=4096)
    naive_ratio = large["naive"]["temp_bytes"] / small["naive"]["temp_bytes"]
    chunked_ratio = large["chunked"]["temp_bytes"] / small["chunked"]["temp_bytes"]
    assert naive_ratio > 3.5, (small, large)
    assert chunked_ratio < 1.25, (small, large)
    # The naive program holds at least the [B, L, V] float32 logits.
    assert large["naive"]["temp_bytes"] >= 2 * 256 * 128 * 1024 * 4
    assert large["chunked"]["temp_bytes"] < large["naive"]["temp_bytes"] / 20
