"""Where a record came from, and what can be wrong with it.

Every record carries its `Origin` from the source to the batcher so that an
error, or a skip, names the file and the line (or row) a user has to look at.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Reasons a record is skipped. The keys are the `data/skipped/<reason>` metric
# names; the values explain them in error messages.
BAD_RECORD_REASONS = {
    "invalid_json": "the line or record is not valid JSON",
    "not_utf8": "the bytes are not valid UTF-8",
    "not_an_object": "the record is not a JSON object (dict)",
    "missing_field": "a required field is missing or null",
    "wrong_type": "a field has the wrong type",
    "empty_prompt": "the prompt renders to no tokens and the tokenizer has no BOS",
    "empty_response": "a response (chosen, rejected, response, completion) is empty",
    "identical_responses": "chosen and rejected are identical, so the pair carries no preference",
    "bad_conversation": "a conversation is malformed",
    "bad_weights": "the objective `weights` do not match data.templates.weights",
    "bad_token_weights": "the token weights or weight spans do not fit the response",
    "bad_margin": "the pair's margin (loss.reward.margin_field) is missing or not a finite number",
    "template_error": "the chat template could not render the record",
}
# Reasons a well-formed record is dropped by length handling. These are counted
# whatever `on_bad_record` says: they are a consequence of max_length, not bad data.
LENGTH_DROP_REASONS = {
    "response_truncated": "max_length leaves no response tokens after the prompt",
    "identical_after_truncation": "chosen and rejected are identical once truncated",
    "over_length": "a sequence is longer than max_length (or its prompt than max_prompt_length) "
    "and data.over_length drops such records",
}
ALL_REASONS = {**BAD_RECORD_REASONS, **LENGTH_DROP_REASONS}


@dataclasses.dataclass(frozen=True)
class Origin:
    """A record's place in its source: `path` plus a 1-based line or 0-based row."""

    path: str
    index: int
    # "line" (1-based, JSONL), "row" / "record" (0-based), "index" (0-based, named
    # `path:index` as a line is: a Hub dataset's `hf:ORG/NAME[split]:ROW`)
    unit: str

    def __str__(self) -> str:
        if self.unit in ("line", "index"):
            return f"{self.path}:{self.index}"
        return f"{self.path} ({self.unit} {self.index})"


@dataclasses.dataclass(frozen=True)
class RawRecord:
    """What a source returns: undecoded bytes (JSONL, ArrayRecord) or a dict."""

    origin: Origin
    value: Any
    epoch: int = 0
    # Identity of the record within its pipeline, stable across shuffling, epochs,
    # processes and workers (`record_key`); 0 = none (online records, padding).
    key: int = 0


# A record key packs (source index + 1, row) so that 0 is never a real record and
# a key names its record in error messages; rows are 0-based indices into the source.
_ROW_BITS = 40
MAX_SOURCE_ROWS = 1 << _ROW_BITS
# (source index + 1) << _ROW_BITS must stay below 2**63: keys travel as int64.
MAX_SOURCES = (1 << (63 - _ROW_BITS)) - 1


def record_key(source_index: int, row: int) -> int:
    """The key of row `row` (0-based) of the pipeline's source `source_index` (one data
    file; a glob or directory in data.sources opens several, in order)."""
    if not (0 <= source_index < MAX_SOURCES and 0 <= row < MAX_SOURCE_ROWS):
        raise ValueError(
            f"data.sources: no record key for row {row} of data file {source_index}: keys name at "
            f"most {MAX_SOURCES:,} files of at most {MAX_SOURCE_ROWS:,} rows each; split larger "
            "files, or merge small ones"
        )
    return ((source_index + 1) << _ROW_BITS) | row


def split_record_key(key: int) -> tuple[int, int]:
    """(source index, row) of a key made by `record_key`."""
    return (int(key) >> _ROW_BITS) - 1, int(key) & ((1 << _ROW_BITS) - 1)


class BadRecord(Exception):
    """Raised while decoding or tokenising one record; `reason` is a key above."""

    def __init__(self, reason: str, detail: str):
        assert reason in ALL_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DataError(ValueError):
    """A bad record under `on_bad_record: error`, or a data problem at start-up."""


class DataSetupError(DataError):
    """Not the record's fault: a missing package, a chat template that does not compile,
    a broken tokenizer. It stops the run under either `on_bad_record` mode, since
    skipping would drop every record for a reason no record can fix."""


def bad_record_error(origin: Origin | str, err: BadRecord) -> DataError:
    return DataError(
        f"{origin}: {err.reason}: {err.detail}. Fix the record, or set "
        "data.on_bad_record: skip to count such records under "
        f"data/skipped/{err.reason} and go on."
    )


@dataclasses.dataclass(frozen=True)
class Skipped:
    """Stands in for a dropped record so the batcher can count it (never silent)."""

    reason: str
    origin: str
    epoch: int
