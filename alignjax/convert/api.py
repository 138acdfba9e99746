"""The two conversions users run: Hugging Face directory <-> Orbax checkpoint."""

from __future__ import annotations

import json
from typing import Any

from alignjax.core import hub, paths
from alignjax.convert import model_checkpoint as mc
from alignjax.convert.hf import params_from_tensors, tensors_from_params
from alignjax.convert.safetensors_io import ShardedWriter, iter_tensors
from alignjax.convert.sequence_classification import (
    backbone,
    is_sequence_classifier,
    read_score_head,
    write_sequence_classifier,
)
from alignjax.core.fileio import atomic_write_json
from alignjax.models.config import ModelConfig
from alignjax.models.families import hf_class_name, load_hf_config_dict, model_config_from_hf
from alignjax.models.lora import HF_TO_PROJECTION
from alignjax.models.lora import scale as lora_scale
from alignjax.models.parts import DECODER, LORA, split_parts
from alignjax.models.score_head import SCORE_HEAD_KEY


def _read_json(path: str) -> dict[str, Any] | None:
    if not paths.exists(path):
        return None
    with paths.open(path) as f:
        return json.load(f)


def load_hf_model(hf_dir: str, **execution: Any) -> tuple[ModelConfig, dict[str, Any], dict[str, Any]]:
    """(config, NumPy params, checkpoint metadata) from a Hugging Face directory (local, or a
    bucket URL: tensors are then read one at a time by ranged reads)."""
    config_dict = load_hf_config_dict(hf_dir)
    cfg = model_config_from_hf(config_dict, **execution)
    tensors = iter_tensors(hf_dir)
    if is_sequence_classifier(config_dict):  # its score head is a part: `read_score_head`
        cfg, tensors = backbone(cfg, tensors)
    params, dtypes = params_from_tensors(cfg, tensors, source=hf_dir)
    meta = {
        "hf_config": config_dict,
        "hf_tensor_dtypes": dtypes,
        "scan_layers": cfg.scan_layers,
        "param_dtype": cfg.param_dtype,
        "generation_config": _read_json(paths.join(hf_dir, "generation_config.json")),
    }
    return cfg, params, meta


def hf_to_orbax(
    hf_dir: str,
    out_dir: str,
    *,
    param_dtype: str = "float32",
    scan_layers: bool = False,
    revision: str | None = None,
) -> str:
    """Import a Hugging Face model (a directory, a bucket URL, or a Hub name at `revision`)
    as a step-0 Orbax checkpoint; returns the step directory."""
    hf_dir = hub.model_dir(hf_dir, revision=revision, key="SRC", revision_key="--revision")
    cfg, params, meta = load_hf_model(hf_dir, param_dtype=param_dtype, scan_layers=scan_layers)
    if is_sequence_classifier(meta["hf_config"]):  # the score head travels as a part, as in training
        params = {DECODER: params, **read_score_head(hf_dir, cfg)}
    return mc.save_model(out_dir, params, meta, step=0, tokenizer_dir=hf_dir)


def model_config_from_meta(meta: dict[str, Any], **execution: Any) -> ModelConfig:
    layout = {"scan_layers": meta["scan_layers"], "param_dtype": meta["param_dtype"]}
    return model_config_from_hf(meta["hf_config"], **{**layout, **execution})


