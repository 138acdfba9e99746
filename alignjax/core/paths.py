"""Where files live: a local path or a bucket URL (`gs://bucket/dir`), behind one set of calls.

Every file the project reads or writes by name goes through here, so a run directory,
a data file, a Hugging Face model directory or a conversion target may equally be a
local path or a Cloud Storage URL. Local paths go straight to `os` and `open`, unchanged;
a URL (any `scheme://`) goes to fsspec, whose `gs` filesystem is gcsfs. fsspec rather than
`etils.epath`: epath's own Cloud Storage backend is gcsfs too (when TensorFlow is absent),
and fsspec exposes what this layer needs and epath hides: file uploads and downloads
(`put_file` / `get_file`), ranged reads of an open object, listings without a cache, and
any other fsspec store (`s3://`, ...) for free. Orbax receives the URL itself and reaches
the same bucket through epath and tensorstore.

Semantics that differ on a bucket, and what the callers rely on:
- An object appears whole when its upload completes and never half-written, but there
  is no rename: `replace` is a copy and a delete. Atomic writes therefore upload
  the finished file under its final name (`fileio.atomic_open`).
- There is no append: `append_text` rewrites the object.
- Directories are name prefixes: `makedirs` does nothing, an empty directory does not
  exist, `isdir` is true when some object lies below the prefix.

Credentials and endpoints are the storage clients' own (Application Default Credentials;
`STORAGE_EMULATOR_HOST` for gcsfs and google-cloud-storage, `TENSORSTORE_GCS_HTTP_URL`
for tensorstore).

This module imports nothing from alignjax but `errors`, so every layer can use it.
"""

from __future__ import annotations

