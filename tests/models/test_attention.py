"""Every attention backend that runs here equals the XLA reference, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax.models.attention import BackendUnavailableError, attention

B, L, H, K, DH = 2, 128, 4, 2, 16


def _inputs():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(B, L, H, DH)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(B, L, K, DH)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(B, L, K, DH)), jnp.float32)
    # Row 0 left-padded; row 1 two packed segments then right padding.
    seg = np.ones((B, L), np.int32)
    seg[0, :10] = 0
    seg[1, 60:] = 2
    seg[1, 120:] = 0
    pos = np.zeros((B, L), np.int32)
    pos[0, 10:] = np.arange(L - 10)
    pos[1, :60] = np.arange(60)
    pos[1, 60:] = np.arange(L - 60)
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


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("window", [None, 7])
def test_cudnn_equals_reference_on_gpu(window):
    q, k, v, kw, valid = _inputs()
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    ref = attention(q, k, v, window=window, backend="xla", **kw)
    out = attention(q, k, v, window=window, backend="cudnn", **kw)
    np.testing.assert_allclose(
        np.where(valid, out.astype(np.float32), 0), np.where(valid, ref.astype(np.float32), 0), atol=2e-2
    )
