"""Compile a tiny model's sampling decode for a v5e:2x2 slice (fsdp=2 x tensor=2) from this
CPU host and print what the compiled program holds, as JSON: run by test_decode_attention.py
in a process of its own, since describing TPU chips loads libtpu.

argv: the model's decode_attention (auto | xla).
"""

import json
import os
import re
import sys

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax
import numpy as np
from hf_models import FAMILY_CONFIGS
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alignjax.core import sharding
from alignjax.generation import sampler
from alignjax.generation.logit_filters import SamplingConfig
from alignjax.models import attention, decoder
from alignjax.models.families import model_config_from_hf


def main(decode_attention: str) -> dict:
    devices = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2").devices
    mesh = Mesh(np.asarray(devices).reshape(1, 2, 1, 2), sharding.MESH_AXES)
    cfg = model_config_from_hf(
        dict(FAMILY_CONFIGS["llama3"], head_dim=128),
        dtype="bfloat16",
        scan_layers=True,
        decode_attention=decode_attention,
    )
    replicated = NamedSharding(mesh, P())
    policy = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
        jax.eval_shape(lambda: decoder.init_params(cfg, jax.random.key(0))),
    )
    settings = SamplingConfig(max_new_tokens=8, temperature=0.0, eos_ids=(2,), pad_id=0)
    layout = sampler.params_layout(policy, mesh)
    program = sampler.sampling_program(cfg, settings, mesh, layout, 4, 16, "threefry2x32")
    state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), program.state_shapes, program.state
    )
    keys = jax.ShapeDtypeStruct((1, 2), np.uint32, sharding=program.keys)
    with attention.target_platform("tpu"), jax.set_mesh(mesh):
        text = program.decode.lower(policy, state, keys).compile().as_text()
    # One chip's cache: 2 layers, 2 of the 4 rows, 1 of the 2 key/value heads, its slots, 128.
    cache = program.state_shapes.cache[0]
    local = f"bf16[{cache.shape[0]},2,{cache.shape[2] // 2},{cache.shape[3]},{cache.shape[4]}]"
    return {
        "cache": type(program.state_shapes.cache).__name__,
        "kernel": 'custom_call_target="tpu_custom_call"' in text,
        "cache_values": len(re.findall(rf"= {re.escape(local)}\S* ", text)),
        "cache_copies": len(re.findall(rf"= {re.escape(local)}\S* copy\(", text)),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