import builtins
import contextlib
import glob as _glob
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from alignjax.core.errors import MissingDependencyError


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a URL (`gs://...`) rather than a local path."""
    return "://" in os.fspath(path)


def _fs(path: str) -> tuple[Any, str]:
    """The fsspec filesystem of a URL and the path within it."""
    try:
        import fsspec  # installed with datasets; gcsfs is the `gcs` extra
    except ImportError as e:  # pragma: no cover - datasets is a base dependency
        raise MissingDependencyError(f"{path}: reading URLs needs fsspec (pip install fsspec)") from e
    options = {}
    if path.startswith(("gs://", "gcs://")):
        # No listing cache: another host may have written a moment ago (the shared-run-dir
        # marker, a checkpoint), and a stale listing would give this one a different answer.
        options["use_listings_cache"] = False
    try:
        return fsspec.core.url_to_fs(path, **options)
    except (ImportError, ValueError) as e:
        scheme = path.split("://", 1)[0]
        extra = " (pip install 'alignjax[gcs]', which installs gcsfs)" if scheme in ("gs", "gcs") else ""
        raise MissingDependencyError(f"{path}: no filesystem for {scheme}:// is installed{extra}: {e}") from e


def _url(fs: Any, inner: str) -> str:
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return f"{protocol}://{inner.lstrip('/')}" if protocol != "memory" else f"memory://{inner}"


# ---------------------------------------------------------------- names


def join(path: str | os.PathLike, *parts: str) -> str:
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.join(path, *parts)
    return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts)])


def dirname(path: str) -> str:
    if not is_remote(path):
        return os.path.dirname(path)
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{rest.rstrip('/').rsplit('/', 1)[0]}" if "/" in rest.rstrip("/") else path


def basename(path: str) -> str:
    return os.path.basename(path) if not is_remote(path) else path.rstrip("/").rsplit("/", 1)[-1]


def abspath(path: str | os.PathLike) -> str:
    """`os.path.abspath` for a local path; a URL unchanged but for a trailing slash."""
    path = os.fspath(path)
    return os.path.abspath(path) if not is_remote(path) else path.rstrip("/")


# ---------------------------------------------------------------- queries


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    fs, inner = _fs(path)
    return fs.exists(inner)


def isdir(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(path)
    fs, inner = _fs(path)
    return fs.isdir(inner)


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    fs, inner = _fs(path)
    return fs.isfile(inner)


def getsize(path: str) -> int:
    if not is_remote(path):
        return os.path.getsize(path)
    fs, inner = _fs(path)
    return int(fs.size(inner))


def getmtime(path: str) -> float:
    if not is_remote(path):
        return os.path.getmtime(path)
    fs, inner = _fs(path)
    return fs.modified(inner).timestamp()


def listdir(path: str) -> list[str]:
    """Names (not paths) directly below `path`, like `os.listdir`."""
    if not is_remote(path):
        return os.listdir(path)
    fs, inner = _fs(path)
    if not fs.isdir(inner):
        raise FileNotFoundError(f"{path}: no such directory")
    # Uncached: another host (or this one, moments ago) may have written since.
    fs.invalidate_cache(inner)
    return sorted({entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(inner, detail=False)} - {""})


def glob(pattern: str) -> list[str]:
    """Sorted matches of a shell pattern (`*`, `?`, `[...]`), local or in a bucket."""
    if not is_remote(pattern):
        return sorted(_glob.glob(pattern))
    fs, inner = _fs(pattern)
    return sorted(_url(fs, p) for p in fs.glob(inner))


def walk_files(path: str) -> list[str]:
    """Paths relative to the directory `path` of every file below it, sorted."""
    if not is_remote(path):
        return sorted(
            os.path.relpath(os.path.join(d, n), path) for d, _, names in os.walk(path) for n in names
        )
    fs, inner = _fs(path)
    inner = inner.rstrip("/")
    return sorted(p[len(inner) + 1 :] for p in fs.find(inner) if p.startswith(inner + "/"))


# ---------------------------------------------------------------- reading and writing


def open(path: str, mode: str = "r", *, encoding: str | None = None) -> IO:  # noqa: A001
    """`open` for a local path; for a URL, a buffered remote file (ranged reads, or an upload
    that completes on close). Text modes default to UTF-8 for URLs."""
    if not is_remote(path):
        return builtins.open(path, mode, encoding=encoding)
    fs, inner = _fs(path)
    if "b" not in mode:
        encoding = encoding or "utf-8"
        return fs.open(inner, mode, encoding=encoding)
    return fs.open(inner, mode)


def read_text(path: str, encoding: str = "utf-8") -> str:
    with open(path, "r", encoding=encoding) as f:
        return f.read()


def append_text(path: str, text: str) -> None:
    """Appends `text` to a local file; rewrites a remote object with `text` added (no append
    on buckets: keep what goes through here small, like a metrics log)."""
    if not is_remote(path):
        with builtins.open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
        return
    fs, inner = _fs(path)
    old = fs.cat_file(inner) if fs.exists(inner) else b""
    fs.pipe_file(inner, old + text.encode("utf-8"))


def makedirs(path: str) -> None:
    """`os.makedirs(path, exist_ok=True)`; nothing for a bucket, whose directories are prefixes."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    if not is_remote(path):
        os.remove(path)
        return
    fs, inner = _fs(path)
    fs.rm_file(inner)


def rmtree(path: str) -> None:
    if not is_remote(path):
        shutil.rmtree(path)
        return
    fs, inner = _fs(path)
    fs.rm(inner, recursive=True)


def replace(src: str, dst: str) -> None:
    """Moves a file or directory to `dst` (replacing a file there). Local: `os.replace`, atomic.
    In a bucket: copy then delete, object by object; not atomic, so callers move only what no
    reader depends on mid-move."""
    if is_remote(src) != is_remote(dst):
        raise ValueError(f"cannot move between a local path and a URL: {src} -> {dst}")
    if not is_remote(src):
        os.replace(src, dst)
        return
    fs, inner = _fs(src)
    target = _fs(dst)[1]
    # Copy (server side) then delete, spelled out: that is what a bucket can do, and gcsfs's
    # own `mv` first tries a move call that not every GCS API server implements.
    if fs.isdir(inner):
        inner = inner.rstrip("/")
        for rel in walk_files(src):
            fs.copy(f"{inner}/{rel}", f"{target.rstrip('/')}/{rel}")
        fs.rm(inner, recursive=True)
    else:
        fs.copy(inner, target)
        fs.rm_file(inner)


