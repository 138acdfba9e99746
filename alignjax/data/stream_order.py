"""The global record order of a streaming source, as a Grain `IterDataset` of (position, record).

Order: epoch after epoch, the stream as `datasets` yields it (the data files in the
repository's order at the pinned commit, each file's records in order). With data.shuffle,
each window of `shuffle_window` consecutive records (the last of an epoch may be shorter) is
permuted by an index shuffle seeded by (data.seed, epoch, window), so epochs differ and every
run with the same seed sees the same order. A window shuffle mixes records within a window
only: a stream sorted by topic stays sorted at scales above it. datasets' own shuffle buffer
is not used, because its state_dict does not hold the buffer, so a resume would not be
exact. Positions count records across epochs, as the map-style pipeline's order does; a
record's key and name are its row in the unshuffled stream (`hf:ORG/NAME[split]:ROW`), the
same in every epoch.

Sharding: process p of P emits positions start + p, start + p + P, ... (with data workers,
worker w of W every W-th of those, `set_slice`). Every process reads the whole stream and
keeps its share, so the order does not depend on the number of processes and a resume on
another number carries on from the same positions (`Pipeline.resume_from`); the price is
that every process downloads every record (each decodes and tokenises only its own).

Resume: the iterator's state is the window it reads (its epoch, where the window starts, and
the stream's place at the window's first record, `hub_stream.StreamCursor.state`) and the
next position to emit. `set_state` reopens the stream at the window, reads it again, and goes
on at that position: exact, re-reading at most one window. A lane that starts at a position
G > 0 with no state (a resume on another number of processes) reads the stream from its start
up to G, tokenising nothing on the way.
"""

from __future__ import annotations

import logging

import grain
import numpy as np
from grain.experimental import index_shuffle

from alignjax.data.config import DataConfig
from alignjax.data.hub_stream import HubStream
from alignjax.data.records import DataError, Origin, RawRecord, record_key

log = logging.getLogger("alignjax.data")

DEFAULT_SHUFFLE_WINDOW = 10_000


def open_stream_order(cfg: DataConfig) -> StreamOrder:
    """The order of `cfg`'s source, a streaming one (`DataConfig.validate`: then the only one)."""
    (source,) = cfg.sources
    stream = HubStream(source, "data.sources[0]")
    stream.check_columns()
    window = source.shuffle_window or DEFAULT_SHUFFLE_WINDOW
    log.info(
        "data: %r streams in its own order%s",
        stream,
        f", shuffled within windows of {window} records" if cfg.shuffle else "",
    )
    return StreamOrder(stream, window=window, seed=cfg.seed, shuffle=cfg.shuffle, num_epochs=cfg.num_epochs)


class StreamOrder(grain.IterDataset):
    """Positions first, first + step, ... of the global order of `stream` (a `HubStream`)."""

    def __init__(
        self, stream, *, window: int, seed: int, shuffle: bool, num_epochs: int | None, first=0, step=1
    ):
        super().__init__()
        self.stream, self.window, self.seed = stream, window, seed
        self.shuffle, self.num_epochs = shuffle, num_epochs
        self.first, self.step = first, step

    def lane(self, first: int, step: int) -> StreamOrder:
        """The positions first, first + step, ... of the same order."""
        return StreamOrder(
            self.stream,
            window=self.window,
            seed=self.seed,
            shuffle=self.shuffle,
            num_epochs=self.num_epochs,
            first=first,
            step=step,
        )

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """Grain's data worker w of W reads every W-th position of the lane, from the w-th."""
        if sequential_slice:
            raise ValueError("a streaming source is read by interleaved positions, not in blocks")
        self.first += (sl.start or 0) * self.step
        self.step *= sl.step or 1

    def __iter__(self):
        return _StreamOrderIterator(self)

    def __str__(self):
        return f"StreamOrder({self.stream!r}, positions {self.first}::{self.step})"


class _StreamOrderIterator(grain.DatasetIterator):
    def __init__(self, order: StreamOrder):
        super().__init__()
        self._order = order
        self.set_state(
            {
                "commit": order.stream.commit,
                "epoch": 0,
                "epoch_start": 0,  # the position of the epoch's first record
                "window_start": 0,  # the window's first row in the epoch
                "stream_state": None,  # the stream's place at that row (None: the epoch's start)
                "next": order.first,
            }
        )

    def __next__(self):
        order = self._order
        while True:
            if self._rows is None:
                self._read_window()
            j = self._next - self._epoch_start - self._window_start
            if j < len(self._rows):
                position = self._next
                self._next += order.step
                return position, self._record(j)
            if len(self._rows) < order.window:  # the stream ended within this window
                self._next_epoch()
            else:
                self._window_start += len(self._rows)
                self._stream_state, self._rows = self._after, None

    def _read_window(self) -> None:
        order = self._order
        if self._cursor is None:
            self._cursor = order.stream.cursor(self._stream_state)
        self._rows = self._cursor.take(order.window)
        self._after = self._cursor.state() if len(self._rows) == order.window else None
        entropy = [order.seed, self._epoch, self._window_start // order.window]
        self._shuffle_seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])

    def _next_epoch(self) -> None:
        length = self._window_start + len(self._rows)
        if length == 0:
            raise DataError(f"{self._order.stream.name}: the stream holds no records")
        if self._order.num_epochs is not None and self._epoch + 1 >= self._order.num_epochs:
            raise StopIteration
        self._epoch += 1
        self._epoch_start += length
        self._window_start, self._stream_state = 0, None
        self._cursor = self._rows = None

    def _record(self, j: int) -> RawRecord:
        n = len(self._rows)
        i = j
        if self._order.shuffle and n > 1:
            i = int(index_shuffle(j, max_index=n - 1, seed=self._shuffle_seed, rounds=4))
        row = self._window_start + i
        origin = Origin(self._order.stream.name, row, "index")
        return RawRecord(origin, dict(self._rows[i]), epoch=self._epoch, key=record_key(0, row))

    def get_state(self) -> dict:
        return {
            "commit": self._order.stream.commit,
            "epoch": self._epoch,
            "epoch_start": self._epoch_start,
            "window_start": self._window_start,
            "stream_state": self._stream_state,
            "next": self._next,
        }

    def set_state(self, state: dict) -> None:
        stream = self._order.stream
        if "commit" not in state:
            raise ValueError(
                f"this data-iterator state was saved reading {stream.name} by index, not as a stream: "
                "finish the stage with the streaming setting it started with"
            )
        if state["commit"] != stream.commit:
            raise ValueError(
                f"this data-iterator state was saved reading {stream.name} at commit {state['commit']}, "
                f"but its revision names commit {stream.commit} now: set the source's revision to "
                f"{state['commit']} to resume exactly"
            )
        self._epoch, self._epoch_start = state["epoch"], state["epoch_start"]
        self._window_start, self._stream_state = state["window_start"], state["stream_state"]
        self._next = state["next"]
        self._cursor = self._rows = self._after = self._shuffle_seed = None
