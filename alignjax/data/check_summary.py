"""What one pass of the data check found (`check.check_data`): counts per source, bad
records and length drops by reason with the first few origins, sequence lengths,
truncation and batch efficiency; worded for a terminal (`report`) and JSON-able
(`to_json`), so a run can cache it."""

from __future__ import annotations

import dataclasses
from typing import Any

from alignjax.data.config import DataConfig
from alignjax.data.records import (
    BAD_RECORD_REASONS,
    LENGTH_DROP_REASONS,
    BadRecord,
    DataError,
    bad_record_error,
)

SUMMARY_VERSION = 1


@dataclasses.dataclass
class SourceCounts:
    source: str  # the file (or `tfds:NAME/SPLIT`) as record origins name it
    records: int = 0
    examples: int = 0  # records that become training examples
    bad: int = 0  # skipped (or, under `error`, fatal) for a reason in BAD_RECORD_REASONS
    dropped: int = 0  # well-formed, but dropped by max_length (LENGTH_DROP_REASONS)


@dataclasses.dataclass
class CheckSummary:
    """What one pass over a data set found; JSON-able (`to_json`), so a run can cache it."""

    sources: list[SourceCounts]
    reasons: dict[str, int]  # reason -> records, bad and length drops alike
    # reason -> up to check.EXAMPLES_PER_REASON [origin, detail], in file order
    examples: dict[str, list[list[str]]]
    first_bad: list[str] | None  # [origin, reason, detail] of the first bad record in file order
    length_histogram: list[list[int]]  # [upper edge (a power of two), sequences of length in (edge/2, edge]]
    truncated: int  # examples with a sequence cut by max_length or max_prompt_length
    efficiency: float | None  # real tokens / token slots of the batches (None: no examples)
    efficiency_of: str  # "padding" or "packing"
    efficiency_examples: int  # how many examples it was measured on
    seconds: float

    @property
    def records(self) -> int:
        return sum(s.records for s in self.sources)

    @property
    def n_examples(self) -> int:
        return sum(s.examples for s in self.sources)

    @property
    def bad(self) -> dict[str, int]:
        return {r: n for r, n in self.reasons.items() if r in BAD_RECORD_REASONS}

    @property
    def dropped(self) -> dict[str, int]:
        return {r: n for r, n in self.reasons.items() if r in LENGTH_DROP_REASONS}

    def stops_run(self, on_bad_record: str) -> bool:
        """Whether training would stop at a bad record (only under `on_bad_record: error`)."""
        return on_bad_record == "error" and bool(self.bad)

    def first_error(self) -> DataError:
        """The error the pipeline raises at the first bad record, worded as it words it."""
        origin, reason, detail = self.first_bad
        return bad_record_error(origin, BadRecord(reason, detail))

    def reason_counts(self, reasons: dict[str, int]) -> str:
        """`reason=n (e.g. file:line, ...)` for each reason: what a log line needs."""
        return ", ".join(
            f"{r}={n} (e.g. {', '.join(o for o, _ in self.examples.get(r, []))})" for r, n in reasons.items()
        )

    def report(self, what: str, cfg: DataConfig) -> list[str]:
        """The summary as lines for a terminal; `what` names the data set."""
        bad, dropped = sum(self.bad.values()), sum(self.dropped.values())
        head = (
            f"{what}: {self.records} records, {self.n_examples} examples, {bad} bad, "
            f"{dropped} dropped by length (checked in {self.seconds:.1f}s)"
        )
        lines = [head, "  records per source:"]
        lines += [
            f"    {s.source}: {s.records} records, {s.examples} examples, {s.bad} bad, {s.dropped} dropped"
            for s in self.sources
        ]
        for title, counts, meaning in (
            ("bad records by reason", self.bad, BAD_RECORD_REASONS),
            ("dropped by length", self.dropped, LENGTH_DROP_REASONS),
        ):
            if not counts:
                continue
            lines.append(f"  {title}:")
            for reason, n in counts.items():
                lines.append(f"    {reason}: {n} ({meaning[reason]})")
                lines += [f"      {origin}: {detail}" for origin, detail in self.examples.get(reason, [])]
        lines.append("  sequence lengths (prompt + response tokens):")
        most = max((n for _, n in self.length_histogram), default=0)
        for edge, n in self.length_histogram:
            bar = "#" * max(1, round(40 * n / most)) if n else ""
            lines.append(f"    {edge // 2 + 1 if edge > 1 else 1:>7}-{edge:<7} {n:>9}  {bar}")
        share = self.truncated / self.n_examples if self.n_examples else 0.0
        lines.append(
            f"  truncated: {self.truncated} of {self.n_examples} examples ({100 * share:.1f}%) "
            f"by max_length={cfg.max_length} / max_prompt_length={cfg.max_prompt_length}"
        )
        if self.efficiency is None:
            lines.append(f"  {self.efficiency_of} efficiency: no examples to batch")
        else:
            layout = (
                f"rows of {cfg.effective_pack_length}" if cfg.packing else f"buckets {cfg.effective_buckets}"
            )
            lines.append(
                f"  {self.efficiency_of} efficiency: {100 * self.efficiency:.1f}% of batch tokens are real "
                f"({layout}; measured on {self.efficiency_examples} examples)"
            )
        if self.stops_run(cfg.on_bad_record):
            lines.append(f"  data.on_bad_record: error stops training at {self.first_bad[0]}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"version": SUMMARY_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CheckSummary:
        if d.get("version") != SUMMARY_VERSION:
            raise ValueError(f"data check summary version {d.get('version')} != {SUMMARY_VERSION}")
        fields = {k: v for k, v in d.items() if k != "version"}
        fields["sources"] = [SourceCounts(**s) for s in fields["sources"]]
        return cls(**fields)
