"""The largest batch a data config can produce: what a compile for speed or memory must
assume. Built by the record type's own batch builder from synthetic full-length examples,
so it has exactly the fields, shapes and dtypes training batches have."""

from __future__ import annotations

import numpy as np

from alignjax.data.config import DataConfig
from alignjax.data.record_types import record_type_named, registered
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
    kind = record_type_named(record_type or cfg.record_type)
    if not kind.trained:
        trained = [n for n in registered() if record_type_named(n).trained]
        raise ValueError(
            f"data.record_type={kind.name!r}: no training batch to size ({', '.join(trained)})"
        )
    cfg = DataConfig(**{**cfg.__dict__, "record_type": kind.name, "sources": []})
    example = kind.example_of(cfg, (_full_sequence(cfg),) * kind.slots)
    builder = kind.make_builder(cfg, examples, 0)
    while not builder.full and builder.add(example):
        pass
    return builder.build()
