"""Every record of a data set through the pipeline's own per-record map, before training.

Under `on_bad_record: error` the pipeline stops at a bad record only when the shuffled
stream reaches it, possibly hours in; under `skip` it reports the counts at the end of
an epoch. `check_data` reads each record of each source once, in file order, through the
same `ExampleProcessor` the pipeline maps (decode, validate, condition, render, tokenise,
truncate), and summarises what training will meet: records per source, bad records and
length drops by reason with the first few origins, sequence lengths, truncation, and how
many of the batches' token slots hold real tokens (the pipeline's own batch builders
place the examples).

Every source has a known size (sources.py), so every record can be read. Worker
processes take ranges of records; they are spawned, not forked, because the caller may
already run JAX's threads (so a script that calls `check_data` with workers needs the
`if __name__ == "__main__":` guard that every spawning program needs).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import multiprocessing
import time

import numpy as np
from tqdm import tqdm

from alignjax.data.check_summary import CheckSummary, SourceCounts
from alignjax.data.config import DataConfig
from alignjax.data.examples import ExampleProcessor
from alignjax.data.record_types import record_type_named
from alignjax.data.records import (
    BAD_RECORD_REASONS,
    LENGTH_DROP_REASONS,
    BadRecord,
    DataError,
    DataSetupError,
    RawRecord,
    Skipped,
    record_key,
)
from alignjax.data.sources import open_sources
from alignjax.data.tokenize import TokenizedSequence

log = logging.getLogger("alignjax.data")

EXAMPLES_PER_REASON = 3
# Examples the efficiency is measured on: batching every example of a large data set costs
# more than the estimate gains, and a few thousand batches pin it down to a fraction of a percent.
EFFICIENCY_SAMPLE = 1 << 14
_RECORDS_PER_TASK = 512
_UNLIMITED = 1 << 62  # a max_length no record reaches: the untruncated lengths
_PROGRESS_LOG_SECONDS = 60.0


@dataclasses.dataclass
class _Tally:
    """What a range of records holds; tallies of consecutive ranges add up (`add`)."""

    records: int = 0
    examples: int = 0
    reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    samples: dict = dataclasses.field(default_factory=dict)  # reason -> [[origin, detail]]
    first_bad: list | None = None
    lengths: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # edge -> n
    truncated: int = 0
    shapes: list = dataclasses.field(default_factory=list)  # sampled examples' sequence lengths

    def note(self, reason: str, origin: str, detail: str) -> None:
        self.reasons[reason] += 1
        seen = self.samples.setdefault(reason, [])
        if len(seen) < EXAMPLES_PER_REASON:
            seen.append([origin, detail])
        if reason in BAD_RECORD_REASONS and self.first_bad is None:
            self.first_bad = [origin, reason, detail]

    def add(self, later: _Tally) -> None:
        """Append the tally of the records that follow these."""
        self.records += later.records
        self.examples += later.examples
        self.reasons.update(later.reasons)
        for reason, samples in later.samples.items():
            seen = self.samples.setdefault(reason, [])
            seen += samples[: EXAMPLES_PER_REASON - len(seen)]
        self.first_bad = self.first_bad or later.first_bad
        self.lengths.update(later.lengths)
        self.truncated += later.truncated
        self.shapes += later.shapes


def _length_edge(n: int) -> int:
    """The smallest power of two >= n: the histogram bin, and the bucket a power-of-two layout picks."""
    return 1 << max(n - 1, 0).bit_length()


class _Checker:
    """Checks ranges of records; pickled once into each worker process."""

    def __init__(self, cfg: DataConfig, tokenizer, sources: list, sampled: np.ndarray | None):
        # Error mode: a bad record raises with its detail, which a `Skipped` does not carry.
        self.processor = ExampleProcessor(dataclasses.replace(cfg, on_bad_record="error"), tokenizer)
        # Lengths without the limits, to tell a sequence cut at a limit from one that just reaches it.
        self.unlimited = ExampleProcessor(
            dataclasses.replace(cfg, on_bad_record="error", max_length=_UNLIMITED, max_prompt_length=None),
            tokenizer,
        )
        self.record_type = self.processor.record_type
        self.max_length, self.max_prompt_length = cfg.max_length, cfg.max_prompt_length
        self.sources = sources
        self.sampled = sampled  # sorted record ordinals whose shapes feed the efficiency; None: all
        self.starts = np.concatenate([[0], np.cumsum([len(s) for s in sources])]).astype(np.int64)

    def __call__(self, task: tuple[int, int, int]) -> tuple[int, _Tally]:
        source_index, begin, end = task
        source, tally = self.sources[source_index], _Tally()
        first = int(self.starts[source_index])
        if self.sampled is None:
            sampled = range(begin, end)
        else:
            lo, hi = np.searchsorted(self.sampled, [first + begin, first + end])
            sampled = set((self.sampled[lo:hi] - first).tolist())
        for row in range(begin, end):
            raw = dataclasses.replace(source[row], key=record_key(source_index, row))
            tally.records += 1
            try:
                example = self.processor(raw)
            except DataSetupError:
                raise  # the setup, not the record: it stops the pipeline in either mode too
            except DataError as err:
                cause = err.__context__  # the processor re-raises a record's BadRecord as a DataError
                if not isinstance(cause, BadRecord):
                    raise
                tally.note(cause.reason, str(raw.origin), cause.detail)
                continue
            if isinstance(example, Skipped):  # a length drop: counted in either mode
                tally.note(example.reason, example.origin, LENGTH_DROP_REASONS[example.reason])
                continue
            tally.examples += 1
            shape = self.record_type.row_lengths(example)
            tally.lengths.update(_length_edge(n) for n in shape if n)
            tally.truncated += self._truncated(raw, example, shape)
            if row in sampled:
                tally.shapes.append(shape)
        return source_index, tally

    def _truncated(self, raw: RawRecord, example, shape: tuple[int, ...]) -> bool:
        """Whether a limit cut a sequence. Only one that reaches a limit can have been cut;
        those are processed again without limits and compared."""
        prompt_limit = self.max_prompt_length
        at_limit = max(shape) >= self.max_length or (
            prompt_limit is not None and max(self.record_type.prompt_lengths(example)) >= prompt_limit
        )
        if not at_limit:
            return False
        full = self.unlimited(raw)
        return type(full) is not type(example) or self.record_type.row_lengths(full) != shape


_WORKER_CHECKER: _Checker | None = None


def _start_worker(checker: _Checker) -> None:
    global _WORKER_CHECKER
    _WORKER_CHECKER = checker


def _check_in_worker(task):
    return _WORKER_CHECKER(task)


def _source_name(source) -> str:
    path = getattr(source, "path", None)
    return path if path is not None else f"tfds:{source.name}/{source.split}"


def check_data(
    cfg: DataConfig,
    tokenizer,
    *,
    workers: int | None = None,
    per_host_batch_size: int | None = None,
    progress: bool = True,
    what: str = "data",
) -> CheckSummary:
    """Every record of `cfg.sources` (each once, whatever its mixture weight) through the
    pipeline's per-record map. A `DataSetupError` (a template that does not compile, a
    missing package) is raised as the pipeline raises it; bad records are counted.

    `workers`: processes over ranges of records (default `cfg.worker_count`; 0 = here).
    `per_host_batch_size`: the batches whose efficiency is measured (default
    `cfg.batch_size`, one process). `progress`: a bar on a terminal, else a log line a minute.
    """
    cfg.validate()
    workers = cfg.worker_count if workers is None else workers
    started = time.monotonic()
    sources = []
    for i, s in enumerate(cfg.sources):
        sources += open_sources(s, f"data.sources[{i}]")
    total = sum(len(s) for s in sources)
    checker = _Checker(cfg, tokenizer, sources, _efficiency_sample(cfg, total))
    log.info(
        "%s: checking %d records of %d files with %d worker processes", what, total, len(sources), workers
    )
    tallies = _check_sources(checker, workers, progress, what, started)
    everything = _Tally()
    for tally in tallies:
        everything.add(tally)
    efficiency = batch_efficiency(cfg, everything.shapes, per_host_batch_size or cfg.batch_size)
    return CheckSummary(
        sources=[
            SourceCounts(
                _source_name(s),
                t.records,
                t.examples,
                sum(n for r, n in t.reasons.items() if r in BAD_RECORD_REASONS),
                sum(n for r, n in t.reasons.items() if r in LENGTH_DROP_REASONS),
            )
            for s, t in zip(sources, tallies, strict=True)
        ],
        reasons=dict(sorted(everything.reasons.items())),
        examples={r: everything.samples[r] for r in sorted(everything.samples)},
        first_bad=everything.first_bad,
        length_histogram=_histogram(everything.lengths),
        truncated=everything.truncated,
        efficiency=efficiency,
        efficiency_of="packing" if cfg.packing else "padding",
        efficiency_examples=len(everything.shapes),
        seconds=time.monotonic() - started,
    )


def _check_sources(
    checker: _Checker, workers: int, progress: bool, what: str, started: float
) -> list[_Tally]:
    """Each source's tally, its ranges of records checked here or by `workers` processes."""
    sources = checker.sources
    total = sum(len(s) for s in sources)
    tasks = [
        (i, begin, min(begin + _RECORDS_PER_TASK, len(s)))
        for i, s in enumerate(sources)
        for begin in range(0, len(s), _RECORDS_PER_TASK)
    ]
    tallies = [_Tally() for _ in sources]
    # disable=None: a bar on a terminal only; batch jobs' logs get a line a minute instead.
    bar = tqdm(total=total, unit="rec", desc=f"checking {what}", disable=None if progress else True)
    done, next_log = 0, started + _PROGRESS_LOG_SECONDS
    # An executor, not a Pool: a worker that dies (out of memory, a failed start) fails the
    # check with BrokenProcessPool instead of being replaced forever.
    pool = (
        concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(checker,),
        )
        if workers
        else None
    )
    try:
        for source_index, tally in pool.map(_check_in_worker, tasks) if pool else map(checker, tasks):
            tallies[source_index].add(tally)
            done += tally.records
            bar.update(tally.records)
            if progress and bar.disable and time.monotonic() >= next_log:
                log.info("%s: %d of %d records checked", what, done, total)
                next_log += _PROGRESS_LOG_SECONDS
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return tallies


