"""Streaming safetensors reading and writing, tensor by tensor.

Tensors are memory-mapped rather than loaded, so importing a checkpoint holds at most
the tensor being converted on top of the destination parameters; bfloat16 and float8
come through `ml_dtypes`, which NumPy alone cannot represent. From a bucket, each tensor is
one ranged read of its bytes, so the same holds without a local copy of the weights.
Shards are written locally and uploaded whole (`fileio.atomic_open`).
"""

from __future__ import annotations

import json
import struct
from typing import Iterator

import ml_dtypes
import numpy as np

from alignjax.core import paths
from alignjax.core.fileio import atomic_open

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def dtype_name(dtype: np.dtype) -> str:
    return _NAMES[np.dtype(dtype)]


def dtype_from_name(name: str) -> np.dtype:
    return _DTYPES[name]


def _read_header(path: str) -> tuple[dict, int]:
    with paths.open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def tensor_files(hf_dir: str) -> list[str]:
    """The safetensors files of a checkpoint: one file, or the shards its index names."""
    index = paths.join(hf_dir, INDEX_FILE)
    if paths.exists(index):
        with paths.open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return [paths.join(hf_dir, name) for name in sorted(set(weight_map.values()))]
    single = paths.join(hf_dir, SINGLE_FILE)
    if paths.exists(single):
        return [single]
    raise FileNotFoundError(
        f"{hf_dir}: no {SINGLE_FILE} or {INDEX_FILE}; only safetensors checkpoints are read"
    )


def iter_tensors(hf_dir: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, memory-mapped array) for every tensor of the checkpoint."""
    for path in tensor_files(hf_dir):
        header, data_start = _read_header(path)
        for name, info in header.items():
            if _DTYPES.get(info["dtype"]) is None:
                raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        if paths.is_remote(path):
            yield from _read_remote(path, header, data_start)
            continue
        mapped = np.memmap(path, dtype=np.uint8, mode="r")
        for name, info in header.items():
            begin, end = info["data_offsets"]
            raw = mapped[data_start + begin : data_start + end]
            yield name, raw.view(_DTYPES[info["dtype"]]).reshape(info["shape"])


def _read_remote(path: str, header: dict, data_start: int) -> Iterator[tuple[str, np.ndarray]]:
    # In file order, so the reads move forward through the object.
    ordered = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
    with paths.open(path, "rb") as f:
        for name, info in ordered:
            begin, end = info["data_offsets"]
            f.seek(data_start + begin)
            raw = np.frombuffer(f.read(end - begin), np.uint8)
            if raw.size != end - begin:
                raise ValueError(f"{path}: tensor {name} is cut short ({raw.size} of {end - begin} bytes)")
            yield name, raw.view(_DTYPES[info["dtype"]]).reshape(info["shape"])


class ShardedWriter:
    """Writes tensors into size-bounded safetensors shards plus the index transformers reads."""

    def __init__(self, out_dir: str, max_shard_bytes: int = 5 * 1024**3):
        self.out_dir = out_dir
        self.max_shard_bytes = max_shard_bytes
        self._pending: list[tuple[str, np.ndarray]] = []
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self._total = 0
        paths.makedirs(out_dir)

    def add(self, name: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        if self._pending and self._pending_bytes + array.nbytes > self.max_shard_bytes:
            self._flush()
        self._pending.append((name, array))
        self._pending_bytes += array.nbytes
        self._total += array.nbytes

    def _flush(self) -> None:
        path = paths.join(self.out_dir, f"shard-{len(self._shards):05d}.tmp")
        header, offset = {}, 0
        for name, array in self._pending:
            header[name] = {
                "dtype": dtype_name(array.dtype),
                "shape": list(array.shape),
                "data_offsets": [offset, offset + array.nbytes],
            }
            offset += array.nbytes
        header["__metadata__"] = {"format": "pt"}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
        with atomic_open(path, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for _, array in self._pending:
                f.write(array.tobytes())
        self._shards.append([name for name, _ in self._pending])
        self._pending, self._pending_bytes = [], 0

    def close(self) -> list[str]:
        """Flush, give shards their final names, write the index; returns the file names."""
        if self._pending or not self._shards:
            self._flush()
        n = len(self._shards)
        names = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for i, final in enumerate(names):
            paths.replace(paths.join(self.out_dir, f"shard-{i:05d}.tmp"), paths.join(self.out_dir, final))
        if n > 1:
            weight_map = {t: names[i] for i, shard in enumerate(self._shards) for t in shard}
            with atomic_open(paths.join(self.out_dir, INDEX_FILE)) as f:
                json.dump({"metadata": {"total_size": self._total}, "weight_map": weight_map}, f, indent=2)
        return names
