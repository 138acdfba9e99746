"""LoRA adapters <-> PEFT's adapter directory, and adapters merged into the base weights.

A PEFT directory holds `adapter_config.json` (a `LoraConfig`) and `adapter_model.safetensors`
with one `lora_A` [r, in] and one `lora_B` [out, r] per targeted module, named as
`get_peft_model_state_dict` saves a causal LM: the adapter name ("default") dropped, the
module path under `base_model.model.` (PeftModelForCausalLM -> LoraModel -> the *ForCausalLM).
Ours keep the projection's head structure (`models/lora.py`): A [in..., r], B [r, out...];
flattening heads is row-major, as `hf.py` flattens kernels, so one reshape serves every
projection.

Only plain LoRA on the decoder's seven projections converts. Any other `LoraConfig` option
set to a non-default value (DoRA, biases, per-module ranks, fully trained modules, ...) is
refused by name: silently dropping one would change what the adapter computes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
import safetensors.numpy

from alignjax.core import paths
from alignjax.convert.hf import _LAYER_MODULES
from alignjax.core.fileio import atomic_write_bytes, atomic_write_json
from alignjax.models import decoder, lora
from alignjax.models.config import ModelConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."

# adapter_config.json keys whose value does not change what the saved adapter computes.
_NEUTRAL_KEYS = {
    "base_model_name_or_path",
    "revision",
    "peft_version",
    "inference_mode",
    "lora_dropout",  # off at inference
    "auto_mapping",
    "ensure_weight_tying",  # only about tied modules_to_save / trainable tokens, refused anyway
    "megatron_core",  # a module path, used only with megatron_config
    "qalora_group_size",  # used only with use_qalora
    "eva_config",  # how A was initialised
    "layers_pattern",  # used only with layers_to_transform
}
# init_lora_weights values that only choose A and B's starting point. PiSSA, OLoRA, LoftQ
# and CorDA also rewrite the base weights, so their adapters do not fit the original base;
# MiCA switches the layer to a variant with its own forward.
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")


class _Spec(NamedTuple):
    """One PEFT tensor and where it lives in our adapters tree."""

    peft_key: str
    path: tuple[str, str, str]  # layer key, projection, "a" | "b"
    layer: int | None  # index into the leading axis of scanned layers
    shape: tuple[int, ...]  # ours (one layer's slice when scanned)


def adapter_shapes(cfg: ModelConfig) -> dict[str, Any]:
    """The "lora" collection's shapes for `cfg` (its rank and targets), as the decoder declares them."""
    tokens = np.zeros((1, 1), np.int32)
    module = decoder.Decoder(cfg.replace(attention_backend="xla"))
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), tokens, tokens, tokens))
    if "lora" not in shapes:
        raise ValueError(f"cfg has no adapters (lora_rank={cfg.lora_rank}, lora_targets={cfg.lora_targets})")
    return nn.unbox(shapes["lora"])


def _specs(cfg: ModelConfig, shapes: dict[str, Any]) -> Iterator[_Spec]:
    for i in range(cfg.num_layers):
        layer_key = "layers" if cfg.scan_layers else f"layers_{i}"
        for projection, leaves in shapes[layer_key].items():
            for leaf, struct in leaves.items():
                shape = tuple(struct.shape[1:] if cfg.scan_layers else struct.shape)
                key = f"{_PREFIX}model.layers.{i}.{_LAYER_MODULES[projection]}.lora_{leaf.upper()}.weight"
                yield _Spec(key, (layer_key, projection, leaf), i if cfg.scan_layers else None, shape)