def _histogram(lengths: collections.Counter) -> list[list[int]]:
    """Every power-of-two bin from the shortest sequence's to the longest's, empty ones included."""
    if not lengths:
        return []
    edges, edge = [], min(lengths)
    while edge <= max(lengths):
        edges.append(edge)
        edge *= 2
    return [[e, lengths.get(e, 0)] for e in edges]


def _efficiency_sample(cfg: DataConfig, total: int) -> np.ndarray | None:
    """Record ordinals whose examples the efficiency is measured on (None: all). Shuffled
    training batches a random mix, so a random subset; unshuffled, the first records."""
    if total <= EFFICIENCY_SAMPLE:
        return None
    if not cfg.shuffle:
        return np.arange(EFFICIENCY_SAMPLE, dtype=np.int64)
    chosen = np.random.default_rng(cfg.seed).choice(total, EFFICIENCY_SAMPLE, replace=False)
    return np.sort(chosen).astype(np.int64)


def batch_efficiency(
    cfg: DataConfig, shapes: list[tuple[int, ...]], per_host_batch_size: int
) -> float | None:
    """Real tokens / token slots (1 - the pipeline's `data/padding_fraction`) of the batches the
    pipeline's builders make of examples of these shapes, shuffled with the data seed when the
    data is shuffled. The order is not the pipeline's exact order: an estimate, as a shuffle is."""
    if not shapes:
        return None
    order = np.random.default_rng(cfg.seed).permutation(len(shapes)) if cfg.shuffle else range(len(shapes))
    record_type = record_type_named(cfg.record_type)
    builder = record_type.make_builder(cfg, per_host_batch_size, 0)
    real = slots = 0

    def emit():
        nonlocal real, slots
        segment_ids_BxL = builder.build().segment_ids_BxL
        real += int((segment_ids_BxL > 0).sum())
        slots += int(segment_ids_BxL.size)
        builder.reset()

    for i in order:
        example = record_type.example_of(cfg, tuple(_stand_in_sequence(n) for n in shapes[i]))
        if not builder.add(example):  # it opens the next batch, as in BatchIterDataset
            emit()
            builder.add(example)
        if builder.full:
            emit()
    if not builder.empty:
        emit()
    return real / slots


def _stand_in_sequence(n: int) -> TokenizedSequence | None:
    """A sequence of n tokens, all the batch builders need to place it (None: an empty slot)."""
    if not n:
        return None
    return TokenizedSequence(np.zeros(n, np.int32), np.zeros(0, np.int32), n_user_slots=0, n_bos=0)
