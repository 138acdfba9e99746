"""Every attention backend that runs here equals the XLA reference, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax.models.attention import BackendUnavailableError, attention, attention_mask, segment_layout

B, L, H, K, DH = 2, 128, 4, 2, 16


def _inputs(length=L):
    """Row 0 left-padded; row 1 two packed segments then right padding (cut points scale
    with `length`: 10 / 60 / 120 of 128)."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(B, length, H, DH)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(B, length, K, DH)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(B, length, K, DH)), jnp.float32)
    pad, second, end = 10 * length // L, 60 * length // L, 120 * length // L
    seg = np.ones((B, length), np.int32)
    seg[0, :pad] = 0
    seg[1, second:] = 2
    seg[1, end:] = 0
    pos = np.zeros((B, length), np.int32)
    pos[0, pad:] = np.arange(length - pad)
    pos[1, :second] = np.arange(second)
    pos[1, second:] = np.arange(length - second)
    kw = dict(
        q_positions_BxL=pos, k_positions_BxS=pos, q_segment_ids_BxL=seg, k_segment_ids_BxS=seg, scale=0.25
    )
    return q, k, v, kw, (seg != 0)[:, :, None, None]


def _loss(backend, window, softcap, kw, valid):
    def f(q, k, v):
        out = attention(q, k, v, window=window, softcap=softcap, backend=backend, **kw)
        return jnp.sum(jnp.where(valid, out, 0.0) ** 2)

    return jax.value_and_grad(f, argnums=(0, 1, 2))


def test_reference_masks_by_segment_position_and_window():
    """A hand-built case: the reference attends exactly where the masking rule says."""
    pos = np.array([[0, 0, 1, 2, 0, 1]])
    seg = np.array([[0, 1, 1, 1, 2, 2]])
    v = jnp.eye(6)[None, :, None, :]  # value j is the one-hot e_j: outputs show attention weights
    q = jnp.zeros((1, 6, 1, 6))
    out = attention(
        q,
        q,
        v,
        q_positions_BxL=pos,
        k_positions_BxS=pos,
        q_segment_ids_BxL=seg,
        k_segment_ids_BxS=seg,
        scale=1.0,
        window=2,
    )[0, :, 0]
    expected = np.array(
        [
            [1 / 6] * 6,  # padding row: finite, ignored downstream
            [0, 1, 0, 0, 0, 0],
            [0, 0.5, 0.5, 0, 0, 0],
            [0, 0, 0.5, 0.5, 0, 0],  # window 2 drops position 0 for the query at position 2
            [0, 0, 0, 0, 1, 0],  # a new segment sees nothing of the previous one
            [0, 0, 0, 0, 0.5, 0.5],
        ]
    )
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-6)


@pytest.mark.parametrize("window", [None, 7])
def test_dot_product_equals_reference(window):
    q, k, v, kw, valid = _inputs()
    ref_val, ref_grads = _loss("xla", window, None, kw, valid)(q, k, v)
    val, grads = _loss("dot_product", window, None, kw, valid)(q, k, v)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("window,softcap", [(None, None), (7, None), (7, 5.0)])
def test_splash_kernel_equals_reference(window, softcap):
    """The TPU kernel itself, run through the Pallas interpreter."""
    q, k, v, kw, valid = _inputs()
    ref_val, ref_grads = _loss("xla", window, softcap, kw, valid)(q, k, v)
    val, grads = _loss("splash_interpret", window, softcap, kw, valid)(q, k, v)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cuDNN runs here; see the GPU test")
def test_cudnn_fails_clearly_without_gpu():
    q, k, v, kw, _ = _inputs()
    with pytest.raises(BackendUnavailableError, match="cudnn.*needs an NVIDIA GPU"):
        attention(q, k, v, backend="cudnn", **kw)


@pytest.mark.skipif(jax.default_backend() == "tpu", reason="splash runs here")
def test_splash_fails_clearly_without_tpu():
    q, k, v, kw, _ = _inputs()
    with pytest.raises(BackendUnavailableError, match="splash.*TPU kernel"):
        attention(q, k, v, backend="splash", **kw)


def test_softcap_rejected_by_dot_product():
    q, k, v, kw, _ = _inputs()
    with pytest.raises(BackendUnavailableError, match="soft-capping"):
        attention(q, k, v, backend="dot_product", softcap=50.0, **kw)


def _cudnn_semantics_mask(lengths_BxM, starts_BxM1, length, window):
    """The mask cuDNN's packed layout means: causal by index inside each listed segment
    (-1 entries absent), nothing across segments, and the sliding window by index."""
    lengths, starts = np.asarray(lengths_BxM), np.asarray(starts_BxM1)
    mask = np.zeros((lengths.shape[0], length, length), bool)
    for b in range(lengths.shape[0]):
        for m in range(lengths.shape[1]):
            if lengths[b, m] < 0:
                assert starts[b, m] == -1
                continue
            s, n = starts[b, m], lengths[b, m]
            for i in range(s, s + n):
                lo = s if window is None else max(s, i - window + 1)
                mask[b, i, lo : i + 1] = True
        assert starts[b, -1] == -1
    return mask


@pytest.mark.parametrize("window", [None, 7])
@pytest.mark.parametrize("max_segments", [2, 5])
def test_cudnn_segment_layout_means_the_reference_mask(window, max_segments):
    """What the cudnn backend tells cuDNN (per-segment lengths and starts, O(L)) describes
    exactly the reference's [L, L] mask, for left padding, packed segments and right padding."""
    _, _, _, kw, _ = _inputs()
    lengths_BxM, starts_BxM1 = segment_layout(jnp.asarray(kw["q_segment_ids_BxL"]), max_segments)
    assert lengths_BxM.shape == (B, max_segments) and starts_BxM1.shape == (B, max_segments + 1)
    np.testing.assert_array_equal(np.asarray(lengths_BxM)[:, :2], [[L - 10, -1], [60, 60]])
    np.testing.assert_array_equal(np.asarray(starts_BxM1)[:, :2], [[10, -1], [0, 60]])
    meant = _cudnn_semantics_mask(lengths_BxM, starts_BxM1, L, window)
    ref = np.asarray(
        attention_mask(
            kw["q_positions_BxL"],
            kw["k_positions_BxS"],
            kw["q_segment_ids_BxL"],
            kw["k_segment_ids_BxS"],
            window,
        )
    )
    valid_q = np.asarray(kw["q_segment_ids_BxL"]) != 0  # padding queries' rows are never read
    np.testing.assert_array_equal(meant[valid_q], ref[valid_q])


def test_cudnn_segment_layout_has_no_quadratic_array():
    """The layout is built from O(L) arrays: nothing [L, L] appears in its program."""
    seg = jnp.ones((2, 4096), jnp.int32)
    text = jax.jit(lambda s: segment_layout(s, 16)).lower(seg).as_text()
    assert "4096x4096" not in text


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("window", [None, 7])
def test_cudnn_equals_reference_on_gpu(window):
    q, k, v, kw, valid = _inputs()
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    ref_val, ref_grads = _loss("xla", window, None, kw, valid)(q, k, v)
    val, grads = jax.value_and_grad(
        lambda q, k, v: jnp.sum(
            jnp.where(valid, attention(q, k, v, window=window, backend="cudnn", max_segments=2, **kw), 0.0)
            ** 2
        ),
        argnums=(0, 1, 2),
    )(q, k, v)
    np.testing.assert_allclose(np.float32(val), np.float32(ref_val), rtol=2e-2)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.float32(g), np.float32(r), atol=5e-2, rtol=5e-2)