def _to_peft(leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "a":  # ours [in..., r], PEFT [r, in]
        return value.reshape(-1, value.shape[-1]).T
    return value.reshape(value.shape[0], -1).T  # ours [r, out...], PEFT [out, r]


def _key_paths(tree) -> set[str]:
    return {jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


def _check_adapters(adapters, cfg: ModelConfig) -> dict[str, Any]:
    shapes = adapter_shapes(cfg)
    extra, missing = (
        sorted(_key_paths(adapters) - _key_paths(shapes)),
        sorted(_key_paths(shapes) - _key_paths(adapters)),
    )
    if extra or missing:
        raise ValueError(
            f"adapters do not match cfg (lora_targets={cfg.lora_targets}, scan_layers={cfg.scan_layers}): "
            f"unexpected {extra[:8]}, missing {missing[:8]}"
        )
    for path, struct in jax.tree_util.tree_leaves_with_path(shapes):
        value = adapters
        for entry in path:
            value = value[entry.key]
        if tuple(np.shape(value)) != tuple(struct.shape):
            raise ValueError(
                f"adapters{jax.tree_util.keystr(path)} has shape {tuple(np.shape(value))}, cfg implies "
                f"{tuple(struct.shape)} (lora_rank={cfg.lora_rank})"
            )
    return shapes


def adapters_to_peft_tensors(adapters, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """PEFT's saved tensors (key -> [r, in] or [out, r]) for a scanned or unscanned adapters tree."""
    shapes = _check_adapters(adapters, cfg)
    tensors = {}
    for spec in _specs(cfg, shapes):
        layer_key, projection, leaf = spec.path
        value = np.asarray(adapters[layer_key][projection][leaf])
        if spec.layer is not None:
            value = value[spec.layer]
        tensors[spec.peft_key] = np.ascontiguousarray(_to_peft(leaf, value))
    return tensors


def adapters_from_peft_tensors(
    tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    cfg: ModelConfig,
    source: str = ADAPTER_WEIGHTS,
) -> dict[str, Any]:
    """Our adapters tree (NumPy, `cfg.param_dtype`) from PEFT's tensors; `cfg` sets rank and targets."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    param_dtype = np.dtype(cfg.param_dtype)
    shapes = adapter_shapes(cfg)
    adapters = jax.tree.map(lambda s: np.empty(s.shape, param_dtype), shapes)
    specs = {spec.peft_key: spec for spec in _specs(cfg, shapes)}
    seen = set()
    for key, array in items:
        spec = specs.get(key)
        if spec is None:
            raise ValueError(
                f"{source}: unexpected tensor {key!r} {tuple(np.shape(array))}; adapters convert only for "
                f"model.layers.*.{{{', '.join(_LAYER_MODULES[p] for p in cfg.lora_targets)}}} "
                "(lora_A / lora_B weights)"
            )
        if key in seen:
            raise ValueError(f"{source}: tensor {key!r} appears twice")
        seen.add(key)
        expected = tuple(_to_peft(spec.path[2], np.empty(spec.shape, np.int8)).shape)
        if tuple(np.shape(array)) != expected:
            raise ValueError(
                f"{source}: tensor {key!r} has shape {tuple(np.shape(array))}, but the model config and "
                f"rank {cfg.lora_rank} imply {expected}"
            )
        layer_key, projection, leaf = spec.path
        dest = adapters[layer_key][projection][leaf]
        # The inverse of _to_peft: transpose, then restore the head structure.
        converted = np.asarray(array).T.reshape(spec.shape).astype(param_dtype)
        if spec.layer is None:
            dest[...] = converted
        else:
            dest[spec.layer] = converted
    missing = sorted(set(specs) - seen)
    if missing:
        raise ValueError(f"{source}: missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    return adapters


def _is_default(value: Any) -> bool:
    return value is None or value is False or value == {} or value == [] or value == ""


def _target_projections(target_modules: Any, source: str) -> tuple[str, ...]:
    """Projection names (decoder order) for PEFT's `target_modules`."""
    where = f"{source}: target_modules={target_modules!r}"
    if target_modules == "all-linear":  # PEFT: every linear layer but the output head
        return tuple(lora.HF_TO_PROJECTION.values())
    if isinstance(target_modules, str):
        raise ValueError(
            f"{where}: a regular expression is not supported; list module names, any of "
            f"{list(lora.HF_TO_PROJECTION)}"
        )
    if not target_modules:
        raise ValueError(f"{where}: no target modules")
    found, unsupported = set(), []
    for entry in target_modules:
        projection = lora.HF_TO_PROJECTION.get(str(entry).rsplit(".", 1)[-1])
        # PEFT matches an entry as a suffix of the module path: "q_proj", "self_attn.q_proj".
        module = _LAYER_MODULES.get(projection, "")
        if projection is None or not (module == entry or module.endswith("." + entry)):
            unsupported.append(entry)
        else:
            found.add(projection)
    if unsupported:
        raise ValueError(
            f"{where}: {unsupported} are not supported adapter targets; LoRA converts only on "
            f"{list(lora.HF_TO_PROJECTION)} (not embed_tokens, lm_head or norms)"
        )
    return tuple(p for p in lora.HF_TO_PROJECTION.values() if p in found)


def lora_settings_from_peft(
    adapter_config: Mapping[str, Any], source: str = ADAPTER_CONFIG
) -> dict[str, Any]:
    """dict(rank, alpha, rslora, targets (projection names)) from an adapter_config.json dict.

    Raises ValueError naming the key for anything this import cannot represent exactly.
    """

    def refuse(key: str, why: str):
        raise ValueError(f"{source}: {key}={adapter_config.get(key)!r}: {why}")

    if adapter_config.get("peft_type") != "LORA":
        refuse("peft_type", "only LoRA adapters are supported")
    if adapter_config.get("task_type") not in ("CAUSAL_LM", None):
        refuse("task_type", "only causal-LM adapters are supported")
    if adapter_config.get("bias", "none") != "none":
        refuse("bias", "trained biases are not supported; train with bias='none'")
    if adapter_config.get("init_lora_weights", True) not in _PLAIN_INITS:
        refuse(
            "init_lora_weights",
            "this initialisation rewrites the base weights or changes the layer's forward, so the "
            "adapter is not plain LoRA on the original base; PiSSA / OLoRA / CorDA adapters convert once "
            "saved with PEFT's path_initial_model_for_weight_conversion",
        )
    rank, alpha = adapter_config.get("r"), adapter_config.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        refuse("r", "must be a positive integer")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        refuse("lora_alpha", "must be a number")
    handled = {
        "peft_type",
        "task_type",
        "bias",
        "init_lora_weights",
        "r",
        "lora_alpha",
        "use_rslora",
        "target_modules",
    }
    for key, value in adapter_config.items():
        if key not in handled and key not in _NEUTRAL_KEYS and not _is_default(value):
            why = {
                "use_dora": "DoRA (weight-decomposed LoRA) is not supported",
                "fan_in_fan_out": "Conv1D-style (transposed) weights are not supported",
                "modules_to_save": "fully trained modules beside the adapters are not supported",
                "rank_pattern": "per-module ranks are not supported; one r for every target",
                "alpha_pattern": "per-module alphas are not supported; one lora_alpha for every target",
                "layers_to_transform": "adapters on some layers only are not supported",
                "exclude_modules": "excluding modules is not supported; list target_modules instead",
                "lora_bias": "a bias on lora_B is not supported",
            }.get(key, "this LoraConfig option is not supported by alignjax's plain-LoRA conversion")
            refuse(key, why)
    return dict(
        rank=rank,
        alpha=alpha,
        rslora=bool(adapter_config.get("use_rslora", False)),
        dropout=float(adapter_config.get("lora_dropout") or 0.0),
        targets=_target_projections(adapter_config.get("target_modules"), source),
    )


def read_peft_adapter(adapter_dir: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(adapter_config dict, PEFT tensors) from a PEFT adapter directory, its config checked."""
    config_path = paths.join(adapter_dir, ADAPTER_CONFIG)
    weights_path = paths.join(adapter_dir, ADAPTER_WEIGHTS)
    if not paths.exists(config_path):
        raise FileNotFoundError(f"{adapter_dir}: no {ADAPTER_CONFIG}; not a PEFT adapter directory")
    with paths.open(config_path) as f:
        adapter_config = json.load(f)
    lora_settings_from_peft(adapter_config, source=config_path)
    if not paths.exists(weights_path):
        raise FileNotFoundError(
            f"{adapter_dir}: no {ADAPTER_WEIGHTS}; only safetensors adapters are read (re-save with "
            "PEFT's save_pretrained(..., safe_serialization=True))"
        )
    with paths.open(weights_path, "rb") as f:  # adapters are small: read whole, local or remote
        return adapter_config, safetensors.numpy.load(f.read())


def write_peft_adapter(
    out_dir: str,
    adapters,
    cfg: ModelConfig,
    *,
    rank: int,
    alpha: float,
    rslora: bool,
    target_modules: Iterable[str] | str,
    base_model_name_or_path: str | None,
    dropout: float = 0.0,
    revision: str | None = None,
) -> list[str]:
    """Write a directory `peft.PeftModel.from_pretrained(base, out_dir)` loads; returns the file names.

    rank, alpha, rslora and target_modules (Hugging Face names) must be what `cfg` was built
    from: they are written to the config, and PEFT recomputes the scale from them. `revision`:
    the Hub commit of the base, when `base_model_name_or_path` is a Hub name.
    """
    target_modules = target_modules if isinstance(target_modules, str) else list(target_modules)
    targets = _target_projections(target_modules, "target_modules")
    if rank != cfg.lora_rank or set(targets) != set(cfg.lora_targets):
        raise ValueError(
            f"rank={rank}, target_modules={target_modules} disagree with the model config "
            f"(lora_rank={cfg.lora_rank}, lora_targets={cfg.lora_targets})"
        )
    if not math.isclose(lora.scale(alpha, rank, rslora), cfg.lora_scale, rel_tol=1e-6):
        raise ValueError(
            f"alpha={alpha}, rank={rank}, rslora={rslora} give scale {lora.scale(alpha, rank, rslora)}, "
            f"but the adapters were trained with lora_scale={cfg.lora_scale}"
        )
    tensors = adapters_to_peft_tensors(adapters, cfg)
    # The fields LoraConfig.save_pretrained writes that matter here; PEFT fills the rest with defaults.
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": revision,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "use_rslora": rslora,
        "target_modules": target_modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "init_lora_weights": True,
        "inference_mode": True,
    }
    # Weights first: a directory with a config is a complete adapter.
    atomic_write_bytes(
        paths.join(out_dir, ADAPTER_WEIGHTS), safetensors.numpy.save(tensors, metadata={"format": "pt"})
    )
    atomic_write_json(paths.join(out_dir, ADAPTER_CONFIG), adapter_config, indent=2)
    return [ADAPTER_WEIGHTS, ADAPTER_CONFIG]


def merge_adapters(base_params, adapters, cfg: ModelConfig) -> dict[str, Any]:
    """The base tree with every targeted kernel W replaced by W + scale * A B (NumPy, W's dtype).

    The product is formed in float32 at least, then rounded once to the kernel's dtype.
    """
    _check_adapters(adapters, cfg)
    merged = jax.tree.map(np.asarray, lora.base_of(base_params))
    lead = 1 if cfg.scan_layers else 0
    for layer_key, projections in adapters.items():
        for projection, ab in projections.items():
            kernel = merged[layer_key][projection]["kernel"]
            compute = np.promote_types(kernel.dtype, np.float32)
            a = np.asarray(ab["a"], compute)
            b = np.asarray(ab["b"], compute)
            r = a.shape[-1]
            delta = np.matmul(a.reshape(a.shape[:lead] + (-1, r)), b.reshape(b.shape[:lead] + (r, -1)))
            updated = kernel.astype(compute) + compute.type(cfg.lora_scale) * delta.reshape(kernel.shape)
            merged[layer_key][projection]["kernel"] = updated.astype(kernel.dtype)
    return merged


def adapters_from_peft_dir(adapter_dir: str, cfg: ModelConfig) -> dict[str, Any]:
    """A PEFT adapter directory's adapters for `cfg` (whose LoRA settings it must match)."""
    _, tensors = read_peft_adapter(adapter_dir)
    return adapters_from_peft_tensors(tensors, cfg, source=paths.join(adapter_dir, ADAPTER_WEIGHTS))
