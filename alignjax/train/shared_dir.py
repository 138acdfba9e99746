"""Every process of a multi-process run must see one and the same run directory.

Orbax writes each checkpoint from every process into `<run_dir>/checkpoints` and process 0
commits it; process 0 alone writes the stage references' metadata, the tokenizer, the data
check summaries and metrics, which the others read back. On hosts that each have their own
disk, every process would quietly get a directory of its own and the run would fail much
later (a checkpoint that never commits, a reference that one process restores and another
saves). So before anything is written there: process 0 writes a random token into run_dir,
every process reads it back from its own view of run_dir, and they agree on the outcome,
so that all of them stop together, naming the processes that did not see it.
"""

from __future__ import annotations

import secrets
import socket
import time

import jax
import numpy as np

from alignjax.core import paths
from alignjax.core.fileio import atomic_write_text
from alignjax.train.multihost import gather_json

MARKER = ".alignjax-shared-check"
TOKEN_BYTES = 16
# A shared filesystem may show a file written on another host a moment late (NFS caches
# directory attributes for a few seconds); a disk that is not shared never shows it.
WAIT_S = 10.0


def check_shared_run_dir(run_dir: str) -> None:
    """Raise ValueError on every process when some process does not see process 0's run_dir."""
    if jax.process_count() == 1:
        return
    path = paths.join(paths.abspath(run_dir), MARKER)
    token, write_error = "", None
    if jax.process_index() == 0:
        token = secrets.token_hex(TOKEN_BYTES)
        try:
            atomic_write_text(path, token)
        except OSError as e:
            token, write_error = "", f"{type(e).__name__}: {e}"
    # Process 0 enters the broadcast only once the file is in place, so every read below
    # comes after the write.
    token = _from_process_zero(token)
    seen = _read_token(path, token) if token else None
    views = gather_json(
        {
            "process": jax.process_index(),
            "host": socket.gethostname(),
            "path": path,
            "seen": seen,
            "write_error": write_error,
        }
    )
    if jax.process_index() == 0 and token:
        # Every process has read it (the gather above waited for all of them).
        paths.remove(path)
    problems = [p for p in (_problem(v, token) for v in views) if p]
    if problems:
        raise ValueError(
            f"run_dir {run_dir!r} is not one directory that all {len(views)} processes share: "
            + "; ".join(problems)
            + ". Every process writes checkpoints into run_dir and reads back what process 0 "
            "wrote there, so run_dir must be a Cloud Storage bucket (run_dir=gs://BUCKET/PATH), a "
            "shared filesystem (NFS, Filestore, Lustre) or a bucket mounted on every host (gcsfuse); "
            "processes on one host need the same run_dir"
        )


def _from_process_zero(token: str) -> str:
    """Process 0's token on every process ("" when process 0 could not write it)."""
    from jax.experimental import multihost_utils

    raw = np.zeros(2 * TOKEN_BYTES, np.uint8)
    raw[: len(token)] = np.frombuffer(token.encode(), np.uint8)
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(raw))).rstrip(b"\0").decode()


def _read_token(path: str, token: str) -> str | None:
    """What this process reads at `path`, waiting up to WAIT_S for `token` to show."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            with paths.open(path) as f:
                seen = f.read().strip()
        except OSError:
            seen = None
        if seen == token or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def _problem(view: dict, token: str) -> str:
    """What is wrong with one process's view of run_dir ("" when nothing is)."""
    who = f"process {view['process']} (host {view['host']})"
    if view["write_error"]:
        return f"{who} could not write {view['path']} ({view['write_error']})"
    if not token or view["seen"] == token:
        return ""  # without a token, process 0's failure to write is the whole story
    if view["seen"] is None:
        return f"{who} does not see the file process 0 wrote: {view['path']} does not exist there"
    return f"{who} reads another run's file at {view['path']}"
