"""`make_pipeline`: DataConfig + tokenizer -> an iterator of batches with saveable state.

The Grain graph, per process:

  sources -> MixtureMapDataset (weights) -> shuffle(seed, reshuffled per epoch)
    -> repeat(num_epochs)   (the global record order: positions 0, 1, 2, ...)
    -> [start + process_index::process_count]   (each host reads only its lane)
    -> map(ExampleProcessor)   (decode, validate, condition, tokenize, truncate)
    -> to_iter_dataset(read threads) -> BatchIterDataset (pad to bucket / pack)
    -> mp_prefetch(worker_count)  (worker w batches records w, w + W, ... of the lane)

A streaming Hub source (`streaming: true`) replaces everything up to the lane with
`stream_order.StreamOrder`: the stream's own order, window-shuffled, each process keeping
its lane of positions, with no read threads (one reader per process or data worker).

Everything up to the batcher is index-based, so the batches are a pure function of
(seed, epoch, process_index, process_count, worker_count): two runs with the same
config see the same batches, and `get_state()` / `set_state()` resume exactly.
`resume_from()` also carries on with another process or worker count, from the global
position every process had reached (`positions.py`).
"""

from __future__ import annotations

import collections
import json
import logging

import grain

from alignjax.core import paths
from alignjax.data.config import DataConfig
from alignjax.data.examples import ExampleProcessor
from alignjax.data.formats import condition_key, decode
from alignjax.data.grain_batcher import BatchElement, BatchIterDataset
from alignjax.data.load_tokenizer import tokenizer_pad_id
from alignjax.data.mixing import MixtureMapDataset, describe_mixture
from alignjax.data.positions import LaneProgress, Positioned, consumed_beyond, continue_order
from alignjax.data.record_types import make_builder
from alignjax.data.records import BadRecord
from alignjax.data.sources import open_sources
from alignjax.data.stream_order import open_stream_order
from alignjax.data.vocab import Vocab
from alignjax.core.fileio import atomic_write_json

log = logging.getLogger("alignjax.data")

# 2: the state holds the process's place in the global record order ("order", "workers").
STATE_VERSION = 2


