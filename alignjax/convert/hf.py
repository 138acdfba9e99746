"""Hugging Face tensors <-> alignjax parameters, both ways, one tensor at a time.

The name table is derived from the parameter tree the decoder itself declares, so a new
optional parameter (a bias, a norm) needs one line here and cannot be silently skipped:
import fails on any missing or unexpected tensor, naming it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator

import flax.linen as nn
import jax
import numpy as np

from alignjax.models import decoder
from alignjax.models.config import ModelConfig

# Our per-layer module name -> the Hugging Face module it comes from.
_LAYER_MODULES = {
    "input_norm": "input_layernorm",
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "q_norm": "self_attn.q_norm",
    "k_norm": "self_attn.k_norm",
    "post_attn_norm": "post_attention_layernorm",
    "post_mlp_norm": "post_feedforward_layernorm",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


def _pre_mlp_norm(cfg: ModelConfig) -> str:
    # Llama calls its pre-MLP norm "post_attention_layernorm"; Gemma 2/3 use that name for
    # the norm after attention and call the pre-MLP one "pre_feedforward_layernorm".
    return "pre_feedforward_layernorm" if cfg.sandwich_norms else "post_attention_layernorm"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One Hugging Face tensor and where it lives in our parameters."""

    hf_name: str
    path: tuple[str, ...]  # keys into our params
    layer: int | None  # index into the leading axis of scanned layers
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    shape: tuple[int, ...]  # our shape (one layer's slice when scanned)


def _transforms(module: str, leaf: str, shape: tuple[int, ...]):
    """Kernels are stored [in..., out...] here and [out, in] (flattened heads) in HF."""
    if leaf == "kernel":
        if module in ("q", "k", "v"):  # ours [D, H, Dh], HF [H*Dh, D]
            return (lambda w: w.T.reshape(shape)), (lambda w: w.reshape(shape[0], -1).T)
        if module == "o":  # ours [H, Dh, D], HF [D, H*Dh]
            return (lambda w: w.T.reshape(shape)), (lambda w: w.reshape(-1, shape[-1]).T)
        return (lambda w: w.T), (lambda w: w.T)
    if leaf == "bias" and module in ("q", "k", "v"):  # ours [H, Dh], HF [H*Dh]
        return (lambda w: w.reshape(shape)), (lambda w: w.reshape(-1))
    return (lambda w: w), (lambda w: w)


def param_shapes(cfg: ModelConfig) -> dict[str, Any]:
    tokens = np.zeros((1, 1), np.int32)
    shapes = jax.eval_shape(lambda: decoder.Decoder(cfg).init(jax.random.key(0), tokens, tokens, tokens))
    return nn.unbox(shapes["params"])


def tensor_specs(cfg: ModelConfig) -> Iterator[TensorSpec]:
    shapes = param_shapes(cfg)
    for top, hf_name in (("embedding", "model.embed_tokens.weight"), ("lm_head", "lm_head.weight")):
        if top in shapes:
            shape = tuple(shapes[top].shape)
            flip = top == "lm_head"  # ours [D, V], HF [V, D]
            yield TensorSpec(
                hf_name,
                (top,),
                None,
                (lambda w: w.T) if flip else (lambda w: w),
                (lambda w: w.T) if flip else (lambda w: w),
                shape,
            )
    yield TensorSpec(
        "model.norm.weight",
        ("final_norm", "scale"),
        None,
        lambda w: w,
        lambda w: w,
        tuple(shapes["final_norm"]["scale"].shape),
    )
    modules = dict(_LAYER_MODULES, pre_mlp_norm=_pre_mlp_norm(cfg))
    for i in range(cfg.num_layers):
        layer_key = "layers" if cfg.scan_layers else f"layers_{i}"
        for module, leaves in shapes[layer_key].items():
            for leaf, struct in leaves.items():
                shape = tuple(struct.shape[1:] if cfg.scan_layers else struct.shape)
                to_ours, to_hf = _transforms(module, leaf, shape)
                hf_leaf = "weight" if leaf in ("kernel", "scale") else leaf
                yield TensorSpec(
                    f"model.layers.{i}.{modules[module]}.{hf_leaf}",
                    (layer_key, module, leaf),
                    i if cfg.scan_layers else None,
                    to_ours,
                    to_hf,
                    shape,
                )


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def params_from_tensors(
    cfg: ModelConfig, tensors: Iterable[tuple[str, np.ndarray]], source: str = "checkpoint"
) -> tuple[dict[str, Any], dict[str, str]]:
    """Fill a NumPy parameter tree from (name, array) pairs, converting each as it arrives.

    Returns the params and each tensor's original dtype name, so export can restore it.
    """
    from alignjax.convert.safetensors_io import dtype_name

    param_dtype = np.dtype(cfg.param_dtype)
    params = jax.tree.map(lambda s: np.empty(s.shape, param_dtype), param_shapes(cfg))
    specs = {spec.hf_name: spec for spec in tensor_specs(cfg)}
    dtypes: dict[str, str] = {}
    for name, array in tensors:
        spec = specs.get(name)
        if spec is None:
            if cfg.tie_embeddings and name == "lm_head.weight":
                continue  # some tied checkpoints also save the (identical) head
            raise ValueError(
                f"{source}: unexpected tensor {name!r} {tuple(array.shape)} for model_type "
                f"{cfg.model_type!r}; the checkpoint and config.json disagree"
            )
        if name in dtypes:
            raise ValueError(f"{source}: tensor {name!r} appears twice")
        converted = spec.to_ours(np.asarray(array))
        if tuple(converted.shape) != spec.shape:
            hf_shape = tuple(spec.to_hf(np.empty(spec.shape, np.int8)).shape)
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(array.shape)}, but config.json implies "
                f"{hf_shape}"
            )
        dest = _get(params, spec.path)
        if spec.layer is None:
            dest[...] = converted.astype(param_dtype)
        else:
            dest[spec.layer] = converted.astype(param_dtype)
        dtypes[name] = dtype_name(array.dtype)
    missing = sorted(set(specs) - set(dtypes))
    if missing:
        raise ValueError(f"{source}: missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    return params, dtypes


def tensors_from_params(
    cfg: ModelConfig, params: dict[str, Any], dtypes: dict[str, str], default_dtype: str
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (HF name, array) in HF layout and each tensor's original dtype."""
    from alignjax.convert.safetensors_io import dtype_from_name

    fallback = np.dtype(default_dtype)
    for spec in tensor_specs(cfg):
        value = np.asarray(_get(params, spec.path))
        if spec.layer is not None:
            value = value[spec.layer]
        dtype = dtype_from_name(dtypes[spec.hf_name]) if spec.hf_name in dtypes else fallback
        yield spec.hf_name, spec.to_hf(value).astype(dtype)
