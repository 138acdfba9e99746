"""Hugging Face `config.json` -> `ModelConfig`, one table row per supported family.

transformers parses the JSON first, so legacy keys (`rope_theta`, `rope_scaling`,
`sliding_window_pattern`, ...) are normalised exactly the way the reference
implementation reads them; the table below then says what differs between families.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from alignjax.core import paths
from alignjax.models.config import FULL, SLIDING, ModelConfig, RopeConfig


@dataclasses.dataclass(frozen=True)
class Family:
    """What a family fixes regardless of its config.json."""

    hf_class: str
    qkv_bias: str | bool  # a config attribute name, or a constant
    o_bias: str | bool
    qk_norm: bool = False
    gemma: bool = False  # (1+w) norms, embedding scaling, GeGLU
    sandwich_norms: bool = False
    all_layers_slide: bool = False  # Mistral applies sliding_window to every layer


FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaForCausalLM", "attention_bias", "attention_bias"),
    "mistral": Family("MistralForCausalLM", False, False, all_layers_slide=True),
    "qwen2": Family("Qwen2ForCausalLM", True, False),
    "qwen3": Family("Qwen3ForCausalLM", "attention_bias", "attention_bias", qk_norm=True),
    "gemma": Family("GemmaForCausalLM", "attention_bias", "attention_bias", gemma=True),
    "gemma2": Family(
        "Gemma2ForCausalLM", "attention_bias", "attention_bias", gemma=True, sandwich_norms=True
    ),
    "gemma3_text": Family(
        "Gemma3ForCausalLM",
        "attention_bias",
        "attention_bias",
        qk_norm=True,
        gemma=True,
        sandwich_norms=True,
    ),
}

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "gelu_new": "gelu_tanh"}


class UnsupportedModelError(ValueError):
    pass


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)


def load_hf_config_dict(hf_dir: str) -> dict[str, Any]:
    path = paths.join(hf_dir, "config.json")
    if not paths.exists(path):
        raise FileNotFoundError(f"{path} not found: a Hugging Face model directory needs config.json")
    with paths.open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def _parse_with_transformers(config_dict: dict[str, Any]):
    import transformers

    model_type = config_dict.get("model_type")
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} (architectures={config_dict.get('architectures')}) is not "
            f"supported; supported model types: {', '.join(supported_model_types())}"
        )
    fields = {k: v for k, v in config_dict.items() if k not in ("model_type", "transformers_version")}
    return transformers.AutoConfig.for_model(model_type, **fields)


def _rope(params: dict[str, Any], where: str) -> RopeConfig:
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"{where}: rope_type {rope_type!r} is not supported; supported: {SUPPORTED_ROPE_TYPES}"
        )
    return RopeConfig(
        theta=float(params["rope_theta"]),
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )


def _flag(hf, value: str | bool) -> bool:
    return bool(getattr(hf, value, False)) if isinstance(value, str) else value


def model_config_from_hf(config_dict: dict[str, Any], **execution: Any) -> ModelConfig:
    """Build the decoder config from a parsed config.json; `execution` sets dtype, scan, ..."""
    family = FAMILIES.get(config_dict.get("model_type"))
    hf = _parse_with_transformers(config_dict)
    num_layers = hf.num_hidden_layers
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads

    sliding_window = getattr(hf, "sliding_window", None)
    if family.all_layers_slide:
        layer_types = (SLIDING if sliding_window else FULL,) * num_layers
    else:
        layer_types = tuple(getattr(hf, "layer_types", None) or (FULL,) * num_layers)
    unknown = set(layer_types) - {FULL, SLIDING}
    if unknown:
        raise UnsupportedModelError(f"config.json layer_types has unsupported entries {sorted(unknown)}")

    rope_params = dict(hf.rope_parameters or {})
    if FULL in rope_params or SLIDING in rope_params:
        rope = tuple((t, _rope(rope_params[t], f"rope_parameters[{t!r}]")) for t in sorted(set(layer_types)))
    else:
        rope = tuple((t, _rope(rope_params, "rope_parameters")) for t in sorted(set(layer_types)))

    act_name = getattr(hf, "hidden_activation", None) or getattr(hf, "hidden_act", "silu")
    if act_name not in _ACTIVATIONS:
        raise UnsupportedModelError(f"config.json hidden_act {act_name!r} is not supported")
    query_pre_attn_scalar = getattr(hf, "query_pre_attn_scalar", None)
    eos = hf.eos_token_id
    cfg = ModelConfig(
        model_type=config_dict["model_type"],
        vocab_size=hf.vocab_size,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_layers=num_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        head_dim=head_dim,
        norm_eps=float(hf.rms_norm_eps),
        norm_plus_one=family.gemma,
        activation=_ACTIVATIONS[act_name],
        qkv_bias=_flag(hf, family.qkv_bias),
        o_bias=_flag(hf, family.o_bias),
        mlp_bias=bool(getattr(hf, "mlp_bias", False)),
        qk_norm=family.qk_norm,
        sandwich_norms=family.sandwich_norms,
        scale_embeddings=family.gemma,
        query_scale=float(query_pre_attn_scalar) ** -0.5 if query_pre_attn_scalar else 0.0,
        attn_logit_softcap=getattr(hf, "attn_logit_softcapping", None),
        final_logit_softcap=getattr(hf, "final_logit_softcapping", None),
        tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        layer_types=layer_types,
        sliding_window=sliding_window if SLIDING in layer_types else None,
        rope=rope,
        bos_token_id=hf.bos_token_id,
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        pad_token_id=getattr(hf, "pad_token_id", None),
    )
    return cfg.replace(**execution) if execution else cfg


def hf_class_name(model_type: str) -> str:
    return FAMILIES[model_type].hf_class