def _generation_config(meta: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    if meta.get("generation_config"):
        return meta["generation_config"]
    eos = list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id
    out = {"bos_token_id": cfg.bos_token_id, "eos_token_id": eos, "pad_token_id": cfg.pad_token_id}
    return {k: v for k, v in out.items() if v is not None}


def lora_config_from_meta(meta: dict[str, Any], **execution: Any) -> ModelConfig:
    """A LoRA checkpoint's model config, adapters included (settings in PEFT's names)."""
    settings = meta["lora"]
    rank, alpha, rslora = settings["r"], settings["lora_alpha"], settings["use_rslora"]
    return model_config_from_meta(
        meta,
        lora_rank=rank,
        lora_targets=tuple(HF_TO_PROJECTION[t] for t in settings["target_modules"]),
        lora_scale=lora_scale(alpha, rank, rslora),
        **execution,
    )


def lora_base(meta: dict[str, Any], **execution: Any):
    """(config, parameters) of the base a LoRA checkpoint names, checked against the
    fingerprint recorded when it trained: adapters only fit the weights they were trained on."""
    from alignjax.core.fileio import files_identity

    settings = meta["lora"]
    path = settings["base_model_name_or_path"]
    if settings.get("base_revision"):  # trained on a Hub model: the same commit, never a local namesake
        path = hub.model_dir(
            hub.HUB_PREFIX + path,
            revision=settings["base_revision"],
            key="the LoRA checkpoint's base_model_name_or_path",
            revision_key="its base_revision",
        )
    preset = settings.get("base_preset")
    if preset is not None:  # a random-init base: rebuilt as `loading.load_model` built it
        import jax
        import numpy as np

        from alignjax.models import decoder
        from alignjax.models.presets import preset_config

        overrides = {**preset["overrides"], "vocab_size": meta["hf_config"]["vocab_size"]}
        cfg = model_config_from_hf(preset_config(preset["name"], **overrides), **execution)
        params = jax.tree.map(np.asarray, decoder.init_params(cfg, jax.random.key(preset["seed"])))
        return cfg, params
    if not paths.isdir(path):
        raise ValueError(
            f"the LoRA checkpoint's base {path!r} is not a model directory here; --merge needs the base "
            "weights it was trained on"
        )
    if settings.get("base_fingerprint") and files_identity(path) != settings["base_fingerprint"]:
        raise ValueError(f"{path}: its files changed since the adapters were trained on them")
    cfg, params, _ = load_hf_model(path, **execution)
    return cfg, params


def _export_lora(root: str, step: int, meta: dict[str, Any], out_dir: str, merge: bool, max_shard_bytes: int):
    from alignjax.convert import peft

    settings = meta["lora"]
    adapters = mc.load_params(root, step)[LORA]
    cfg = lora_config_from_meta(meta)
    if not merge:
        written = peft.write_peft_adapter(
            out_dir,
            adapters,
            cfg,
            rank=settings["r"],
            alpha=settings["lora_alpha"],
            rslora=settings["use_rslora"],
            target_modules=settings["target_modules"],
            base_model_name_or_path=settings["base_model_name_or_path"],
            dropout=settings.get("lora_dropout", 0.0),
            revision=settings.get("base_revision"),
        )
        return written + _copy_tokenizer(root, out_dir)
    _, base = lora_base(meta, scan_layers=meta["scan_layers"], param_dtype=meta["param_dtype"])
    merged = peft.merge_adapters(base, adapters, cfg)
    return _write_full(cfg, merged, meta, out_dir, max_shard_bytes) + _copy_tokenizer(root, out_dir)


def _copy_tokenizer(root: str, out_dir: str) -> list[str]:
    written = []
    tok_dir = mc.tokenizer_path(root)
    if tok_dir is not None:
        for name in sorted(paths.listdir(tok_dir)):
            paths.copy(paths.join(tok_dir, name), paths.join(out_dir, name))
            written.append(name)
    return written


def orbax_to_hf(
    ckpt: str, out_dir: str, *, max_shard_bytes: int = 5 * 1024**3, merge: bool = False
) -> list[str]:
    """Export a checkpoint root (latest step) or step directory; returns the files written.

    A LoRA checkpoint exports as a PEFT adapter, or with `merge` as full weights (base +
    scale * A B), which needs the base it names."""
    root, step = mc.resolve(ckpt)
    meta = mc.load_meta(root, step)
    if meta.get("lora"):
        paths.makedirs(out_dir)
        return _export_lora(root, step, meta, out_dir, merge, max_shard_bytes)
    if merge:
        raise ValueError(f"{ckpt}: --merge is for LoRA checkpoints; this one holds full weights")
    cfg = model_config_from_meta(meta)
    # A training checkpoint may hold parts beside the decoder (a mask head, a user model).
    params, parts = split_parts(mc.load_params(root, step))
    if SCORE_HEAD_KEY in parts:  # a reward model: a sequence classifier
        written = write_sequence_classifier(
            cfg, params, parts[SCORE_HEAD_KEY], meta, out_dir, max_shard_bytes
        )
        return written + _copy_tokenizer(root, out_dir)
    return _write_full(cfg, params, meta, out_dir, max_shard_bytes) + _copy_tokenizer(root, out_dir)


def _write_full(
    cfg: ModelConfig, params, meta: dict[str, Any], out_dir: str, max_shard_bytes: int
) -> list[str]:
    hf_config = dict(meta["hf_config"])
    hf_config.setdefault("architectures", [hf_class_name(cfg.model_type)])
    default_dtype = hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32"

    writer = ShardedWriter(out_dir, max_shard_bytes)
    for name, array in tensors_from_params(cfg, params, meta["hf_tensor_dtypes"], default_dtype):
        writer.add(name, array)
    written = writer.close()
    for name, content in (
        ("config.json", hf_config),
        ("generation_config.json", _generation_config(meta, cfg)),
    ):
        atomic_write_json(paths.join(out_dir, name), content, indent=2)
        written.append(name)
    return written
