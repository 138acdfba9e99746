"""`columns`: the column of a data set that holds each record key, for every kind of source.

`data.columns: {prompt: question, chosen: good, rejected: bad}` applies to every source of
`data.train` and `data.eval`; a source's own `columns` overrides it key by key (`{chosen:
chosen}` keeps a column under its own name for that source). The record's `chosen` is then
the data's `good`: the mapped columns leave the record under their own names, a record
key the data also holds under its own name takes the mapped column's value, and a mapping
is applied all at once, so `{chosen: rejected, rejected: chosen}` swaps the two.

A missing column stops the run at start-up with the config key that named it, checked on
the schema (Parquet) or the first record (every row of an Arrow table, a saved or Hub
dataset and a TFDS split has the same columns). A JSON file's later record without a mapped
column has no value for that record key, a bad record (`missing_field`) named by its line.
"""

from __future__ import annotations

import dataclasses

from alignjax.data.config import SourceConfig
from alignjax.data.formats import decode
from alignjax.data.records import BadRecord, DataError, RawRecord


@dataclasses.dataclass(frozen=True)
class ColumnMap:
    columns: dict[str, str]  # record key -> the data's column
    keys: dict[str, str]  # record key -> the config key that mapped it (for errors)

    @classmethod
    def of(cls, cfg: SourceConfig, key: str) -> ColumnMap | None:
        """The mapping of source `cfg` (config key `key`): data.columns under its own; None if neither."""
        shared, own = cfg.data_columns or {}, cfg.columns or {}
        if not shared and not own:
            return None
        keys = {**dict.fromkeys(shared, "data.columns"), **dict.fromkeys(own, f"{key}.columns")}
        return cls({**shared, **own}, keys)

    def rename(self, row: dict) -> dict:
        mapped = {record_key: row[column] for record_key, column in self.columns.items() if column in row}
        gone = {*self.columns, *self.columns.values()}
        return {**{k: v for k, v in row.items() if k not in gone}, **mapped}

    def check(self, column_names, source_name: str) -> None:
        """Raise DataError naming the config key of the first mapped column not in `column_names`."""
        missing = [k for k, column in self.columns.items() if column not in column_names]
        if missing:
            key = self.keys[missing[0]]
            named = [repr(self.columns[k]) for k in missing if self.keys[k] == key]
            raise DataError(
                f"{key}: {source_name} has no column {', '.join(named)}; its columns are {list(column_names)}"
            )


class ColumnsSource:
    """A random-access source whose records' keys `column_map` renames; every other attribute
    (`path`, `name`, `split`, ...) is the wrapped source's."""

    def __init__(self, source, column_map: ColumnMap):
        self.source, self.column_map = source, column_map
        names = getattr(source, "column_names", None)
        if names is None and len(source):
            names = _decoded(source[0])
        if names is not None:  # None: record 0 is bad, and is reported as such when read
            column_map.check(names, source.name)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> RawRecord:
        raw = self.source[i]
        row = _decoded(raw)
        return raw if row is None else dataclasses.replace(raw, value=self.column_map.rename(row))

    def __getattr__(self, name: str):
        if name in ("source", "column_map"):  # not yet set: while unpickling
            raise AttributeError(name)
        return getattr(self.source, name)

    def __repr__(self):
        return f"{self.source!r} with columns {self.column_map.columns}"


def _decoded(raw: RawRecord) -> dict | None:
    """The record as a dict; None for a bad one, left undecoded so that the pipeline's own
    decode reports it at its line."""
    try:
        return decode(raw)
    except BadRecord:
        return None
