"""The batching stage as a checkpointable Grain `IterDataset`.

It sits after the per-record map and before `mp_prefetch`, so each worker
process batches its own slice of records. Dropped records travel here as
`Skipped` and are counted into the next batch's `BatchElement.skipped`: that is
how counts made in worker processes reach the main process exactly once. Records
arrive `Positioned` (their place in the global record order); each element names
the positions it consumed, which is how the main process knows where it stands
(`positions.py`) whatever the number of workers.

Checkpointing: an example that did not fit the current batch is held back and
the state names the parent's position *before* it, so a restored iterator
reads it again. The state is the parent's state only (small, JSON-able).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
from typing import Any

import grain

from alignjax.data.records import DataError, Skipped


@dataclasses.dataclass(frozen=True)
class BatchElement:
    """What the batching stage emits: a batch (None if all records were dropped)."""

    batch: Any
    skipped: tuple  # ((epoch, reason, count), ...) since the previous element
    skipped_origins: tuple  # ((reason, "file:line"), ...): the first of each reason
    n_examples: int
    n_tokens: int  # non-padding tokens
    n_slots: int  # tokens of the batch arrays, padding included
    epoch: int  # the largest epoch among this element's records (-1: none)
    positions: tuple[int, ...] = ()  # global positions of the records it consumed (batched or dropped)


class BatchIterDataset(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, builder):
        super().__init__(parent)
        self._builder = builder

    def __iter__(self):
        return _BatchDatasetIterator(self._parent.__iter__(), copy.deepcopy(self._builder))

    def __str__(self):
        return f"BatchIterDataset({type(self._builder).__name__})"


class _BatchDatasetIterator(grain.DatasetIterator):
    def __init__(self, parent, builder):
        super().__init__(parent)
        self._builder = builder
        self._held = None  # Positioned example read but not placed: it opens the next batch
        self._held_state = None  # parent state before `_held` was read
        self._exhausted = False
        self._produced = False  # whether this iterator has placed any example yet

    def __next__(self) -> BatchElement:
        if self._exhausted:
            raise StopIteration
        builder = self._builder
        builder.reset()
        skipped = collections.Counter()
        origins = {}
        epoch = -1
        positions = []
        if self._held is not None:
            builder.add(self._held.item)
            epoch = self._held.item.epoch
            positions.append(self._held.position)
            self._held = self._held_state = None
        while not builder.full:
            state = self._parent.get_state()
            try:
                positioned = next(self._parent)
            except StopIteration:
                self._exhausted = True
                break
            element = positioned.item
            if element is None:  # consumed before a resume: counted there already
                continue
            if isinstance(element, Skipped):
                if not self._produced and skipped and element.epoch > min(e for e, _ in skipped) + 1:
                    # A whole epoch went by and this share of the data has never held an
                    # example: the later ones will not either.
                    reasons = sorted({r for _, r in skipped})
                    raise DataError(
                        f"no record of the data is left to batch: every record of an epoch was "
                        f"skipped or dropped ({', '.join(reasons)}; e.g. {origins[reasons[0]]})"
                    )
                skipped[(element.epoch, element.reason)] += 1
                origins.setdefault(element.reason, element.origin)
                epoch = max(epoch, element.epoch)
                positions.append(positioned.position)
                continue
            if not builder.add(element):
                self._held, self._held_state = positioned, state
                break
            epoch = max(epoch, element.epoch)
            positions.append(positioned.position)
        if builder.empty and not skipped:
            raise StopIteration
        self._produced = self._produced or not builder.empty
        batch = None if builder.empty else builder.build()
        tokens = getattr(batch, "segment_ids_BxL", None)
        return BatchElement(
            batch=batch,
            skipped=tuple((e, r, n) for (e, r), n in sorted(skipped.items())),
            skipped_origins=tuple(sorted(origins.items())),
            n_examples=len(builder.examples),
            n_tokens=0 if tokens is None else int((tokens > 0).sum()),
            n_slots=0 if tokens is None else int(tokens.size),
            epoch=epoch,
            positions=tuple(positions),
        )

    def get_state(self) -> dict:
        if self._held is not None:
            return {"parent": self._held_state}
        return {"parent": self._parent.get_state()}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._held = self._held_state = None
        self._exhausted = False
