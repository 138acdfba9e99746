"""Precomputed reference tables: one file per model and data fingerprint.

  <run_dir>/reference_logps/<fingerprint>.npz   record_key_N, chosen_N, rejected_N
  <run_dir>/reference_logps/<fingerprint>.json  what the fingerprint was made of

A trainer whose config has drifted finds no table of its own name and is told what
changed since the closest table was written.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from alignjax.core import paths
from alignjax.data.records import split_record_key
from alignjax.core.fileio import atomic_open, atomic_write_json
from alignjax.train.fingerprints import differences, fingerprint

TABLE_DIR = "reference_logps"


@dataclasses.dataclass(frozen=True)
class ReferenceTable:
    path: str
    record_key_N: np.ndarray  # int64, sorted
    chosen_N: np.ndarray  # float32, reference log-prob of the chosen response (summed)
    rejected_N: np.ndarray  # float32
    sources: tuple[str, ...]  # source names in pipeline order, to name a missing record
    command: str

    def attach(self, batch):
        """The batch with `ref_chosen_logps_P` / `ref_rejected_logps_P` looked up by record key."""
        keys_P = batch.record_key_P
        if keys_P is None:
            raise ValueError(
                "loss.reference=precomputed needs record keys in the batch; this data source has none"
            )
        at_P = np.minimum(np.searchsorted(self.record_key_N, keys_P), max(len(self.record_key_N) - 1, 0))
        found_P = (
            self.record_key_N[at_P] == keys_P if len(self.record_key_N) else np.zeros(keys_P.shape, bool)
        )
        missing_P = (batch.pair_valid_P > 0) & ~found_P
        if missing_P.any():
            key = int(keys_P[np.argmax(missing_P)])
            source, row = split_record_key(key)
            name = self.sources[source] if 0 <= source < len(self.sources) else f"source {source}"
            raise ValueError(
                f"{self.path}: no reference log-probs for the pair from {name} row {row} (record key {key}); "
                f"the table does not cover the data this run reads. Run `{self.command}` again"
            )
        return dataclasses.replace(
            batch,
            ref_chosen_logps_P=np.where(found_P, self.chosen_N[at_P], 0.0).astype(np.float32),
            ref_rejected_logps_P=np.where(found_P, self.rejected_N[at_P], 0.0).astype(np.float32),
        )


def table_path(run_dir: str, fp: str) -> str:
    return paths.join(run_dir, TABLE_DIR, f"{fp}.npz")


def load_table(run_dir: str, model_id: dict, data_id: dict, *, what: str, command: str) -> ReferenceTable:
    """The table for this model and data, or an error that says what to run (and what changed)."""
    fp = fingerprint(model_id, data_id)
    path = table_path(run_dir, fp)
    names = tuple(s["name"] for s in data_id["sources"])
    if paths.exists(path):
        with paths.open(path, "rb") as fh, np.load(fh) as f:
            return ReferenceTable(path, f["record_key_N"], f["chosen_N"], f["rejected_N"], names, command)
    message = f"{what}: loss.reference=precomputed, but there is no table {path} for its model and data"
    stale = _closest_table(paths.dirname(path), what, {"model": model_id, "data": data_id})
    if stale is not None:
        other, changes = stale
        message += f"; the table written for it before ({other}) is stale: " + "; ".join(changes[:6])
    raise ValueError(f"{message}. Run `{command}` to compute it, then train again")


def _closest_table(directory: str, what: str, identity: dict):
    """(path, differences) of the newest table written for the same stage and set, if any."""
    if not paths.isdir(directory):
        return None
    described = []
    for name in paths.listdir(directory):
        if not name.endswith(".json"):
            continue
        with paths.open(paths.join(directory, name)) as f:
            info = json.load(f)
        if info.get("what") == what:
            described.append((paths.getmtime(paths.join(directory, name)), name, info))
    if not described:
        return None
    _, name, info = max(described)
    changes = differences({"model": info["model"], "data": info["data"]}, identity, "")
    return paths.join(directory, name[: -len(".json")] + ".npz"), [c.lstrip(".") for c in changes]


def write_json(path: str, value: Any) -> None:
    atomic_write_json(path, value, indent=1, sort_keys=True, default=str)


def write_table(path: str, keys_N, chosen_N, rejected_N, description: dict) -> None:
    # The description first: a table without one would still be found, but not explained.
    write_json(path[: -len(".npz")] + ".json", description)
    with atomic_open(path, "wb") as f:
        np.savez(f, record_key_N=keys_N, chosen_N=chosen_N, rejected_N=rejected_N)
