"""A Hub dataset read as a stream (`streaming: true`), for data sets larger than the disk.

`datasets.load_dataset(ORG/NAME, streaming=True)` at the commit the revision names when the
source opens, read over HTTP from the Hub (`HF_ENDPOINT`, `HF_TOKEN`) file by file: nothing
is kept beyond what the reader holds. The stream's order, its sharding across processes and
its resume are `stream_order.StreamOrder`'s.

A place in the stream is datasets' `IterableDataset.state_dict()`, which names the data file
and the record within it; `load_state_dict` reopens that file and skips to the record,
exactly. (`skip(n)` would be exact too, but reads the whole stream again up to n.)

A stream has no length and no random access. What reads a data set by index reads a
prefix instead: `StreamPrefix`, the first `check_records` records, which `open_sources`
returns for a streaming source, so the data check reads those (not the whole stream) and
the data fingerprint covers them and the commit. The prefix is kept in the datasets cache
(`HF_DATASETS_CACHE`) under the commit, so a resumed run or a worker process reads it from
disk.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import os

from alignjax.core import hub
from alignjax.core.fileio import atomic_write_json
from alignjax.data.columns import ColumnMap
from alignjax.data.config import SourceConfig
from alignjax.data.hub_source import load_split
from alignjax.data.records import Origin, RawRecord

log = logging.getLogger("alignjax.data")

DEFAULT_CHECK_RECORDS = 10_000


class HubStream:
    """One split of a Hub dataset at one commit, read onward from a place (`cursor`)."""

    def __init__(self, cfg: SourceConfig, key: str):
        self.repo_id = hub.repo_id_of(cfg.path, f"{key}.path")
        self.split, self.config_name, self.data_files = cfg.split, cfg.name, cfg.data_files
        self.name = f"{cfg.path}[{cfg.split}]"
        self.commit = _commit_of(self.repo_id, cfg.revision, key)
        self.column_map = ColumnMap.of(cfg, key)
        self.check_records = cfg.check_records or DEFAULT_CHECK_RECORDS
        self._ds = self._load(key)

    def _load(self, key: str = "data source"):
        return load_split(
            self.repo_id,
            self.config_name,
            self.split,
            self.data_files,
            key,
            self.name,
            streaming=True,
            revision=self.commit,
        )

    def cursor(self, state: dict | None = None, *, renamed: bool = True) -> StreamCursor:
        """A reader from `state` (a `StreamCursor.state()`; None: the stream's start), its rows'
        keys renamed by the source's columns unless `renamed` is false."""
        if self._ds is None:  # a worker process
            self._ds = self._load()
        return StreamCursor(self._ds, state, self.column_map if renamed else None)

    def check_columns(self) -> None:
        """Stop on a mapped column the stream does not have (its first record's, if datasets
        does not know the features without reading)."""
        if self.column_map is None:
            return
        names = self._ds.column_names
        if names is None:
            first = self.cursor(renamed=False).take(1)
            names = list(first[0]) if first else None
        if names is not None:
            self.column_map.check(names, self.name)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_ds"}

    def __setstate__(self, state):
        self.__dict__.update(state, _ds=None)

    def __repr__(self):
        return f"HubStream({self.name!r} at {self.commit[:12]})"


class StreamCursor:
    """Reads a stream onward from a place; `state()` is the place after the rows read so far."""

    def __init__(self, ds, state: dict | None, column_map: ColumnMap | None):
        self._ds = copy.deepcopy(ds)  # datasets keeps the place in the dataset object
        if state is not None:
            self._ds.load_state_dict(state)
        self._rows = iter(self._ds)
        self._column_map = column_map

    def take(self, n: int) -> list[dict]:
        """The next `n` rows (fewer at the stream's end)."""
        rows = list(itertools.islice(self._rows, n))
        return [self._column_map.rename(r) for r in rows] if self._column_map else rows

    def state(self) -> dict:
        return self._ds.state_dict()


class StreamPrefix:
    """The first `check_records` records of a stream, by index (`hf:ORG/NAME[split]:ROW`)."""

    def __init__(self, stream: HubStream):
        import datasets

        self.name, self.split = stream.name, stream.split
        identity = {
            "dataset": stream.repo_id,
            "commit": stream.commit,
            "split": stream.split,
            "name": stream.config_name,
            "data_files": stream.data_files,
            "records": stream.check_records,
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        # `path` is what the data fingerprint hashes: the rows and the commit they come from.
        self.path = os.path.join(
            str(datasets.config.HF_DATASETS_CACHE), "alignjax_stream_prefixes", f"{digest[:24]}.json"
        )
        if not os.path.exists(self.path):
            rows = stream.cursor(renamed=False).take(stream.check_records)
            # Columns JSON has no type for (timestamps, bytes) are kept as text: the record
            # keys the check reads are text or messages.
            atomic_write_json(self.path, {**identity, "rows": rows}, default=str)
            log.info(
                "%s streams: the data check reads its first %d records (%s), not the whole stream",
                self.name,
                len(rows),
                self.path,
            )
        self._rows = self._read()

    def _read(self) -> list:
        with open(self.path, encoding="utf-8") as f:
            return json.load(f)["rows"]

    def __len__(self) -> int:
        if self._rows is None:
            self._rows = self._read()
        return len(self._rows)

    def __getitem__(self, i: int) -> RawRecord:
        if self._rows is None:
            self._rows = self._read()
        return RawRecord(Origin(self.name, i, "index"), dict(self._rows[i]))

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_rows"}

    def __setstate__(self, state):
        self.__dict__.update(state, _rows=None)

    def __repr__(self):
        return f"StreamPrefix({self.name!r}, first {len(self)} records)"


def _commit_of(repo_id: str, revision: str | None, key: str) -> str:
    """The commit SHA `revision` (None: the default branch) names now."""
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(repo_id, revision=revision).sha
    except Exception as e:  # each Hub failure becomes one line naming the key; others are bugs
        error = hub.hub_error(e, repo_id, revision, f"{key}.path", f"{key}.revision", "dataset")
        if error is None:
            raise
        raise error from None
