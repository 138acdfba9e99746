"""Decoder features beyond family parity: remat, splicing, intermediates, axes, dtypes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_models import FAMILY_CONFIGS
from simulated_devices import run_on_8_devices

from alignjax.models import decoder, head
from alignjax.models.families import model_config_from_hf

B, L = 2, 10


def _cfg(family="gemma2", **execution):
    cfg_dict = dict(FAMILY_CONFIGS[family])
    return model_config_from_hf(cfg_dict, **execution)


def _batch(cfg, seed=0):
    tokens = np.random.default_rng(seed).integers(3, cfg.vocab_size, size=(B, L))
    return jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(L), (B, L)), jnp.ones((B, L), jnp.int32)


def _loss(cfg):
    def f(params, tokens, positions, segment_ids):
        hidden = decoder.apply(params, cfg, tokens, positions, segment_ids)
        return jnp.mean(head.logits_BxLxV(params, cfg, hidden) ** 2)

    return jax.jit(jax.value_and_grad(f))


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("policy", ["full", "save_dots", "save_dot_except_mlp", "minimal_offloaded"])
def test_remat_keeps_values_and_gradients(scan, policy):
    base = _cfg(scan_layers=scan)
    params = decoder.init_params(base, jax.random.key(0))
    batch = _batch(base)
    ref_val, ref_grads = _loss(base)(params, *batch)
    val, grads = _loss(base.replace(remat_policy=policy))(params, *batch)
    np.testing.assert_allclose(val, ref_val, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, ref_grads)


@pytest.mark.parametrize("policy", ["qkv_proj_offloaded", "minimal_offloaded"])
def test_offload_policies_move_activations_to_host(policy):
    """The offloading policies really send activations to host memory (the traced backward
    moves them there), and only those policies do."""
    cfg = _cfg(scan_layers=True)
    params = decoder.init_params(cfg, jax.random.key(0))
    batch = _batch(cfg)

    def program(c):
        return str(jax.make_jaxpr(_loss(c))(params, *batch))

    assert "MemorySpace.Host" in program(cfg.replace(remat_policy=policy))
    assert "MemorySpace.Host" not in program(cfg.replace(remat_policy="minimal"))


def test_extra_embeddings_replace_rows():
    """Splicing a token's own (scaled) embedding at a position equals feeding that token."""
    cfg = _cfg("gemma")
    params = decoder.init_params(cfg, jax.random.key(1))
    tokens, positions, segment_ids = _batch(cfg)
    placeholder = tokens.at[:, 1:3].set(0)
    scale = cfg.hidden_size**0.5
    soft = params["embedding"][tokens[:, 1:3]] * scale
    index = jnp.broadcast_to(jnp.arange(1, 3), (B, 2))
    spliced = decoder.apply(
        params, cfg, placeholder, positions, segment_ids, decoder.ExtraEmbeddings(soft, index)
    )
    direct = decoder.apply(params, cfg, tokens, positions, segment_ids)
    np.testing.assert_allclose(spliced, direct, atol=1e-5)
    without = decoder.apply(params, cfg, placeholder, positions, segment_ids)
    assert np.abs(np.asarray(without - direct)).max() > 1e-3


@pytest.mark.parametrize("scan", [False, True])
def test_intermediates(scan):
    cfg = _cfg("gemma3", scan_layers=scan)
    params = decoder.init_params(cfg, jax.random.key(2))
    batch = _batch(cfg)
    hidden, per_layer, acts = decoder.apply_with_intermediates(params, cfg, *batch)
    np.testing.assert_allclose(hidden, decoder.apply(params, cfg, *batch), atol=1e-6)
    assert per_layer.shape == (cfg.num_layers, B, L, cfg.hidden_size)
    assert sorted(acts) == ["attn_k", "attn_out", "attn_q", "attn_v", "mlp_out", "residual"]
    for kind, value in acts.items():
        assert value.shape == (cfg.num_layers, B, L), kind
    # The residual stream after the last layer, summarised, is the last hidden state's mean.
    np.testing.assert_allclose(acts["residual"][-1], per_layer[-1].mean(-1), atol=1e-6)


