"""Sample on a mesh of 4 simulated CPU devices (fsdp=2 x tensor=2) through the paged kernel
(Pallas interpreter, once per shard) and through the XLA path; print both as JSON. Run by
test_decode_attention.py under `run_on_8_devices`."""

import json

import jax
import numpy as np
from hf_models import FAMILY_CONFIGS
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alignjax.core import sharding
from alignjax.generation import sampler
from alignjax.generation.logit_filters import SamplingConfig
from alignjax.models import decoder
from alignjax.models.families import model_config_from_hf


def main() -> dict:
    cfg = model_config_from_hf(
        dict(FAMILY_CONFIGS["llama3"], head_dim=128), dtype="bfloat16", scan_layers=True
    )
    mesh = Mesh(np.asarray(jax.devices()[:4]).reshape(1, 2, 1, 2), sharding.MESH_AXES)
    params = jax.device_put(decoder.init_params(cfg, jax.random.key(0)), NamedSharding(mesh, P()))
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 96, size=n).tolist() for n in (3, 9, 13, 5)]
    settings = SamplingConfig(max_new_tokens=8, temperature=1.0, eos_ids=(2,), pad_id=0)
    return {
        choice: sampler.sample_rows(
            params, cfg.replace(decode_attention=choice), settings, mesh, prompts, jax.random.key(0)[None]
        )
        for choice in ("xla", "paged_interpret")
    }


if __name__ == "__main__":
    print(json.dumps(main()))
