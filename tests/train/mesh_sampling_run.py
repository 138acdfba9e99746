"""One process of a sampling program on a mesh, and what one device gives for its rows.

    python mesh_sampling_run.py OUT_DIR DATAxFSDPxTENSOR ...

Started once per process (ALIGNJAX_COORDINATOR and friends set, as `alignjax train` is) or
alone with several simulated devices. A mesh smaller than the devices takes the same number
of devices from each process. Every process builds the same random tiny model on
the mesh (sharded as training shards it), samples its own prompts (a different number of
rows and a different prompt bucket on each process) greedily and at temperature 1 with
the keys of `alignjax.online.rollout`, then samples the same prompts with its own key on
one local device from a host copy of the parameters; then samples again with process 0
holding no prompts (it takes part with padding rows only). It writes all of them to
OUT_DIR/process<i>_<mesh>.json; the test compares them.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from alignjax.core import sharding
from alignjax.generation import process_rows, sampler
from alignjax.generation.logit_filters import SamplingConfig
from alignjax.models import decoder
from alignjax.models.families import model_config_from_hf
from alignjax.models.presets import preset_config

TINY = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}
# An eighth of the vocabulary stops a row, so rows stop at different steps.
STOP = tuple(range(12, 76))
SETTINGS = {
    "greedy": SamplingConfig(max_new_tokens=10, temperature=0.0, eos_ids=STOP, pad_id=0),
    "sampled": SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.95, eos_ids=STOP, pad_id=0),
}


def _prompts(process: int) -> list[list[int]]:
    """Process 0: 3 prompts up to 20 tokens (bucket 32); the others: 5 up to 12 (bucket 16)."""
    rng = np.random.default_rng(100 + process)
    lengths = (5, 20, 9) if process == 0 else (4, 12, 1, 7, 3)
    return [rng.integers(12, 500, size=n).tolist() for n in lengths]


def _one_device(params, cfg, settings, prompts, key) -> list[list[int]]:
    """The sampler's two halves on this process's first device, for its prompts alone."""

    def fn(params, tokens_BxLp, lengths_B, keys_P):
        state = sampler.prefill(params, cfg, settings, tokens_BxLp, lengths_B, keys_P)
        return sampler.decode(params, cfg, settings, state, keys_P)

    tokens_BxLp, lengths_B = sampler.left_pad(prompts, settings.pad_id)
    args = jax.device_put((tokens_BxLp, lengths_B, key[None]), jax.local_devices()[0])
    out = jax.jit(fn)(params, *args)
    tokens_BxT, lengths = np.asarray(out.tokens_BxT), np.asarray(out.lengths_B)
    return [tokens_BxT[b, : lengths[b]].tolist() for b in range(len(prompts))]


def _mesh(name: str):
    data, fsdp, tensor = (int(n) for n in name.split("x"))
    per_process = data * fsdp * tensor // jax.process_count()
    devices = [d for q in range(jax.process_count()) for d in jax.devices() if d.process_index == q]
    devices = [d for i, d in enumerate(devices) if i % jax.local_device_count() < per_process]
    return sharding.make_mesh(sharding.MeshSection(data=data, fsdp=fsdp, tensor=tensor), devices)


def sample(cfg, name: str, out_dir: str) -> None:
    mesh = _mesh(name)
    shapes = jax.eval_shape(lambda: decoder.init_params(cfg, jax.random.key(0)))
    shardings = sharding.tree_shardings(decoder.logical_axes(cfg), shapes, mesh)
    params = jax.jit(lambda: decoder.init_params(cfg, jax.random.key(0)), out_shardings=shardings)()
    host = jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), params)
    one_device = jax.device_put(host, jax.local_devices()[0])

    count, me = jax.process_count(), jax.process_index()
    prompts = _prompts(me)
    out = {"process": me, "count": count, "devices": jax.device_count()}
    for kind, settings in SETTINGS.items():
        keys_P = jnp.stack([jax.random.fold_in(jax.random.key(5), 3 * count + q) for q in range(count)])
        out[kind] = sampler.sample_rows(params, cfg, settings, mesh, prompts, keys_P)
        out[f"{kind}_one_device"] = _one_device(one_device, cfg, settings, prompts, keys_P[me])
    # Process 0 has no prompts this time: it only takes part in the others' program.
    keys_P = jnp.stack([jax.random.fold_in(jax.random.key(5), 3 * count + q) for q in range(count)])
    out["joined"] = sampler.sample_rows(
        params, cfg, SETTINGS["sampled"], mesh, [] if me == 0 else prompts, keys_P
    )
    # The program those calls ran, looked up again: its KV cache layout.
    rows, lp = process_rows.agree_block(len(prompts), sampler.left_pad(prompts, 0)[0].shape[1], mesh)
    layout = sampler.params_layout(params, mesh)
    program = sampler.sampling_program(
        cfg, SETTINGS["greedy"], mesh, layout, rows * count, lp, "threefry2x32"
    )
    out["rows"], out["cache_spec"] = rows, str(tuple(program.state.cache.k_NxBxSxKxDh.spec))
    with open(os.path.join(out_dir, f"process{me}_{name}.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    sharding.maybe_initialize_distributed()
    tiny = model_config_from_hf(preset_config("tiny", **TINY))
    for mesh_name in sys.argv[2:]:
        sample(tiny, mesh_name, sys.argv[1])
