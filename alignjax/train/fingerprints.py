"""Fingerprints of a model and a data set: what a precomputed reference table is valid for.

model: the HF config.json, the compute and parameter dtypes, and a digest of the
       parameter values the stage starts from;
data:  each source's content in pipeline order (sha256; above 64 MiB, the size and
       64 evenly spaced blocks), the tokenizer, and every data.* key that changes
       the tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

from alignjax.core import paths, sharding
from alignjax.data.config import DataConfig
from alignjax.data.sources import open_sources
from alignjax.core.fileio import file_identity

# data.* keys that change the tokens a record becomes. The others change batching or
# order only, which the summed log-probs do not depend on beyond float rounding.
TOKENISATION_KEYS = (
    "record_type",
    "max_length",
    "max_prompt_length",
    "truncation_mode",
    "templates",
    "chat_template",
    "n_user_tokens",
    "user_slot_token_id",
    "condition_field",
)


def _bits_u32(x):
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[jnp.dtype(x.dtype).itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _leaf_sums(x):
    """Two sums of the value bits times odd, position-dependent weights, modulo 2^32.

    Integer sums are exact in any order, so the digest does not depend on how the
    parameters are sharded; and with odd weights, changing any one value changes both.
    """
    bits = _bits_u32(x)
    index = jnp.zeros(x.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(x.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= x.shape[axis]
    w1 = (index * jnp.uint32(2654435761)) | jnp.uint32(1)
    w2 = ((index ^ jnp.uint32(0x9E3779B9)) * jnp.uint32(2246822519)) | jnp.uint32(1)
    return jnp.stack([jnp.sum(bits * w1, dtype=jnp.uint32), jnp.sum(bits * w2, dtype=jnp.uint32)])


def params_digest(params, mesh) -> str:
    """A digest of the parameter values (and tree paths, shapes, dtypes), from device arrays."""
    sums = jax.jit(lambda p: jax.tree.map(_leaf_sums, p), out_shardings=sharding.replicated(mesh))(params)
    parts = [
        (jax.tree_util.keystr(path), list(x.shape), str(x.dtype), np.asarray(s.addressable_data(0)).tolist())
        for (path, x), s in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(sums))
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def model_identity(hf_config: dict, model_cfg, params, mesh) -> dict:
    return {
        "hf_config": hf_config,
        "dtype": model_cfg.dtype,
        "param_dtype": model_cfg.param_dtype,
        "params": params_digest(params, mesh),
    }


def _source_identity(source) -> dict:
    out = {"records": len(source)}
    column_map = getattr(source, "column_map", None)
    if column_map is not None:  # other columns are other records
        out["columns"] = column_map.columns
    path = getattr(source, "path", None)
    if path is None or not paths.exists(path):  # TFDS: a dataset name, not a path
        return {
            **out,
            "name": getattr(source, "name", repr(source)),
            "split": getattr(source, "split", None),
            "data_dir": getattr(source, "data_dir", None),
        }
    # The name the user gave (a bucket URL's basename too), not the local cache copy's.
    out["name"] = paths.basename(getattr(source, "name", path).rstrip("/"))
    if paths.isfile(path):
        return {**out, **file_identity(path)}
    parts = [(name, file_identity(paths.join(path, name))) for name in paths.walk_files(path)]
    return {
        **out,
        "split": getattr(source, "split", None),
        "files": hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(),
    }


def _tokenizer_identity(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = [
        type(tokenizer).__name__,
        backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items())),
        getattr(tokenizer, "chat_template", None),
        {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
    ]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def data_identity(cfg: DataConfig, tokenizer) -> dict:
    """What decides the tokens of every record: the sources, the tokenizer, and the data.* keys."""
    sources = []
    for i, s in enumerate(cfg.sources):
        sources += [_source_identity(src) for src in open_sources(s, f"data.sources[{i}]")]
    keys = {k: getattr(cfg, k) for k in TOKENISATION_KEYS}
    keys["templates"] = dataclasses.asdict(cfg.templates)
    return {"sources": sources, "tokenizer": _tokenizer_identity(tokenizer), **keys}


def fingerprint(model_id: dict, data_id: dict) -> str:
    blob = json.dumps({"model": model_id, "data": data_id}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def differences(old, new, key: str) -> list[str]:
    """Human-readable `key: old -> new` lines where two identities differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d for k in sorted(set(old) | set(new)) for d in differences(old.get(k), new.get(k), f"{key}.{k}")
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{key}[{i}]")]
    if old == new:
        return []
    old_text, new_text = json.dumps(old, default=str), json.dumps(new, default=str)
    if max(len(old_text), len(new_text)) > 60:  # digests, long templates: naming the key is enough
        return [f"{key} changed"]
    return [f"{key}: {old_text} -> {new_text}"]