class Pipeline:
    """Iterator of batches, of the class `data.record_type` declares (`PairBatch`, `SftBatch`, ...).

    `get_state()` returns a JSON-able dict to store with the training checkpoint;
    `set_state()` on a fresh pipeline built from the same config resumes at the
    next batch, and `resume_from()` with every process's state does so on any number of
    processes. `metrics()` gives cumulative `data/...` counters for logging.
    """

    def __init__(
        self,
        build,
        cfg: DataConfig,
        user_vocab,
        condition_vocab,
        records_per_epoch: int | None,  # None: a stream, whose length is unknown ahead
        process_index: int,
        process_count: int,
    ):
        self.cfg = cfg
        self.user_vocab = user_vocab
        self.condition_vocab = condition_vocab
        self.records_per_epoch = records_per_epoch
        self.process_index, self.process_count = process_index, process_count
        self._build = build  # LaneProgress -> the Grain dataset reading that lane
        self._iterator = None
        self._start(LaneProgress.fresh(0, process_count, process_index))
        self._reset_counters()

    def _start(self, lane: LaneProgress) -> None:
        """Read `lane` from where it stands; positions it counts as done are not read."""
        self.close()
        self._lane = lane
        self._iterator = iter(self._build(lane))

    def _reset_counters(self):
        self._skipped_total = collections.Counter()
        # Per-epoch counts of epochs not yet reported; bounded, so the state stays
        # small however many epochs an infinite run goes through.
        self._skipped_open: dict[int, collections.Counter] = {}
        self._reported_through = 0  # every epoch < this has been reported
        self._skip_origins: dict[str, list[str]] = {}  # a few examples per reason, for logs
        self._examples = self._tokens = self._slots = self._batches = 0
        self._epoch = 0
        self.epoch_reports: list[dict] = []

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            try:
                element: BatchElement = next(self._iterator)
            except StopIteration:
                self._report_epochs_before(max([self._epoch, *self._skipped_open]) + 1)
                raise
            except Exception:
                self.close()  # a bad record under on_bad_record: error; stop the workers
                raise
            self._account(element)
            self._lane.consume(element.positions)
            if element.batch is not None:
                self._batches += 1
                return element.batch

    def _account(self, element: BatchElement) -> None:
        for epoch, reason, n in element.skipped:
            self._skipped_total[reason] += n
            if epoch >= self._reported_through:
                self._skipped_open.setdefault(epoch, collections.Counter())[reason] += n
            else:
                # With workers, a record of an epoch already reported can arrive a
                # batch or two late: it is in the totals (metrics), not the report.
                log.info("data epoch %d: %d more skipped (%s) after its report", epoch, n, reason)
        for reason, origin in element.skipped_origins:
            seen = self._skip_origins.setdefault(reason, [])
            if len(seen) < 3 and origin not in seen:
                seen.append(origin)
        self._examples += element.n_examples
        self._tokens += element.n_tokens
        self._slots += element.n_slots
        if element.epoch > self._epoch:
            self._report_epochs_before(element.epoch)
            self._epoch = element.epoch

    def _report_epochs_before(self, end: int) -> None:
        for epoch in range(self._reported_through, end):
            counts = dict(sorted(self._skipped_open.pop(epoch, {}).items()))
            self.epoch_reports.append({"epoch": epoch, "skipped": counts})
            if counts:
                log.warning(
                    "data epoch %d: skipped %d records: %s",
                    epoch,
                    sum(counts.values()),
                    ", ".join(
                        f"{r}={n} (e.g. {', '.join(self._skip_origins.get(r, []))})"
                        for r, n in counts.items()
                    ),
                )
            else:
                log.info("data epoch %d: no records skipped", epoch)
        self._reported_through = max(self._reported_through, end)

    def skipped_examples(self) -> dict[str, list[str]]:
        """Up to 3 origins ("file:line") of skipped records per reason, to go and look at."""
        return {r: list(o) for r, o in sorted(self._skip_origins.items())}

    def skipped_counts(self) -> dict[str, int]:
        """Total skipped records per reason, over all epochs so far."""
        return dict(sorted(self._skipped_total.items()))

    def metrics(self) -> dict[str, float]:
        """Cumulative counters: data/skipped/<reason>, examples, tokens, padding, epoch."""
        out = {f"data/skipped/{r}": float(n) for r, n in self.skipped_counts().items()}
        out["data/skipped/total"] = float(sum(self._skipped_total.values()))
        out["data/examples"] = float(self._examples)
        out["data/tokens"] = float(self._tokens)
        out["data/batches"] = float(self._batches)
        out["data/epoch"] = float(self._epoch)
        out["data/padding_fraction"] = 1.0 - self._tokens / self._slots if self._slots else 0.0
        return out

    def get_state(self) -> dict:
        return {
            "version": STATE_VERSION,
            "iterator": self._iterator.get_state(),
            "order": self._lane.to_json(),
            "workers": self.cfg.worker_count,
            "skipped_total": dict(self._skipped_total),
            "skipped_open": {str(e): dict(c) for e, c in self._skipped_open.items()},
            "reported_through": self._reported_through,
            "examples": self._examples,
            "tokens": self._tokens,
            "slots": self._slots,
            "batches": self._batches,
            "epoch": self._epoch,
        }

    def set_state(self, state: dict) -> None:
        """Resume exactly: `state` is this process's, saved with the same process and worker counts."""
        state = _current(state, self.process_index, self.process_count)
        lane = LaneProgress.from_json(state["order"])
        if (lane.stride, lane.offset, state["workers"]) != (
            self.process_count,
            self.process_index,
            self.cfg.worker_count,
        ):
            raise ValueError(
                f"this data-iterator state is process {lane.offset}'s of {lane.stride} with "
                f"{state['workers']} data workers, not process {self.process_index}'s of "
                f"{self.process_count} with {self.cfg.worker_count}: use resume_from() with every process's state"
            )
        self._start(lane)
        self._iterator.set_state(state["iterator"])
        self._merge_counters([state])

    def resume_from(self, states: list[dict]) -> None:
        """Carry on from the states every process saved (in process order): exactly, when
        the process and worker counts are unchanged; otherwise from the global position every
        process had reached, skipping the records some had consumed beyond it (positions.py),
        so across the resume each record of the order is consumed once."""
        states = [_current(s, i, len(states)) for i, s in enumerate(states)]
        if len(states) == self.process_count and all(s["workers"] == self.cfg.worker_count for s in states):
            self.set_state(states[self.process_index])
            return
        saved = [LaneProgress.from_json(s["order"]) for s in states]
        self._start(continue_order(saved, self.process_index, self.process_count))
        # Counters carry over summed: process q of M takes those of saved processes q, q + M, ...
        self._merge_counters(states[self.process_index :: self.process_count])
        resume_at, skipped = consumed_beyond(saved)
        log.info(
            "data: %d process(es) with %d workers saved this state; process %d of %d (%d workers) "
            "continues at position %d of the record order, skipping %d records consumed beyond it",
            len(states),
            states[0]["workers"],
            self.process_index,
            self.process_count,
            self.cfg.worker_count,
            resume_at,
            skipped,
        )

    def _merge_counters(self, states: list[dict]) -> None:
        """The counters of `states` summed (none: zero), so the processes' totals carry over."""
        self._reset_counters()
        for state in states:
            self._skipped_total.update(state["skipped_total"])
            for e, counts in state["skipped_open"].items():
                self._skipped_open.setdefault(int(e), collections.Counter()).update(counts)
            self._examples += state["examples"]
            self._tokens += state["tokens"]
            self._slots += state["slots"]
            self._batches += state["batches"]
        # The epoch the lane starts in; a stream's length is not known ahead (counted from 0).
        here = self._lane.start // self.records_per_epoch if self.records_per_epoch else 0
        self._epoch = max((s["epoch"] for s in states), default=here)
        self._reported_through = min((s["reported_through"] for s in states), default=here)

    def close(self) -> None:
        """Stop worker processes (if any); the pipeline cannot be iterated after."""
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_pipeline(
    cfg: DataConfig,
    tokenizer,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Pipeline:
    """Build the pipeline for this process; defaults shard by `jax.process_index()`.

    `cfg.batch_size` is global: this process yields batch_size / process_count
    examples (or packed rows) per batch. With a finite `num_epochs`, processes can
    end up one batch apart (records do not always split evenly, and skips differ
    per shard); multi-host training should use `num_epochs: null` and stop by step.
    """
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")
    cfg.validate(process_count)

    if any(s.streaming for s in cfg.sources):  # then the only source (DataConfig.validate)
        stream = open_stream_order(cfg)
        records_per_epoch, user_vocab, condition_vocab = None, None, None  # a stream's length is unknown

        def lane_order(lane: LaneProgress) -> grain.IterDataset:
            return stream.lane(lane.start + lane.offset, lane.stride)
    else:
        order, records_per_epoch, user_vocab, condition_vocab = _mixture_order(cfg, process_index)

        def lane_order(lane: LaneProgress) -> grain.MapDataset:
            return order[lane.start + lane.offset :: lane.stride]

    processor = ExampleProcessor(cfg, tokenizer, user_vocab, condition_vocab)
    builder = make_builder(cfg, cfg.batch_size // process_count, tokenizer_pad_id(tokenizer))

    def build(lane: LaneProgress) -> grain.IterDataset:
        ds = lane_order(lane).map(_ProcessAtPosition(processor, lane.excluded))
        # A stream is read in order, by one reader per process or data worker.
        it_ds = (
            ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads))
            if isinstance(ds, grain.MapDataset)
            else ds
        )
        it_ds = BatchIterDataset(it_ds, builder)
        if cfg.worker_count > 0:
            _ensure_absl_flags_parsed()
            it_ds = it_ds.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=cfg.worker_count, per_worker_buffer_size=cfg.worker_buffer_size
                )
            )
        return it_ds

    return Pipeline(build, cfg, user_vocab, condition_vocab, records_per_epoch, process_index, process_count)


