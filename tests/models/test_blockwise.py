"""The blockwise attention kernel on one device equals the XLA reference (values and
gradients), leaves padding queries at zero, and never builds a score matrix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention import _inputs, _loss

from alignjax.models import blockwise


def _blockwise_loss(window, softcap, kw, valid, tile):
    def f(q, k, v):
        out = blockwise.blockwise_attention(q, k, v, window=window, softcap=softcap, tile=tile, **kw)
        return jnp.sum(jnp.where(valid, out, 0.0) ** 2)

    return jax.value_and_grad(f, argnums=(0, 1, 2))


@pytest.mark.parametrize("window,softcap", [(None, None), (7, None), (None, 5.0), (7, 5.0)])
def test_blockwise_kernel_equals_reference(window, softcap):
    """Eight query and eight key tiles of 16 (most of them masked out entirely and skipped);
    left padding, two packed segments and right padding."""
    q, k, v, kw, valid = _inputs()
    ref_val, ref_grads = _loss("xla", window, softcap, kw, valid)(q, k, v)
    val, grads = _blockwise_loss(window, softcap, kw, valid, 16)(q, k, v)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4)


def test_padding_queries_come_out_zero():
    q, k, v, kw, valid = _inputs()
    out = blockwise.blockwise_attention(q, k, v, tile=16, **kw)
    assert np.all(np.isfinite(np.asarray(out)))
    np.testing.assert_array_equal(np.asarray(out)[~np.asarray(valid)[..., 0, 0]], 0.0)


def _largest_array(jaxpr) -> int:
    """Elements in the largest value any equation of `jaxpr` (or of its sub-jaxprs) makes."""
    largest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            largest = max(largest, int(np.prod(getattr(var.aval, "shape", ()))))
        for sub in jax.core.jaxprs_in_params(eqn.params):
            largest = max(largest, _largest_array(sub))
    return largest


def test_gradient_under_scanned_layers_holds_no_score_matrix():
    """Under scanned layers JAX could keep every tile's scores for the backward (a
    [query tiles, key tiles, ..., tile, tile] residual: the whole L x S matrix); the largest
    array a scanned two-layer gradient makes stays far below one head's scores."""
    b, length, heads, dh = 1, 256, 2, 8
    pos, seg = jnp.arange(length)[None], jnp.ones((b, length), jnp.int32)

    def layers(x):
        def layer(h, _):
            out = blockwise.blockwise_attention(
                h,
                h,
                h,
                q_positions_BxL=pos,
                k_positions_BxS=pos,
                q_segment_ids_BxL=seg,
                k_segment_ids_BxS=seg,
                scale=0.3,
                tile=32,
            )
            return h + out, None

        return jnp.sum(jax.lax.scan(layer, x, None, length=2)[0])

    jaxpr = jax.make_jaxpr(jax.grad(layers))(jnp.ones((b, length, heads, dh))).jaxpr
    assert _largest_array(jaxpr) <= length * length // 8