@pytest.mark.parametrize("scan", [False, True])
def test_every_parameter_dimension_has_a_logical_axis(scan):
    cfg = _cfg("qwen3", scan_layers=scan)
    axes = decoder.logical_axes(cfg)
    shapes = jax.eval_shape(lambda: decoder.init_params(cfg, jax.random.key(0)))
    flat_axes = jax.tree_util.tree_leaves_with_path(
        axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    flat_shapes = dict(jax.tree_util.tree_leaves_with_path(shapes))
    assert len(flat_axes) == len(flat_shapes)
    for path, spec in flat_axes:
        assert len(spec) == flat_shapes[path].ndim and all(isinstance(a, str) for a in spec), (path, spec)
        if scan and "layers" in jax.tree_util.keystr(path):
            assert spec[0] == "layers"


def test_bf16_compute_with_fp32_params_tracks_fp32():
    cfg = _cfg("llama3")
    params = decoder.init_params(cfg, jax.random.key(3))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    batch = _batch(cfg)
    f32 = decoder.apply(params, cfg, *batch)
    bf16 = decoder.apply(params, cfg.replace(dtype="bfloat16"), *batch)
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf16, np.float32), f32, atol=0.1)


def test_decoder_with_splash_kernel_matches_reference():
    cfg = _cfg("gemma2")  # soft-capping, query scaling and alternating windows
    params = decoder.init_params(cfg, jax.random.key(4))
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, size=(1, 128)))
    positions, segment_ids = jnp.arange(128)[None], jnp.ones((1, 128), jnp.int32)
    ref = decoder.apply(params, cfg, tokens, positions, segment_ids)
    out = decoder.apply(
        params, cfg.replace(attention_backend="splash_interpret"), tokens, positions, segment_ids
    )
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_bad_backend_is_named():
    with pytest.raises(ValueError, match="model.attention_backend='flash'"):
        _cfg(attention_backend="flash")


LOOKUP_SCRIPT = r"""
import json, re, sys
import jax, jax.numpy as jnp
sys.path.insert(0, sys.argv[1])
from hf_models import FAMILY_CONFIGS
from alignjax.core import sharding
from alignjax.models import decoder
from alignjax.models.families import model_config_from_hf

cfg = model_config_from_hf(dict(FAMILY_CONFIGS["llama3"]))
mesh = sharding.make_mesh(sharding.MeshSection(fsdp=2, sequence=4))
shapes = jax.eval_shape(lambda: decoder.init_params(cfg, jax.random.key(0)))
shardings = sharding.tree_shardings(decoder.logical_axes(cfg), shapes, mesh)
params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
rows = jax.ShapeDtypeStruct((4, 64), jnp.int32, sharding=sharding.batch_sharding(mesh))
with jax.set_mesh(mesh):
    hlo = jax.jit(lambda p, t, q, s: decoder.apply(p, cfg, t, q, s)).lower(params, rows, rows, rows)
    hlo = hlo.compile().as_text()
lookups = [m for line in hlo.splitlines() if "_take" in line for m in re.findall(r"= \w+\[([0-9,]*)\]\S* gather\(", line)]
print("LOOKUPS " + json.dumps([[int(d) for d in m.split(",")] for m in lookups] + [cfg.hidden_size]))
"""


@pytest.mark.slow
def test_embedding_lookup_is_split_by_length_where_rows_are():
    """Rows split over fsdp=2 and their tokens over sequence=4 (8 simulated devices): each
    chip looks up its own 2 rows x 16 tokens, all of D, from the gathered table. Without the
    tokens' and the table's layouts pinned, XLA's partitioner met a lookup split over D that
    had to become one split over L and fell back to replicating the whole [4, 64, D] output
    ("Involuntary full rematerialization")."""
    tests = os.path.dirname(os.path.dirname(__file__))
    proc = run_on_8_devices(["-c", LOOKUP_SCRIPT, tests], [tests], timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Involuntary full rematerialization" not in proc.stderr, proc.stderr[-4000:]
    *lookups, hidden = json.loads(proc.stdout.split("LOOKUPS ", 1)[1])
    # One lookup, of this chip's 32 tokens (XLA may flatten them), each a whole row of D.
    assert [(int(np.prod(shape[:-1])), shape[-1]) for shape in lookups] == [(2 * 16, hidden)]
