"""Both sequence-parallel strategies equal the XLA reference on 8 simulated devices
(values and gradients), in natural and zig-zag order."""

import json
import os

import pytest
from simulated_devices import run_on_8_devices

from alignjax.models import sequence_parallel as sp

SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, sys.argv[1])
from test_attention import _inputs
from alignjax.core import sharding
from alignjax.models import blockwise
from alignjax.models import sequence_parallel as sp
from alignjax.models.attention import attention
from alignjax.models.sequence_order import load_balance_order, natural_order

q, k, v, kw, valid = _inputs()
results = []

def loss(strategy, window, softcap, balance, backend="xla"):
    def f(q, k, v):
        args = dict(kw)
        if balance:
            q, k, v = (load_balance_order(x, 4) for x in (q, k, v))
            args = {n: load_balance_order(jnp.asarray(x), 4) if n.endswith("BxL") or n.endswith("BxS") else x
                    for n, x in kw.items()}
        out = attention(q, k, v, window=window, softcap=softcap, sequence_parallel=strategy, backend=backend,
                        sequence_zigzag=balance, **args)
        if balance:
            out = natural_order(out, 4)
        return jnp.sum(jnp.where(valid, out, 0.0) ** 2)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

blockwise.DEFAULT_TILE = 8  # 32 tokens per shard: four query and four key tiles
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
