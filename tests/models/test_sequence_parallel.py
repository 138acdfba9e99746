"""Sequence-parallel attention equals the XLA reference: the blockwise kernel on one device,
the zig-zag order, and both strategies on 8 simulated devices (values and gradients)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from simulated_devices import run_on_8_devices
from test_attention import _inputs, _loss

from alignjax.models import sequence_parallel as sp
from alignjax.models import splash


def _blockwise_loss(window, softcap, kw, valid, tile):
    def f(q, k, v):
        out = sp.blockwise_attention(q, k, v, window=window, softcap=softcap, tile=tile, **kw)
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
    out = sp.blockwise_attention(q, k, v, tile=16, **kw)
    assert np.all(np.isfinite(np.asarray(out)))
    np.testing.assert_array_equal(np.asarray(out)[~np.asarray(valid)[..., 0, 0]], 0.0)


def test_zigzag_order_gives_each_shard_an_early_and_a_late_chunk():
    x = np.arange(16)[None]
    order = np.asarray(sp.load_balance_order(x, 2))
    # 4 chunks of 4: shard 0 holds chunks 0 and 3, shard 1 chunks 1 and 2.
    np.testing.assert_array_equal(order[0], [0, 1, 2, 3, 12, 13, 14, 15, 4, 5, 6, 7, 8, 9, 10, 11])
    np.testing.assert_array_equal(np.asarray(sp.natural_order(order, 2)), x)
    where = sp.balanced_index(16, 2)
    np.testing.assert_array_equal(order[0][where], x[0])
    # Built inside jit too (P-DPO moves its soft-token indices with it in the step).
    np.testing.assert_array_equal(jax.jit(lambda: jnp.asarray(sp.balanced_index(16, 2)))(), where)
    # Trailing dimensions ride along.
    y = np.random.default_rng(0).normal(size=(2, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(sp.natural_order(sp.load_balance_order(y, 2), 2)), y)


def test_splash_is_told_the_zigzag_positions():
    """The positions the splash kernel masks sequence-parallel rows by are the zig-zag
    order's (built in NumPy on the host, like splash's mask tables)."""
    for length, shards in [(16, 2), (64, 4)]:
        want = np.asarray(sp.load_balance_order(np.arange(length)[None], shards))[0]
        np.testing.assert_array_equal(splash.zigzag_positions(length, shards), want)


def test_zigzag_balances_causal_work_across_shards():
    """(query, key) pairs the causal mask keeps, per shard: equal in zig-zag order, and
    6.6x apart from the first shard to the last in the natural order (4 shards)."""
    length, shards = 64, 4
    positions = np.arange(length)

    def work(order_L):
        keys_seen = order_L[:, None] + 1  # a query at position p sees p + 1 keys
        return [int(keys_seen[i].sum()) for i in np.split(np.arange(length), shards)]

    natural = work(positions)
    balanced = work(np.asarray(sp.load_balance_order(positions[None], shards))[0])
    assert len(set(balanced)) == 1 and sum(balanced) == sum(natural)
    assert natural == [136, 392, 648, 904] and balanced == [520] * 4


SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, sys.argv[1])
from test_attention import _inputs
from alignjax import sharding
from alignjax.models import sequence_parallel as sp
from alignjax.models.attention import attention

q, k, v, kw, valid = _inputs()
results = []

def loss(strategy, window, softcap, balance, backend="xla"):
    def f(q, k, v):
        args = dict(kw)
        if balance:
            q, k, v = (sp.load_balance_order(x, 4) for x in (q, k, v))
            args = {n: sp.load_balance_order(jnp.asarray(x), 4) if n.endswith("BxL") or n.endswith("BxS") else x
                    for n, x in kw.items()}
        out = attention(q, k, v, window=window, softcap=softcap, sequence_parallel=strategy, backend=backend,
                        sequence_zigzag=balance, **args)
        if balance:
            out = sp.natural_order(out, 4)
        return jnp.sum(jnp.where(valid, out, 0.0) ** 2)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

sp.DEFAULT_TILE = 8  # 32 tokens per shard: four query and four key tiles
for name, section in [("sequence4", dict(fsdp=2, sequence=4)),
                      ("sequence4_data2", dict(data=2, fsdp=1, sequence=4)),
                      ("sequence2_tensor2_fsdp2", dict(fsdp=2, sequence=2, tensor=2))]:
    mesh = sharding.make_mesh(sharding.MeshSection(**section))
    shards = mesh.shape["sequence"]
    for window, softcap in [(None, None), (7, 5.0)]:
        ref_val, ref_grads = loss(None, window, softcap, False)(q, k, v)
        for strategy in sp.STRATEGIES:
            for balance in ([False, True] if shards == 4 else [False]):
                with jax.set_mesh(mesh):
                    val, grads = loss(strategy, window, softcap, balance)(q, k, v)
                results.append(dict(
                    mesh=name, window=window, softcap=softcap, strategy=strategy, balance=balance,
                    value=float(val), ref_value=float(ref_val),
                    grad_diff=max(float(jnp.max(jnp.abs(g - r))) for g, r in zip(grads, ref_grads)),
                    grad_scale=max(float(jnp.max(jnp.abs(r))) for r in ref_grads)))
# Splash inside each shard (interpreted): its backward needs query tiles of 128, so rows
# of 512 split 4 ways.
q, k, v, kw, valid = _inputs(512)
mesh = sharding.make_mesh(sharding.MeshSection(fsdp=2, sequence=4))
for window, softcap in [(None, None), (7, 5.0)]:
    ref_val, ref_grads = loss(None, window, softcap, False)(q, k, v)
    for balance in [False, True]:
        with jax.set_mesh(mesh):
            val, grads = loss("all_gather", window, softcap, balance, "splash_interpret")(q, k, v)
        results.append(dict(
            mesh="sequence4", window=window, softcap=softcap, strategy="all_gather+splash", balance=balance,
            value=float(val), ref_value=float(ref_val),
            grad_diff=max(float(jnp.max(jnp.abs(g - r))) for g, r in zip(grads, ref_grads)),
            grad_scale=max(float(jnp.max(jnp.abs(r))) for r in ref_grads)))
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def sharded_results():
    here = os.path.dirname(__file__)
    proc = run_on_8_devices(["-c", SCRIPT, here], [os.path.dirname(here)], timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS "))
    return json.loads(line.removeprefix("RESULTS "))


@pytest.mark.slow
def test_both_strategies_equal_reference_on_8_devices(sharded_results):
    """all_gather and ring, rows split 4 ways (with fsdp 2 or data 2) and 2 ways (with
    tensor 2 splitting heads), natural and zig-zag order, window and soft-cap, and splash
    inside each shard of all_gather: values and gradients of q, k, v equal the unsharded
    XLA reference."""
    assert len(sharded_results) == 2 * (2 * 2 + 2 * 2 + 2) + 4
    assert {r["strategy"] for r in sharded_results} == {*sp.STRATEGIES, "all_gather+splash"}
    for r in sharded_results:
        assert abs(r["value"] - r["ref_value"]) <= 1e-5 * abs(r["ref_value"]), r
        assert r["grad_diff"] <= 1e-5 * r["grad_scale"], r


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
    """Scanned layers once made JAX keep every tile's scores for the backward (a
    [query tiles, key tiles, ..., tile, tile] residual: the whole L x S matrix); the largest
    array a scanned two-layer gradient makes stays far below one head's scores."""
    b, length, heads, dh = 1, 256, 2, 8
    pos, seg = jnp.arange(length)[None], jnp.ones((b, length), jnp.int32)

    def layers(x):
        def layer(h, _):
            out = sp.blockwise_attention(
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
