"""Where each process stands in the global record order, and how a different number of
processes carries on from there (a run resumed on another slice, or with other workers).

The global order is the sequence of positions g = 0, 1, 2, ... of the shuffled, repeated
mixture that `make_pipeline` builds: a function of the data, the weights and data.seed
only, never of the number of processes or workers. Process p of P reads its lane, the
positions start + p, start + p + P, ... (start is 0 unless a resume moved it).

A process has consumed a position once the record there went into a batch it returned, or
was dropped while one was built (a bad record under `skip`, a length drop). A record read
but held back for the next batch (it did not fit) is not consumed. With worker processes
(each batching every W-th record of the lane) or held-back records, what a process has
consumed is not a prefix of its lane: `LaneProgress` keeps the first position it has not
consumed (`frontier`) and the consumed ones beyond it (`done`).

`continue_order` turns every saved process's progress into the lane of process q of M:
every position below G = the smallest frontier was consumed, so it starts at G; of the
positions at or above G, the ones some process had consumed are skipped. Across the
resume, every position is consumed exactly once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Positioned:
    """A record's outcome at its position in the global order. `item` is the tokenized
    example, a `Skipped`, or None for a position consumed before a resume (not read again)."""

    position: int
    item: Any


@dataclasses.dataclass
class LaneProgress:
    start: int  # every position below it was consumed before this lane began
    stride: int  # the number of processes reading the order
    offset: int  # this process's index: its lane is start + offset + k * stride
    frontier: int  # the lane's first position not consumed
    done: set[int]  # consumed positions of the lane beyond the frontier
    # Positions consumed before this lane began, which its reader skips. Kept for the lane's
    # life (the frontier can pass one before the worker that reads it gets there).
    excluded: frozenset[int] = frozenset()

    @classmethod
    def fresh(cls, start: int, stride: int, offset: int, excluded: Iterable[int] = ()) -> LaneProgress:
        """A lane nothing of which has been read; `excluded` positions count as consumed."""
        excluded = frozenset(excluded)
        lane = cls(start, stride, offset, start + offset, set(excluded), excluded)
        lane._advance()
        return lane

    def consume(self, positions: Iterable[int]) -> None:
        self.done.update(positions)
        self._advance()

    def _advance(self) -> None:
        while self.frontier in self.done:
            self.done.remove(self.frontier)
            self.frontier += self.stride

    def consumed_from(self, first: int) -> list[int]:
        """The lane's consumed positions >= `first` (which is at most the frontier)."""
        lane_first = self.start + self.offset
        steps = max(0, -(-(first - lane_first) // self.stride))
        return [*range(lane_first + steps * self.stride, self.frontier, self.stride), *self.done]

    def to_json(self) -> dict:
        return {
            "start": self.start,
            "stride": self.stride,
            "offset": self.offset,
            "frontier": self.frontier,
            "done": sorted(self.done),
            "excluded": sorted(self.excluded),
        }

    @classmethod
    def from_json(cls, data: dict) -> LaneProgress:
        return cls(
            data["start"],
            data["stride"],
            data["offset"],
            data["frontier"],
            set(data["done"]),
            frozenset(data["excluded"]),
        )


def continue_order(saved: list[LaneProgress], process_index: int, process_count: int) -> LaneProgress:
    """The lane of process `process_index` of `process_count`, continuing from every process's
    saved progress (one lane per process of the run that saved them, in process order)."""
    stride = len(saved)
    if [(lane.stride, lane.offset, lane.start) for lane in saved] != [
        (stride, p, saved[0].start) for p in range(stride)
    ]:
        raise ValueError(
            "the checkpoint's data-iterator states do not describe one run's processes "
            f"({[lane.to_json() for lane in saved]}); the checkpoint is damaged"
        )
    resume_at = min(lane.frontier for lane in saved)
    consumed = {g for lane in saved for g in lane.consumed_from(resume_at)}
    mine = [g for g in consumed if (g - resume_at) % process_count == process_index]
    return LaneProgress.fresh(resume_at, process_count, process_index, mine)


def consumed_beyond(saved: list[LaneProgress]) -> tuple[int, int]:
    """(G, how many positions at or above G were consumed): what a resume skips, for its log."""
    resume_at = min(lane.frontier for lane in saved)
    return resume_at, len({g for lane in saved for g in lane.consumed_from(resume_at)})
