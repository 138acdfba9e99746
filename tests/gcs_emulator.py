"""A Cloud Storage server on loopback for tests: the `gcp-storage-emulator` package speaking
the GCS JSON API, with every storage client pointed at it by its standard setting.

gcsfs and google-cloud-storage read `STORAGE_EMULATOR_HOST`; tensorstore (Orbax's array
store) reads `TENSORSTORE_GCS_HTTP_URL` and, for a token it need not fetch,
`GOOGLE_AUTH_TOKEN_FOR_TESTING`. Subprocesses started with `os.environ` inherit all three,
so a training run in a child process writes to the same server. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

BUCKET = "alignjax-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def endpoint_env(url: str) -> dict[str, str]:
    return {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "GOOGLE_CLOUD_PROJECT": "alignjax-test",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


@contextlib.contextmanager
def running_emulator() -> Iterator[str]:
    """Starts the server with an empty in-memory bucket `BUCKET`; yields its URL."""
    pytest.importorskip("gcp_storage_emulator")
    pytest.importorskip("gcsfs")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gcp_storage_emulator",
            "start",
            "--port",
            str(port),
            "-H",
            "127.0.0.1",
            "--default-bucket",
            BUCKET,
            "-q",
            "--in-memory",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"the storage emulator exited: {proc.stderr.read().decode()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError("the storage emulator did not answer within 60 s")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def gcs(request) -> Iterator[str]:
    """`gs://alignjax-test` on a fresh emulator, with this process's clients pointed at it."""
    with running_emulator() as url, pytest.MonkeyPatch.context() as mp:
        for key, value in endpoint_env(url).items():
            mp.setenv(key, value)
        # fsspec caches filesystem instances: one made for another endpoint must not be reused.
        import gcsfs

        gcsfs.GCSFileSystem.clear_instance_cache()
        yield f"gs://{BUCKET}"
        gcsfs.GCSFileSystem.clear_instance_cache()
