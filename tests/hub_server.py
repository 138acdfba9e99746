"""A Hugging Face Hub server on loopback for tests: the HTTP protocol `huggingface_hub`,
`transformers`, `peft` and `datasets` speak, served from memory, with every client pointed
at it by `HF_ENDPOINT`. Nothing leaves 127.0.0.1.

Served (the paths `huggingface_hub` builds; see its `hf_api.py`, `file_download.py` and
`_commit_api.py`):
- `GET /api/{models,datasets}/ORG/NAME[/revision/REV]`: repository info with the commit
  SHA of the revision (`sha`) and the file list (`siblings`);
- `GET /api/{type}s/ORG/NAME/tree/REV[/PATH]` and `POST .../paths-info/REV`: listings;
- `HEAD`/`GET [/datasets]/ORG/NAME/resolve/REV/PATH`: a file, with the headers the client
  requires (`X-Repo-Commit`, `ETag`, `Content-Length`) and ranged reads (`Range`);
- `POST /api/repos/create`, `POST .../branch/BRANCH`, `POST /api/validate-yaml` (a model
  card's metadata), `POST .../preupload/REV` (every file is `regular`: its bytes travel in
  the commit itself) and `POST .../commit/REV` (NDJSON).
Errors carry the `X-Error-Code` the client turns into its exceptions: `RepoNotFound` (401
without a token, as the Hub answers), `RevisionNotFound`, `EntryNotFound`, `GatedRepo`.

Private and gated repositories answer only requests with a token from `tokens`. Every
request is logged (`requests`), so a test can count downloads; a request the server does
not know is logged in `unknown` and answered 404.

No package on the index serves this protocol by itself: `hf-local-hub` is a client for a
separately built Go server, which its wheel does not contain.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from hub_protocol import Repo, handler_for

TOKEN = "hf_loopback_test_token"


class Hub:
    """The server's state and its address; tests seed it through `huggingface_hub` (the
    real upload path) or, for speed, with `put`."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.tokens = {TOKEN}
        self.requests: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.url = ""
        self._server: ThreadingHTTPServer | None = None
        self.connections: set = set()  # open keep-alive sockets, closed by `stop`

    def put(
        self,
        repo_id: str,
        files: dict[str, bytes] | str,
        *,
        repo_type: str = "model",
        branch: str = "main",
        message: str = "upload",
        private: bool = False,
        gated: bool = False,
    ) -> str:
        """Commits `files` (a mapping, or a local directory's files) to `branch`, creating
        the repository if needed; returns the commit SHA."""
        if isinstance(files, str):
            root = files
            files = {}
            for d, _, names in os.walk(root):
                for n in names:
                    with open(os.path.join(d, n), "rb") as f:
                        files[os.path.relpath(os.path.join(d, n), root)] = f.read()
        with self.lock:
            repo = self.repos.get((repo_type, repo_id))
            if repo is None:
                repo = self.create(repo_type, repo_id, private)
            repo.gated = repo.gated or gated
            base = repo.at(branch) or repo.at("main")
            return repo.commit(branch, {**(base.files if base else {}), **files}, message).sha

    def create(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        """A new repository holding what the Hub puts in one: a `.gitattributes`."""
        repo = Repo(repo_type, repo_id, private)
        repo.commit(
            "main",
            {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
            "initial commit",
        )
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def downloads(self, path_suffix: str) -> int:
        """How many times a file whose URL ends with `path_suffix` was fetched (GET)."""
        return sum(
            1
            for method, path in self.requests
            if method == "GET" and path.split("?")[0].endswith(path_suffix) and "/resolve/" in path
        )

    def start(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stops answering: clients see a refused connection, as without a network."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:  # a client's pooled connection must not outlive the server
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self.connections.clear()


def endpoint_env(url: str, home: str) -> dict[str, str]:
    """The variables that point every Hugging Face client at the server and its caches at
    `home`; proxies for every other host lead nowhere, so a request that would leave the
    machine fails instead."""
    return {
        "HF_ENDPOINT": url,
        "HF_HOME": home,
        "HF_HUB_CACHE": os.path.join(home, "hub"),
        "HF_DATASETS_CACHE": os.path.join(home, "datasets"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }


@contextlib.contextmanager
def running_hub() -> Iterator[Hub]:
    hub = Hub()
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


def point_clients_at(mp: pytest.MonkeyPatch, url: str, home: str) -> None:
    """Points this process's Hugging Face clients at the server: the environment, for the
    processes a test starts, and the settings `huggingface_hub` and `datasets` read from it
    when they were imported, for calls made in this process."""
    import huggingface_hub.constants as hf_constants

    env = endpoint_env(url, home)
    for key, value in env.items():
        mp.setenv(key, value)
    mp.delenv("HF_TOKEN", raising=False)
    mp.delenv("HF_HUB_OFFLINE", raising=False)
    mp.setattr(hf_constants, "ENDPOINT", url)
    mp.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    mp.setattr(hf_constants, "HF_HOME", home)
    mp.setattr(hf_constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    mp.setattr(hf_constants, "HF_TOKEN_PATH", os.path.join(home, "token"))
    mp.setattr(hf_constants, "HF_STORED_TOKENS_PATH", os.path.join(home, "stored_tokens"))
    mp.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    mp.setattr(hf_constants, "HF_HUB_DISABLE_XET", True, raising=False)
    import datasets.config as ds_config

    mp.setattr(ds_config, "HF_ENDPOINT", url)
    mp.setattr(ds_config, "HUB_DATASETS_URL", url + "/datasets/{repo_id}/resolve/{revision}/{path}")
    mp.setattr(ds_config, "HF_CACHE_HOME", home)
    mp.setattr(ds_config, "HF_DATASETS_CACHE", Path(env["HF_DATASETS_CACHE"]))
    mp.setattr(ds_config, "HF_MODULES_CACHE", Path(home) / "modules")
    mp.setattr(ds_config, "DOWNLOADED_DATASETS_PATH", Path(env["HF_DATASETS_CACHE"]) / "downloads")
    mp.setattr(
        ds_config, "EXTRACTED_DATASETS_PATH", Path(env["HF_DATASETS_CACHE"]) / "downloads" / "extracted"
    )
    mp.setattr(ds_config, "HF_HUB_OFFLINE", False)