def _mixture_order(cfg: DataConfig, process_index: int):
    """(the global order of (position, record), records per epoch, user vocab, condition vocab)
    of random-access sources: the shuffled, repeated mixture."""
    sources, weights = [], []
    for i, s in enumerate(cfg.sources):
        opened = open_sources(s, f"data.sources[{i}]")
        sources += opened
        weights += [s.weight] * len(opened)
    user_vocab = _user_vocab(cfg, sources, process_index) if cfg.n_user_tokens > 0 else None
    condition_vocab = (
        Vocab(_scan_keys(sources, lambda row: condition_key(row, cfg.condition_field)), "condition")
        if cfg.condition_field
        else None
    )

    mixture = MixtureMapDataset(sources, weights, cfg.seed)
    if len(mixture) == 0:
        raise ValueError("data.sources: every source is empty")
    log.info("data mixture: %s", describe_mixture(sources, mixture.draws_per_epoch))
    order: grain.MapDataset = mixture
    if cfg.shuffle:
        order = order.shuffle(seed=cfg.seed)
    order = order.repeat(cfg.num_epochs).map_with_index(_at_position)
    return order, len(mixture), user_vocab, condition_vocab


def _at_position(position: int, record):
    return position, record


class _ProcessAtPosition:
    """The per-record map, keeping each record's global position; `excluded` positions (consumed
    before a resume) are not read again."""

    def __init__(self, processor: ExampleProcessor, excluded: frozenset[int]):
        self.processor, self.excluded = processor, excluded

    def __call__(self, element) -> Positioned:
        position, record = element
        if position in self.excluded:
            return Positioned(position, None)
        return Positioned(position, self.processor(record))


