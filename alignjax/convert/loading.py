"""The `model:` config section and what it builds: config, parameters, tokenizer."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from alignjax.core import hub
from alignjax.core.hub import HubModel
from alignjax.models import decoder
from alignjax.models.config import ModelConfig
from alignjax.models.families import model_config_from_hf
from alignjax.models.lora import DEFAULT_TARGETS, HF_TO_PROJECTION
from alignjax.models.lora import scale as lora_scale
from alignjax.models.presets import preset_config
from alignjax.models.quantize import KINDS as QUANT_KINDS


@dataclasses.dataclass(frozen=True)
class LoraSection:
    """`model.lora`: low-rank adapters on the decoder (PEFT's LoraConfig names and defaults).

    Only the adapters train; the base is frozen in model.reference_dtype (its projection
    kernels quantized when `quantize_base` is nf4 or int8: QLoRA) and, with adapters off,
    is the reference. `dropout`: PEFT's lora_dropout on the adapters' input, in training
    steps only. `from_peft`: a PEFT adapter to start from, a directory or a Hub name at
    `from_peft_revision` (its rank, alpha, dropout and targets win; the reference is that
    starting adapter, as in TRL)."""

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    # Hugging Face module names (PEFT's target_modules).
    targets: tuple[str, ...] = DEFAULT_TARGETS
    use_rslora: bool = False
    quantize_base: str | None = None
    from_peft: str | None = None
    from_peft_revision: str | None = None

    def __post_init__(self):
        if self.from_peft is not None:
            self._take_peft_settings()
        unknown = [t for t in self.targets if t not in HF_TO_PROJECTION]
        if unknown:
            raise ValueError(
                f"model.lora.targets: {unknown} are not adapter targets here; use any of {list(HF_TO_PROJECTION)}"
            )
        if self.rank < 1:
            raise ValueError(f"model.lora.rank={self.rank} must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora.dropout={self.dropout} must be in [0, 1)")
        if self.quantize_base not in (None, *QUANT_KINDS):
            raise ValueError(
                f"model.lora.quantize_base={self.quantize_base!r}: choose one of {list(QUANT_KINDS)} "
                "(QLoRA), or null for a base held in model.reference_dtype"
            )

    def _take_peft_settings(self) -> None:
        """The adapter's own rank, alpha, rsLoRA and targets: it was trained with them."""
        import json

        from alignjax.core import paths
        from alignjax.convert.peft import ADAPTER_CONFIG, lora_settings_from_peft

        path = paths.join(self.peft_dir(), ADAPTER_CONFIG)
        if not paths.exists(path):
            raise ValueError(
                f"model.lora.from_peft={self.from_peft}: no {ADAPTER_CONFIG} there (a PEFT adapter directory)"
            )
        with paths.open(path) as f:
            settings = lora_settings_from_peft(json.load(f), source=path)
        by_projection = {v: k for k, v in HF_TO_PROJECTION.items()}
        object.__setattr__(self, "rank", settings["rank"])
        object.__setattr__(self, "alpha", float(settings["alpha"]))
        object.__setattr__(self, "use_rslora", settings["rslora"])
        object.__setattr__(self, "dropout", settings["dropout"])
        object.__setattr__(self, "targets", tuple(by_projection[t] for t in settings["targets"]))

    def peft_dir(self) -> str:
        """The starting adapter's directory: `from_peft`, or its snapshot when a Hub name."""
        return hub.model_dir(self.from_peft, revision=self.from_peft_revision, key="model.lora.from_peft")

    def execution(self) -> dict[str, Any]:
        return {
            "lora_rank": self.rank,
            "lora_targets": tuple(HF_TO_PROJECTION[t] for t in self.targets),
            "lora_scale": lora_scale(self.alpha, self.rank, self.use_rslora),
            "lora_dropout": float(self.dropout),
        }


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Either `hf_path` (a Hugging Face directory, local or `gs://`, or a Hub name at
    `revision`: a branch, tag or commit SHA) or `preset` (random init)."""

    hf_path: str | None = None
    revision: str | None = None
    preset: str | None = None
    # Architecture overrides for a preset, e.g. {num_hidden_layers: 2}; config.json keys.
    preset_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention_backend: str = "xla"
    # Generation's attention over the KV cache: auto | xla | paged | paged_interpret.
    decode_attention: str = "auto"
    # What scores the labels' per-token log-probs: auto | chunked | tokamax | tokamax_interpret.
    logps_kernel: str = "auto"
    # Attention across `mesh.sequence` shards: all_gather | ring; zig-zag rows to balance them.
    sequence_parallel: str = "all_gather"
    sequence_load_balance: bool = True
    # The frozen reference's parameter dtype (it gets no gradient); None: the compute dtype.
    reference_dtype: str | None = None
    # Low-rank adapters (LoRA); None: full fine-tuning.
    lora: LoraSection | None = None

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
            decode_attention=self.decode_attention,
            logps_kernel=self.logps_kernel,
            sequence_parallel=self.sequence_parallel,
            sequence_load_balance=self.sequence_load_balance,
            **(self.lora.execution() if self.lora is not None else {}),
        )


@dataclasses.dataclass
class LoadedModel:
    cfg: ModelConfig
    params: Any
    meta: dict[str, Any]  # what a checkpoint stores to describe the model (see convert/)
    tokenizer_dir: str | None
    # Trainable parts the checkpoint holds beside the decoder (a classifier's score head).
    parts: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The repository and commit when `hf_path` is a Hub name.
    hub: HubModel | None = None


def load_model(section: ModelSection, rng: jax.Array, vocab_size: int | None = None) -> LoadedModel:
    """Import `hf_path`, or randomly initialise `preset` (vocab sized to the tokenizer)."""
    if (section.hf_path is None) == (section.preset is None):
        raise ValueError("set exactly one of model.hf_path and model.preset")
    if section.revision is not None and section.hf_path is None:
        raise ValueError(
            f"model.revision={section.revision} names a revision of model.hf_path, which is unset"
        )
    if section.hf_path is not None:
        from alignjax.convert.api import load_hf_model
        from alignjax.convert.sequence_classification import is_sequence_classifier, read_score_head

        resolved = hub.resolve(section.hf_path, revision=section.revision, key="model.hf_path")
        model_dir = resolved.local_dir if resolved is not None else section.hf_path
        cfg, params, meta = load_hf_model(model_dir, **section.execution())
        parts = read_score_head(model_dir, cfg) if is_sequence_classifier(meta["hf_config"]) else {}
        return LoadedModel(cfg, params, meta, model_dir, parts, resolved)
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
