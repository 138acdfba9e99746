"""Random-access sources: `len()` and `[i] -> RawRecord`, so Grain can shuffle and shard.

Every source is cheap to pickle (worker processes get a copy) and opens its files
lazily in the process that reads. Decoding (JSON, UTF-8) is left to `formats.py`
so that a bad line is an error naming that line, not a failure to open the file.

ArrayRecord encoding: one UTF-8 JSON object per record (`write_array_record`).

A file or saved dataset in a bucket (`gs://...`) is copied once into the local cache
(`paths.local_copy`) and read from there: random access by record would otherwise be one
request per record. Records still name the URL they came from.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Iterable

import numpy as np

from alignjax.core import paths
from alignjax.data.config import SourceConfig
from alignjax.data.columns import ColumnMap, ColumnsSource
from alignjax.data.hub_source import HubSource, is_hub_source
from alignjax.data.hub_stream import HubStream, StreamPrefix
from alignjax.data.records import DataError, Origin, RawRecord

_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".array_record": "array_record",
    ".arrayrecord": "array_record",
}


class JsonlSource:
    """One JSON object per line. Empty lines hold no record and are not counted."""

    def __init__(self, path: str, name: str | None = None):
        self.path, self.name = path, name or path
        self._starts, self._ends, self._line_numbers = _index_lines(path)
        self._fd, self._pid = None, None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i: int) -> RawRecord:
        start, end = int(self._starts[i]), int(self._ends[i])
        # pread keeps no file position, so Grain's reader threads can share the fd.
        data = os.pread(self._open(), end - start, start)
        return RawRecord(Origin(self.name, int(self._line_numbers[i]), "line"), data)

    def _open(self) -> int:
        if self._pid != os.getpid():  # first read in this (worker) process
            with self._lock:
                if self._pid != os.getpid():
                    self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_fd", "_pid", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state, _fd=None, _pid=None, _lock=threading.Lock())

    def __repr__(self):
        return f"JsonlSource({self.name!r}, {len(self)} records)"


def _index_lines(path: str):
    """Byte ranges and 1-based line numbers of the non-empty lines of a file."""
    size = os.path.getsize(path)
    if size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    newlines = np.flatnonzero(buf == ord("\n"))
    ends = newlines if size - 1 in newlines[-1:] else np.append(newlines, size)
    starts = np.concatenate([[0], newlines + 1])[: len(ends)]
    # A trailing "\r" belongs to the line ending, not to the JSON.
    ends = ends - (buf[np.maximum(ends - 1, 0)] == ord("\r")) * (ends > starts)
    keep = ends > starts
    line_numbers = np.arange(1, len(starts) + 1)
    return starts[keep], ends[keep], line_numbers[keep]


class ParquetSource:
    """A Parquet file, loaded lazily as an Arrow table in each reading process.

    Arrow holds the columns compactly; rows become dicts only when read. A file
    larger than memory should be converted to ArrayRecord (`write_array_record`).
    """

    def __init__(self, path: str, name: str | None = None):
        import pyarrow.parquet as pq  # the `parquet` dependency, only when used

        self.path, self.name = path, name or path
        metadata = pq.ParquetFile(path).metadata
        self._len = metadata.num_rows
        self.column_names = metadata.schema.to_arrow_schema().names
        self._table = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> RawRecord:
        if self._table is None:
            import pyarrow.parquet as pq

            with self._lock:
                if self._table is None:
                    self._table = pq.read_table(self.path)
        row = self._table.slice(i, 1).to_pylist()[0]
        return RawRecord(Origin(self.name, i, "row"), row)

    def __getstate__(self):
        return {"path": self.path, "name": self.name, "_len": self._len, "column_names": self.column_names}

    def __setstate__(self, state):
        self.__dict__.update(state, _table=None, _lock=threading.Lock())

    def __repr__(self):
        return f"ParquetSource({self.name!r}, {len(self)} rows)"


class HFDiskSource:
    """A `datasets.Dataset` written with `save_to_disk` (memory-mapped Arrow)."""

    def __init__(self, path: str, split: str | None = None, name: str | None = None):
        self.path, self.split, self.name = path, split, name or path
        self._len = len(self._load())

    def _load(self):
        import datasets  # the `hf` dependency, only when used

        ds = datasets.load_from_disk(self.path)
        if isinstance(ds, datasets.DatasetDict):
            if self.split not in ds:
                raise DataError(
                    f"{self.name}: a saved DatasetDict without split {self.split!r}; "
                    f"set data.sources[].split to one of {sorted(ds)}"
                )
            ds = ds[self.split]
        return ds

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> RawRecord:
        if getattr(self, "_ds", None) is None:
            self._ds = self._load()
        return RawRecord(Origin(self.name, i, "row"), self._ds[i])

    def __getstate__(self):
        return {"path": self.path, "split": self.split, "name": self.name, "_len": self._len}

    def __repr__(self):
        return f"HFDiskSource({self.name!r}, {len(self)} rows)"


class ArrayRecordSource:
    """An ArrayRecord file whose records are UTF-8 JSON objects."""

    def __init__(self, path: str, name: str | None = None):
        from grain.sources import ArrayRecordDataSource

        self.path, self.name = path, name or path
        self._source = ArrayRecordDataSource([path])

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> RawRecord:
        return RawRecord(Origin(self.name, i, "record"), self._source[i])

    def __repr__(self):
        return f"ArrayRecordSource({self.name!r}, {len(self)} records)"


class TfdsSource:
    """A prepared TFDS dataset read through `tfds.data_source` (the `tfds` extra).

    TFDS hands back bytes and NumPy arrays; they are turned into the plain
    str / list / dict values the record formats expect (see `_from_tfds`).
    """

    def __init__(self, name: str, split: str, data_dir: str | None):
        self.name, self.split, self.data_dir = name, split, data_dir
        self._len = len(self._load())

    def _load(self):
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise DataError(
                f"data.sources: {self.name!r} has format tfds but tensorflow-datasets "
                "is not installed; pip install 'alignjax[tfds]'"
            ) from e
        data_dir = self.data_dir
        if data_dir is not None and paths.is_remote(data_dir):
            # TFDS on a bucket would read through its own gs:// layer; the dataset's directory
            # (every version and config of it) is copied to the local cache instead, like any
            # other data in a bucket, and read from there.
            dataset_dir = self.name.split(":")[0].split("/")[0]
            data_dir = os.path.dirname(paths.local_copy(paths.join(data_dir, dataset_dir)))
        return tfds.data_source(self.name, split=self.split, data_dir=data_dir)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> RawRecord:
        if getattr(self, "_ds", None) is None:
            self._ds = self._load()
        origin = Origin(f"tfds:{self.name}/{self.split}", i, "row")
        return RawRecord(origin, _from_tfds(self._ds[i]))

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_ds"}

    def __repr__(self):
        return f"TfdsSource({self.name!r}, {self.split!r}, {len(self)} rows)"


def _from_tfds(value: Any) -> Any:
    """TFDS values -> JSON-like values. Undecodable bytes stay bytes (-> not_utf8)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, np.ndarray):
        return [_from_tfds(v) for v in value.tolist()] if value.ndim else _from_tfds(value.item())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_from_tfds(v) for v in value]
    if isinstance(value, dict):
        out = {k: _from_tfds(v) for k, v in value.items()}
        # tfds.features.Sequence({role, content}) arrives as columns; rows are messages.
        cols = list(out.values())
        if out and all(isinstance(c, list) for c in cols) and len({len(c) for c in cols}) == 1:
            return [dict(zip(out, row, strict=True)) for row in zip(*cols, strict=True)]
        return out
    return value