def upload(local_path: str, dst: str) -> None:
    """Copies a local file to `dst` (a path or URL). On a bucket the object appears whole when
    the upload completes, which is the store's atomic write."""
    if not is_remote(dst):
        shutil.copyfile(local_path, dst)
        return
    fs, inner = _fs(dst)
    fs.put_file(local_path, inner)


def copy(src: str, dst: str) -> None:
    """Copies one file between any two places (local or remote, either side)."""
    if not is_remote(src) and not is_remote(dst):
        shutil.copy2(src, dst)
    elif not is_remote(src):
        upload(src, dst)
    elif not is_remote(dst):
        fs, inner = _fs(src)
        fs.get_file(inner, dst)
    else:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 16 * 2**20)


# ---------------------------------------------------------------- local copies


def cache_root() -> str:
    """Where remote files that must be local (tokenizers, Arrow files to memory-map) are kept:
    `$ALIGNJAX_CACHE`, else `~/.cache/alignjax`."""
    return os.environ.get("ALIGNJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "alignjax")


def local_copy(path: str, *, names: list[str] | None = None) -> str:
    """A local path holding what `path` holds: `path` itself when it is local; for a URL, a copy
    in the cache (a file, or a directory's files, only `names` of them if given; the others are
    left in the bucket, e.g. a model's weights, which are streamed instead). The copy keeps the
    URL's last name (`.../remote/KEY/tokenizer` for `gs://b/run/tokenizer`), so a reader that
    expects a layout (TFDS: `DATA_DIR/NAME/...`) finds it under the copy's parent.

    The copy is keyed by the URL and the remote files' sizes and modification times, so a
    changed object is fetched again; a partial download is never reused (written aside and
    renamed when complete).
    """
    if not is_remote(path):
        return path
    fs, inner = _fs(path)
    fs.invalidate_cache()
    name = basename(path) or "root"
    is_file = fs.isfile(inner)
    if is_file:
        files = {name: inner}
    else:
        if not fs.isdir(inner):
            raise FileNotFoundError(f"{path}: no such file or directory")
        inner = inner.rstrip("/")
        found = {p[len(inner) + 1 :]: p for p in fs.find(inner) if p.startswith(inner + "/")}
        files = {f"{name}/{rel}": remote for rel, remote in found.items() if names is None or rel in names}
    entries = sorted((rel, fs.info(remote)) for rel, remote in files.items())
    key = hashlib.sha256(
        repr(
            (path, [(r, e.get("size"), str(e.get("updated") or e.get("mtime"))) for r, e in entries])
        ).encode()
    ).hexdigest()[:20]
    dest = os.path.join(cache_root(), "remote", key)
    if not os.path.isdir(dest):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=".partial-", dir=os.path.dirname(dest))
        try:
            for rel, remote in files.items():
                os.makedirs(os.path.dirname(os.path.join(scratch, rel)), exist_ok=True)
                fs.get_file(remote, os.path.join(scratch, rel))
            if not is_file:  # the directory exists even when no file matched `names`
                os.makedirs(os.path.join(scratch, name), exist_ok=True)
            with contextlib.suppress(OSError):  # another process finished first: use its copy
                os.rename(scratch, dest)
        finally:
            if os.path.isdir(scratch):
                shutil.rmtree(scratch, ignore_errors=True)
    return os.path.join(dest, name)


@contextlib.contextmanager
def local_dir_for(path: str) -> Iterator[str]:
    """A local directory to write into that ends up at `path`: `path` itself when local; for a
    URL, a scratch directory whose files are uploaded to `path` when the block exits normally."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="alignjax-upload-") as scratch:
        yield scratch
        for rel in walk_files(scratch):
            upload(os.path.join(scratch, rel), join(path, rel))
