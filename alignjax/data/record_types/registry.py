"""The record-type registry: every kind of training record is one module that declares itself here.

A `RecordType` says, for its records, how a decoded row is validated into a typed example
(`parse`), how that example becomes token sequences (`tokenize`), which builder places the
tokenised examples into fixed-shape batches (`make_builder`), and what the data check and
the compile check need to measure or imitate them (`row_lengths`, `prompt_lengths`,
`example_of`). The pipeline, the data check and the largest-batch sizing look the type of
`data.record_type` up here and never switch on its name. Adding a record type is one
module plus one `register` line.

The hooks receive what the generic code holds:
- `cfg`: the `DataConfig` (the data section; `cfg.templates`, `cfg.max_length`, ...).
- `cond`: the record's `formats.Conditioning` (system, user_info, weights, user id,
  condition key), parsed before the hook runs, for every record type alike.
- `processor`: the `examples.ExampleProcessor` mapping the record, whose methods do the
  shared steps: `condition(prompt, cond, judgment=None)` renders the conditioning into the
  prompt, `response(prompt, response, weights=None)` gives (prompt ids, n_bos, response
  ids, response weights), `prompt_ids(prompt)` gives (ids, n_bos) of a prompt alone,
  `ids(cond)` gives (user index, condition id); `processor.seq` is the
  `tokenize.SequenceTokenizer` (`sequence(...)` assembles and truncates one sequence).
- `raw`: the `records.RawRecord` (its `epoch`, and `key` for precomputed reference tables).

Hooks are module-level functions (builders may hold `functools.partial`s of them): a record
type travels to the data worker processes by pickling, which names functions by module.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class RecordType:
    """One record type's declaration: its name, its hooks (see above) and its batch layout."""

    name: str  # the value of data.record_type
    # (row: dict, cond, cfg) -> a typed example; raises records.BadRecord for a bad record.
    parse: Callable[[dict, Any, Any], Any]
    # (processor, typed example, raw) -> a tokenised example; raises BadRecord (length drops too).
    tokenize: Callable[[Any, Any, Any], Any]
    # (cfg, per-host batch size, pad id) -> a `batching.Builder` of this type's batches.
    make_builder: Callable[[Any, int, int], Any]
    # tokenised example -> the length of each of its `slots` token sequences (0: an empty row).
    row_lengths: Callable[[Any], tuple[int, ...]]
    # tokenised example -> the prompt lengths of its sequences (what max_prompt_length cuts).
    prompt_lengths: Callable[[Any], tuple[int, ...]]
    # (cfg, one `TokenizedSequence` or None (an empty slot) per slot) -> a tokenised example the
    # builder places as it places a real one: the data check's stand-ins, the largest batch.
    example_of: Callable[[Any, tuple], Any]
    slots: int  # token sequences per example (rows or packed segments it fills)
    packs: int = 0  # sequences an example puts into a packed row; 0: data.packing is refused
    # Whether training steps take its batches (False: records sampled from, e.g. prompts).
    trained: bool = True


_RECORD_TYPES: dict[str, RecordType] = {}


def register(record_type: RecordType) -> RecordType:
    if record_type.name in _RECORD_TYPES:
        raise ValueError(f"a record type named {record_type.name!r} is registered already")
    _RECORD_TYPES[record_type.name] = record_type
    return record_type


def registered() -> tuple[str, ...]:
    """The registered record types' names, in registration order."""
    return tuple(_RECORD_TYPES)


def record_type_named(name: str) -> RecordType:
    """The record type `data.record_type` names."""
    found = _RECORD_TYPES.get(name)
    if found is None:
        raise ValueError(
            f"data.record_type: {name!r} names no registered record type "
            f"(registered: {', '.join(_RECORD_TYPES)})"
        )
    return found


def make_builder(cfg, per_host_batch_size: int, pad_id: int):
    """The batch builder of `cfg.record_type` (padded, or packed under `data.packing`)."""
    return record_type_named(cfg.record_type).make_builder(cfg, per_host_batch_size, pad_id)
