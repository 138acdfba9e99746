"""Several sources as one Grain `MapDataset`, each record repeated `weight` times per epoch.

An epoch lays the sources end to end, source i contributing
`round(len_i * weight_i)` draws: whole passes over it, then (for a fractional
weight) a seeded random subset that changes every epoch. The global shuffle
that follows mixes the sources. With all weights 1 an epoch is exactly every
record once, which is what "never silently drop a record" needs.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import numpy as np
from grain.experimental import index_shuffle

from alignjax.data.records import MAX_SOURCE_ROWS, MAX_SOURCES, record_key


class MixtureMapDataset(grain.MapDataset):
    """Index `epoch * len + j` -> the j-th draw of that epoch, tagged with its epoch and
    its record key (source, row): the same record has the same key in every epoch."""

    def __init__(self, sources: Sequence, weights: Sequence[float], seed: int):
        super().__init__()
        self._sources = list(sources)
        self._lengths = np.array([len(s) for s in sources], np.int64)
        _check_keyable(self._sources, self._lengths)
        self._draws = np.array(
            [max(1, round(n * w)) if n else 0 for n, w in zip(self._lengths, weights, strict=True)],
            np.int64,
        )
        self._offsets = np.concatenate([[0], np.cumsum(self._draws)])
        self._seed = seed

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def draws_per_epoch(self) -> list[int]:
        return self._draws.tolist()

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, j = divmod(int(index), len(self))
        i = int(np.searchsorted(self._offsets, j, side="right") - 1)
        k = j - int(self._offsets[i])
        n = int(self._lengths[i])
        full_passes = int(self._draws[i]) // n
        pass_index, r = divmod(k, n)
        if pass_index >= full_passes:
            # The fractional pass: a random subset, different each epoch.
            seed = (self._seed * 1_000_003 + epoch * 7919 + i) % 2**32
            r = int(index_shuffle(r, max_index=n - 1, seed=seed, rounds=4))
        record = self._sources[i][r]
        return dataclasses.replace(record, epoch=epoch, key=record_key(i, r))

    def __str__(self) -> str:
        return f"MixtureMapDataset({len(self._sources)} sources, draws={self.draws_per_epoch})"


def _check_keyable(sources: Sequence, lengths: np.ndarray) -> None:
    """Every row gets a record key: checked here, at start-up, not when a worker reaches it."""
    if len(sources) > MAX_SOURCES:
        raise ValueError(
            f"data.sources: {len(sources):,} data files, but record keys name at most "
            f"{MAX_SOURCES:,}; merge small files"
        )
    for source, n in zip(sources, lengths):
        if n > MAX_SOURCE_ROWS:
            raise ValueError(
                f"data.sources: {source!r} has {int(n):,} rows, but record keys name at most "
                f"{MAX_SOURCE_ROWS:,} per file; split it into several files"
            )


def describe_mixture(sources: Sequence, draws: Sequence[int]) -> str:
    total = max(1, sum(draws))
    return "; ".join(
        f"{s!r}: {d} per epoch ({100 * d / total:.1f}%)" for s, d in zip(sources, draws, strict=True)
    )