def _current(state: dict, process_index: int, process_count: int) -> dict:
    """A state in this version's form. Version 1 (no place in the record order) is read when
    it has one data reader per process (data.worker_count: 0), whose place follows from it."""
    if state.get("version") == STATE_VERSION:
        return state
    next_index = state.get("iterator", {}).get("parent", {}).get("next_index")
    if state.get("version") != 1 or next_index is None:
        raise ValueError(
            f"data-iterator state version {state.get('version')} (with data workers) cannot be "
            f"resumed by this alignjax (version {STATE_VERSION}): finish the stage with the "
            "release that saved it, or start the stage again"
        )
    lane = LaneProgress(0, process_count, process_index, process_index + next_index * process_count, set())
    return {**state, "version": STATE_VERSION, "order": lane.to_json(), "workers": 0}


def _ensure_absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; a program without absl.app never parsed them."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _user_vocab(cfg: DataConfig, sources, process_index: int) -> Vocab:
    """Load data.user_vocab_path if it exists; else build it from the data's user_ids
    and (process 0) write it there, so the run keeps the mapping it trained with."""
    if cfg.user_vocab_path and paths.exists(cfg.user_vocab_path):
        vocab = Vocab.load(cfg.user_vocab_path)
        log.info("P-DPO users: %d loaded from %s", len(vocab), cfg.user_vocab_path)
        return vocab
    vocab = Vocab(_scan_keys(sources, lambda row: row.get("user_id")), "user_id")
    log.info("P-DPO users: %d found in the data (index 0 = generic user)", len(vocab))
    if cfg.user_vocab_path and process_index == 0:
        vocab.save(cfg.user_vocab_path)
    return vocab


def _scan_keys(sources, key_fn) -> set[str]:
    """Every key in the data (one pass). Bad records are left for the main pass to count."""
    keys = set()
    for source in sources:
        for i in range(len(source)):
            try:
                key = key_fn(decode(source[i]))
            except BadRecord:
                continue
            if isinstance(key, (str, int)) and not isinstance(key, bool):
                keys.add(str(key))
    return keys


def save_state(pipeline: Pipeline, path: str) -> None:
    """Write `pipeline.get_state()` as JSON (atomically), next to a checkpoint."""
    atomic_write_json(path, pipeline.get_state())


def load_state(pipeline: Pipeline, path: str) -> None:
    with paths.open(path) as f:
        pipeline.set_state(json.load(f))
