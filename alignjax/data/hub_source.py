"""A Hugging Face Hub dataset as a random-access source (`data.train: hf:ORG/NAME`).

The dataset repository is fetched at its revision into the standard Hub cache
(`core.hub.download`: `HF_TOKEN`, `HF_HUB_OFFLINE`, `HF_ENDPOINT` as everywhere), then
read with `datasets.load_dataset` from that snapshot: its Arrow cache, memory-mapped, so
rows are read by index and shuffled, sharded across hosts and resumed exactly as every
other source's. The snapshot is a local directory named by the commit, so a worker
process or a resumed run loads the same rows without asking the Hub again, and the run's
data fingerprint covers the files' contents.

Records are named `hf:ORG/NAME[split]:ROW` (0-based) in errors. `columns` renames the
dataset's columns to the record keys (`{chosen: better_response}`: the dataset's
`better_response` is the record's `chosen`).
"""

from __future__ import annotations

import os
from typing import Any

from alignjax.core import hub
from alignjax.data.config import SourceConfig
from alignjax.data.records import DataError, Origin, RawRecord


def is_hub_source(cfg: SourceConfig) -> bool:
    return cfg.path.startswith(hub.HUB_PREFIX)


class HubSource:
    """Rows of one split of a Hub dataset, keys renamed by `columns`."""

    def __init__(self, cfg: SourceConfig, key: str):
        repo_id = hub.repo_id_of(cfg.path, f"{key}.path")
        self.repo_id, self.split, self.config_name = repo_id, cfg.split, cfg.name
        self.data_files, self.columns = cfg.data_files, dict(cfg.columns or {})
        self.name = f"{cfg.path}[{cfg.split}]"
        # The snapshot directory: what `fingerprints` hashes, and what workers reload from.
        self.path = hub.download(
            repo_id, revision=cfg.revision, key=f"{key}.path", revision_key=f"{key}.revision", repo_type="dataset"
        )
        self.commit = os.path.basename(os.path.normpath(self.path))
        self._ds = self._load(key)
        self._len = len(self._ds)
        missing = sorted(set(self.columns.values()) - set(self._ds.column_names))
        if missing:
            raise DataError(
                f"{key}.columns: {self.name} has no column {', '.join(map(repr, missing))}; "
                f"its columns are {self._ds.column_names}"
            )

    def _load(self, key: str = "data source"):
        import datasets

        try:
            return datasets.load_dataset(
                self.path, name=self.config_name, split=self.split, data_files=self.data_files
            )
        except ValueError as e:  # datasets' own words name what exists
            text = str(e).splitlines()[0]
            if "split" in text.lower():
                what = f"{key}.split: {self.name}: {text}"
            elif "config" in text.lower():
                what = f"{key}.name={self.config_name}: hf:{self.repo_id}: {text}"
            else:
                raise
            raise DataError(what) from None

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> RawRecord:
        if self._ds is None:  # a worker process: the snapshot and Arrow cache are local
            self._ds = self._load()
        row: dict[str, Any] = self._ds[i]
        for record_key, column in self.columns.items():
            row[record_key] = row.pop(column)
        return RawRecord(Origin(self.name, i, "index"), row)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_ds"}

    def __setstate__(self, state):
        self.__dict__.update(state, _ds=None)

    def __repr__(self):
        return f"HubSource({self.name!r} at {self.commit[:12]}, {len(self)} rows)"
