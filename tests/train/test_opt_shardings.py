"""Optimizer-state shardings come from the parameters' logical axes: every leaf of Adam's
moments (and the SparsePO mask head's own AdamW) is sharded exactly as its parameter,
counts and scalars are replicated. Run on 8 simulated devices (fsdp=4 x tensor=2)."""

import subprocess
import sys

import pytest
import train_helpers as th

SCRIPT = r"""
import jax, optax
from jax.sharding import PartitionSpec as P
from alignjax.core import sharding
from alignjax.convert.loading import ModelSection, load_model
from alignjax.models import decoder
from alignjax.models.mask_head import mask_head_optimizer
from alignjax.core.sharding import MeshSection
from alignjax.train.stage import opt_state_shardings

section = ModelSection(preset="tiny", preset_overrides={"num_hidden_layers": 2, "hidden_size": 64,
    "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2})
loaded = load_model(section, jax.random.key(0), vocab_size=512)
mesh = sharding.make_mesh(MeshSection(fsdp=4, tensor=2))
shapes = {"decoder": jax.eval_shape(lambda p: p, loaded.params), "mask_head": {"w": jax.ShapeDtypeStruct((3,), "float32")}}
decoder_sh = sharding.tree_shardings(decoder.logical_axes(loaded.cfg), shapes["decoder"], mesh)
param_sh = {"decoder": decoder_sh, "mask_head": {"w": sharding.replicated(mesh)}}
tx = mask_head_optimizer(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)), 1e-3)
opt_shapes = jax.eval_shape(tx.init, shapes)
opt_sh = opt_state_shardings(tx, opt_shapes, param_sh, mesh)

import re
param_specs = {jax.tree_util.keystr(p): sh.spec for p, sh in jax.tree_util.tree_leaves_with_path(param_sh)}
masked = lambda x: isinstance(x, optax.MaskedNode)
checked = sharded = 0
for path, leaf in jax.tree_util.tree_leaves_with_path(opt_sh, is_leaf=masked):
    key = jax.tree_util.keystr(path)
    if masked(leaf):
        continue
    moment = re.search(r"\.(mu|nu)(\[.*)$", key)
    if moment:  # a moment mirrors the parameter at the same path
        assert leaf.spec == param_specs[moment.group(2)], (key, leaf.spec, param_specs[moment.group(2)])
        checked += 1
        sharded += leaf.spec != P()
    else:  # counts and other scalars
        assert leaf.spec == P(), (key, leaf.spec)
n_params = len(param_specs)
assert checked == 2 * n_params, (checked, n_params)
assert sharded > 0
print("CHECKED", checked, "SHARDED", sharded)
"""


@pytest.mark.slow
def test_adam_moments_take_their_parameters_shardings(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=th.train_env(8, None), capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "CHECKED" in out.stdout, out.stdout
