"""Atomic file writes: a reader, or a run restarted after a crash, sees the old file or the new one,
never half of one.

On a bucket (`gs://`), where rename is not atomic, the file is written locally and uploaded
under its final name: the object appears whole when the upload completes.

This module imports nothing from alignjax but `paths`, so every layer can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from alignjax.core import paths


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", *, encoding: str = "utf-8") -> Iterator[IO]:
    """A file object whose contents replace `path` when the block exits normally; if the block
    raises, `path` is left as it was and the partial file is removed. Creates the directory.

    `mode` is "w" (text, `encoding`) or "wb".
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    if paths.is_remote(path):
        with _uploaded_open(path, mode, encoding=encoding) as f:
            yield f
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Same directory: os.replace is atomic only within one filesystem. pid + random suffix:
    # hosts sharing a disk (or a restarted run racing a stale one) never share a temp file.
    tmp = os.path.join(directory, f"{os.path.basename(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, mode, encoding=None if mode == "wb" else encoding) as f:
            yield f
            f.flush()
            # On disk before the rename: otherwise a power cut can leave the new name
            # pointing at an empty file.
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def _uploaded_open(url: str, mode: str, *, encoding: str) -> Iterator[IO]:
    fd, tmp = tempfile.mkstemp(prefix="alignjax-upload-")
    try:
        with open(fd, mode, encoding=None if mode == "wb" else encoding) as f:
            yield f
        paths.upload(tmp, url)
    finally:
        os.remove(tmp)


def atomic_write_text(path: str, text: str, *, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str, obj: Any, **dump_kwargs: Any) -> None:
    """`json.dump(obj, f, **dump_kwargs)` into `path`, atomically (UTF-8)."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, **dump_kwargs)


# Larger files are identified by their size and a hash of evenly spaced blocks: reading
# all of them at every start of training would cost more than it protects against.
# Content, not modification times: hosts that each hold a copy must agree.
_HASH_LIMIT_BYTES = 64 * 2**20
_SAMPLED_BLOCKS, _BLOCK_BYTES = 64, 64 * 2**10


def file_identity(path: str) -> dict:
    """A file's content identity: its sha256, or for large files its size and the sha256 of
    sampled blocks."""
    size = paths.getsize(path)
    digest = hashlib.sha256()
    with paths.open(path, "rb") as f:
        if size <= _HASH_LIMIT_BYTES:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
            return {"sha256": digest.hexdigest()}
        for offset in np.linspace(0, size - _BLOCK_BYTES, _SAMPLED_BLOCKS).astype(np.int64).tolist():
            f.seek(offset)
            digest.update(f.read(_BLOCK_BYTES))
    return {"size": size, "sampled_sha256": digest.hexdigest()}


def files_identity(model_dir: str) -> dict:
    """A model directory's weight and config files by content."""
    names = sorted(n for n in paths.listdir(model_dir) if n.endswith((".safetensors", ".bin", ".json")))
    return {n: file_identity(paths.join(model_dir, n)) for n in names}
