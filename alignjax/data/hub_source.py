"""A Hugging Face Hub dataset as a random-access source (`data.train: hf:ORG/NAME`).

The dataset repository is fetched at its revision into the standard Hub cache
(`core.hub.download`: `HF_TOKEN`, `HF_HUB_OFFLINE`, `HF_ENDPOINT` as everywhere), then
read with `datasets.load_dataset` from that snapshot: its Arrow cache, memory-mapped, so
rows are read by index and shuffled, sharded across hosts and resumed exactly as every
other source's. The snapshot is a local directory named by the commit, so a worker
process or a resumed run loads the same rows without asking the Hub again, and the run's
data fingerprint covers the files' contents.

Records are named `hf:ORG/NAME[split]:ROW` (0-based) in errors. `columns` renames the
dataset's columns to the record keys (`alignjax.data.columns`). A dataset larger than the
disk is read as a stream instead (`streaming: true`, `alignjax.data.hub_stream`).
"""

from __future__ import annotations

import os

from alignjax.core import hub
from alignjax.data.config import SourceConfig
from alignjax.data.records import DataError, Origin, RawRecord


def is_hub_source(cfg: SourceConfig) -> bool:
    return cfg.path.startswith(hub.HUB_PREFIX)


class HubSource:
    """Rows of one split of a Hub dataset."""

    def __init__(self, cfg: SourceConfig, key: str):
        repo_id = hub.repo_id_of(cfg.path, f"{key}.path")
        self.split, self.config_name, self.data_files = cfg.split, cfg.name, cfg.data_files
        self.name = f"{cfg.path}[{cfg.split}]"
        # The snapshot directory: what `fingerprints` hashes, and what workers reload from.
        self.path = hub.download(
            repo_id,
            revision=cfg.revision,
            key=f"{key}.path",
            revision_key=f"{key}.revision",
            repo_type="dataset",
        )
        self.commit = os.path.basename(os.path.normpath(self.path))
        self._ds = self._load(key)
        self._len = len(self._ds)

    def _load(self, key: str = "data source"):
        return load_split(self.path, self.config_name, self.split, self.data_files, key, self.name)

    @property
    def column_names(self) -> list[str]:
        if self._ds is None:
            self._ds = self._load()
        return self._ds.column_names

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> RawRecord:
        if self._ds is None:  # a worker process: the snapshot and Arrow cache are local
            self._ds = self._load()
        return RawRecord(Origin(self.name, i, "index"), self._ds[i])

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_ds"}

    def __setstate__(self, state):
        self.__dict__.update(state, _ds=None)

    def __repr__(self):
        return f"HubSource({self.name!r} at {self.commit[:12]}, {len(self)} rows)"


def load_split(target: str, config_name, split: str, data_files, key: str, name: str, **options):
    """`datasets.load_dataset(target, ...)`; a split or config it does not have is a DataError
    naming `key`.split or `key`.name. `options`: load_dataset's (streaming, revision)."""
    import datasets

    try:
        return datasets.load_dataset(target, name=config_name, split=split, data_files=data_files, **options)
    except ValueError as e:  # datasets' own words name what exists
        text = str(e).splitlines()[0]
        if "split" in text.lower():
            what = f"{key}.split: {name}: {text}"
        elif "config" in text.lower():
            what = f"{key}.name={config_name}: {name.split('[')[0]}: {text}"
        else:
            raise
        raise DataError(what) from None
