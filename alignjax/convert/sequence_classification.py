"""Hugging Face `*ForSequenceClassification` checkpoints <-> a decoder plus a score head.

Such a checkpoint is the causal LM's backbone (`model.*`, no `lm_head`) and `score.weight`
[num_labels, D] without a bias. The backbone converts with the causal-LM table, declared
tied so that no `lm_head` is expected or written; the head is the `score_head` part.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from alignjax.core import paths
from alignjax.convert.hf import tensors_from_params
from alignjax.convert.safetensors_io import ShardedWriter, iter_tensors
from alignjax.core.fileio import atomic_write_json
from alignjax.models.config import ModelConfig
from alignjax.models.score_head import SCORE_HEAD_KEY

SCORE_TENSOR = "score.weight"


def is_sequence_classifier(config_dict: dict[str, Any]) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in config_dict.get("architectures") or [])


def backbone(cfg: ModelConfig, tensors: Iterable[tuple[str, np.ndarray]]):
    """(config, tensors) of a sequence classifier's decoder: no LM head, the score skipped."""
    return cfg.replace(tie_embeddings=True), ((n, a) for n, a in tensors if not n.startswith("score."))


def read_score_head(hf_dir: str, cfg: ModelConfig) -> dict[str, Any]:
    """`{"score_head": {"kernel": [D, num_labels]}}` from a sequence-classification directory."""
    score = {name: np.asarray(array) for name, array in iter_tensors(hf_dir) if name.startswith("score.")}
    if set(score) != {SCORE_TENSOR}:
        raise ValueError(
            f"{hf_dir}: expected exactly one score tensor {SCORE_TENSOR!r}, found {sorted(score)}"
        )
    score_CxD = score[SCORE_TENSOR]
    if score_CxD.ndim != 2 or score_CxD.shape[1] != cfg.hidden_size:
        raise ValueError(
            f"{hf_dir}: {SCORE_TENSOR} has shape {score_CxD.shape}, expected [num_labels, {cfg.hidden_size}]"
        )
    return {SCORE_HEAD_KEY: {"kernel": score_CxD.T.astype(np.dtype(cfg.param_dtype))}}


def classifier_hf_config(hf_config: dict[str, Any], num_labels: int) -> dict[str, Any]:
    """config.json of the classifier built on a (causal LM's or classifier's) config."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    out = dict(hf_config)
    out["architectures"] = [MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES[hf_config["model_type"]]]
    out["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
    out["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
    return out


def write_sequence_classifier(
    cfg: ModelConfig,
    decoder_params,
    score_head,
    meta: dict[str, Any],
    out_dir: str,
    max_shard_bytes: int,
) -> list[str]:
    """Write a directory `AutoModelForSequenceClassification.from_pretrained` loads; returns its files.

    config.json keeps the model's pad_token_id: it is the pooling rule training used."""
    kernel_DxC = np.asarray(score_head["kernel"])
    hf_config = classifier_hf_config(meta["hf_config"], kernel_DxC.shape[1])
    default_dtype = hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32"
    writer = ShardedWriter(out_dir, max_shard_bytes)
    tied = cfg.replace(tie_embeddings=True)
    for name, array in tensors_from_params(tied, decoder_params, meta["hf_tensor_dtypes"], default_dtype):
        writer.add(name, array)
    writer.add(SCORE_TENSOR, kernel_DxC.T.astype(np.dtype(default_dtype)))
    written = writer.close()
    atomic_write_json(paths.join(out_dir, "config.json"), hf_config, indent=2)
    return written + ["config.json"]
