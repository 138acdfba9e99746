"""The largest batch a data config can produce: what a compile for speed or memory must
assume. Built by the pipeline's own batch builders from synthetic full-length examples,
so it has exactly the fields, shapes and dtypes training batches have."""

from __future__ import annotations

import numpy as np

from alignjax.data.batching import make_builder
from alignjax.data.config import DataConfig
from alignjax.data.examples import CutTokenized, PairExample, SftTokenized, UnpairedTokenized
from alignjax.data.tokenize import TokenizedSequence


def _full_sequence(cfg: DataConfig) -> TokenizedSequence:
    """BOS, the user slots and a prompt of half the length, then a response to max_length."""
    prompt = max(cfg.max_length // 2, 1 + cfg.n_user_tokens)
    weights = np.ones(cfg.max_length - prompt, np.float32) if cfg.token_weights else None
    return TokenizedSequence(
        prompt_ids=np.ones(prompt, np.int32),
        response_ids=np.ones(cfg.max_length - prompt, np.int32),
        n_user_slots=cfg.n_user_tokens,
        n_bos=1,
        response_weights=weights,
    )


def largest_batch(cfg: DataConfig, examples: int, record_type: str | None = None):
    """A host batch of `examples` pairs / SFT examples / CUT examples (or packed rows), every
    sequence `max_length` tokens. `record_type` overrides the config's (online methods
    train on pairs or CUT views sampled from `prompt` records)."""
    record_type = record_type or cfg.record_type
    cfg = DataConfig(**{**cfg.__dict__, "record_type": record_type, "sources": []})
    seq = _full_sequence(cfg)
    if record_type == "preference":
        example = PairExample(seq, seq, user_index=0, condition_id=0, epoch=0)
    elif record_type == "sft":
        example = SftTokenized(seq, user_index=0, condition_id=0, epoch=0)
    elif record_type == "cut":
        example = CutTokenized(seq, seq, score=float("nan"), condition_id=0, epoch=0)
    elif record_type == "unpaired":
        example = UnpairedTokenized(seq, seq.response_ids, desirable=True, condition_id=0, epoch=0)
    else:
        raise ValueError(
            f"data.record_type={record_type!r}: no training batch to size (preference, sft, cut or unpaired)"
        )
    builder = make_builder(cfg, examples, pad_id=0)
    while not builder.full and builder.add(example):
        pass
    return builder.build()