def write_array_record(path: str, records: Iterable[dict]) -> int:
    """Write records as ArrayRecord (one UTF-8 JSON object each); returns the count."""
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(path, "group_size:1")
    n = 0
    try:
        for r in records:
            writer.write(json.dumps(r, ensure_ascii=False).encode("utf-8"))
            n += 1
    finally:
        writer.close()
    return n


def open_sources(cfg: SourceConfig, key: str) -> list:
    """All sources one `SourceConfig` names (a glob or directory can name several), their
    records' keys renamed by its columns (`columns.py`). A streaming source is read by index
    as its prefix (`hub_stream.StreamPrefix`); the pipeline streams it (`stream_order.py`).

    `key` is the config key (e.g. "data.sources[0]") for error messages.
    """
    column_map = ColumnMap.of(cfg, key)
    opened = _open_sources(cfg, key)
    return opened if column_map is None else [ColumnsSource(s, column_map) for s in opened]


def _open_sources(cfg: SourceConfig, key: str) -> list:
    if cfg.format == "tfds":
        return [TfdsSource(cfg.path, cfg.split, cfg.data_dir)]
    if is_hub_source(cfg) and cfg.streaming:
        return [StreamPrefix(HubStream(cfg, key))]
    if is_hub_source(cfg):
        return [HubSource(cfg, key)]
    matches = paths.glob(cfg.path) if any(c in cfg.path for c in "*?[") else [cfg.path]
    if not matches or not all(paths.exists(p) for p in matches):
        raise DataError(f"{key}.path: {cfg.path!r} does not exist")
    out = []
    for p in matches:
        out.extend(_open_path(p, cfg, key))
    if not out:
        raise DataError(f"{key}.path: {cfg.path!r} holds no data files")
    return out


def _open_path(path: str, cfg: SourceConfig, key: str) -> list:
    if paths.isdir(path):
        if _is_hf_dataset_dir(path) or cfg.format == "hf":
            return [HFDiskSource(paths.local_copy(path), cfg.split, name=path)]
        out = []
        for name in paths.listdir(path):
            sub = paths.join(path, name)
            if paths.isdir(sub) and _is_hf_dataset_dir(sub):
                out.append(HFDiskSource(paths.local_copy(sub), cfg.split, name=sub))
            elif paths.isfile(sub) and _format_of(sub, "auto") is not None:
                out.extend(_open_path(sub, cfg, key))
        return out
    fmt = _format_of(path, cfg.format)
    if fmt is None:
        raise DataError(
            f"{key}: cannot tell the format of {path!r} from its name; set "
            f"{key}.format to one of jsonl, parquet, array_record, hf, tfds"
        )
    source = {"jsonl": JsonlSource, "parquet": ParquetSource, "array_record": ArrayRecordSource}[fmt]
    return [source(paths.local_copy(path), name=path)]


def _format_of(path: str, fmt: str) -> str | None:
    if fmt != "auto":
        return fmt
    for ext, f in _EXTENSIONS.items():
        if path.endswith(ext) or (f == "array_record" and f"{ext}-" in path):
            return f
    return None


def _is_hf_dataset_dir(path: str) -> bool:
    return any(paths.exists(paths.join(path, f)) for f in ("state.json", "dataset_dict.json"))
