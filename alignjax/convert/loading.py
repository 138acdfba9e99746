"""The `model:` config section and what it builds: config, parameters, tokenizer."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from alignjax.models import decoder
from alignjax.models.config import ModelConfig
from alignjax.models.families import model_config_from_hf
from alignjax.models.presets import preset_config


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Either `hf_path` (a local Hugging Face directory) or `preset` (random init)."""

    hf_path: str | None = None
    preset: str | None = None
    # Architecture overrides for a preset, e.g. {num_hidden_layers: 2}; config.json keys.
    preset_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention_backend: str = "xla"
    # The frozen reference's parameter dtype (it gets no gradient); None: the compute dtype.
    reference_dtype: str | None = None

    @property
    def effective_reference_dtype(self) -> str:
        return self.reference_dtype or self.dtype

    def execution(self) -> dict[str, Any]:
        return dict(
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            scan_layers=self.scan_layers,
            remat_policy=self.remat_policy,
            attention_backend=self.attention_backend,
        )


@dataclasses.dataclass
class LoadedModel:
    cfg: ModelConfig
    params: Any
    meta: dict[str, Any]  # what a checkpoint stores to describe the model (see convert/)
    tokenizer_dir: str | None


def load_model(section: ModelSection, rng: jax.Array, vocab_size: int | None = None) -> LoadedModel:
    """Import `hf_path`, or randomly initialise `preset` (vocab sized to the tokenizer)."""
    if (section.hf_path is None) == (section.preset is None):
        raise ValueError("set exactly one of model.hf_path and model.preset")
    if section.hf_path is not None:
        from alignjax.convert.api import load_hf_model

        cfg, params, meta = load_hf_model(section.hf_path, **section.execution())
        return LoadedModel(cfg, params, meta, section.hf_path)
    overrides = dict(section.preset_overrides)
    if vocab_size is not None:
        overrides.setdefault("vocab_size", vocab_size)
    hf_config = preset_config(section.preset, **overrides)
    cfg = model_config_from_hf(hf_config, **section.execution())
    params = jax.tree.map(np.asarray, decoder.init_params(cfg, rng))
    meta = {
        "hf_config": hf_config,
        "hf_tensor_dtypes": {},
        "scan_layers": cfg.scan_layers,
        "param_dtype": cfg.param_dtype,
        "generation_config": None,
    }
    return LoadedModel(cfg, params, meta, None)
