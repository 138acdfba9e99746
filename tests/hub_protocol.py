"""The Hub's protocol for the loopback server (tests/hub_server.py): its repositories and
commits, and the HTTP handler that answers `huggingface_hub`'s requests from them."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Any

_TYPES = {"models": "model", "datasets": "dataset"}


def blob_oid(content: bytes) -> str:
    """Git's blob id, which the Hub reports as a regular file's `oid` and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclasses.dataclass
class Commit:
    sha: str
    files: dict[str, bytes]
    message: str
    date: str


@dataclasses.dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    gated: bool = False
    refs: dict[str, str] = dataclasses.field(default_factory=dict)  # branch or tag -> commit SHA
    commits: dict[str, Commit] = dataclasses.field(default_factory=dict)

    def commit(self, branch: str, files: dict[str, bytes], message: str) -> Commit:
        parent = self.refs.get(branch, "")
        digest = hashlib.sha1(parent.encode() + message.encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + blob_oid(files[path]).encode())
        digest.update(str(len(self.commits)).encode())  # an empty commit still gets a new SHA
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        new = Commit(digest.hexdigest(), files, message, date)
        self.commits[new.sha] = new
        self.refs[branch] = new.sha
        return new

    def at(self, revision: str) -> Commit | None:
        sha = self.refs.get(revision, revision)
        return self.commits.get(sha)


def handler_for(hub: Any) -> type[BaseHTTPRequestHandler]:
    """A handler class serving `hub` (a `hub_server.Hub`: its repositories, tokens, log)."""

    class Handler(_Handler):
        pass

    Handler.hub = hub
    return Handler


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.commit, self.extra = status, code, message, commit, extra


class _Handler(BaseHTTPRequestHandler):
    hub: Any  # the hub_server.Hub it serves
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection pools expect

    def log_message(self, *args) -> None:  # the request log is `hub.requests`
        pass

    def setup(self) -> None:
        super().setup()
        with self.hub.lock:
            self.hub.connections.add(self.connection)

    def finish(self) -> None:
        with self.hub.lock:
            self.hub.connections.discard(self.connection)
        super().finish()

    # ------------------------------------------------------------ dispatch

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        with self.hub.lock:
            self.hub.requests.append((method, self.path))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        parsed = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in parsed.path.strip("/").split("/")]
        query = urllib.parse.parse_qs(parsed.query)
        try:
            if parts[:1] == ["api"]:
                self._api(method, parts[1:], query, body)
            else:
                self._resolve(method, parts)
        except _HubError as e:
            self._error(e)

    def _error(self, e: _HubError) -> None:
        payload = json.dumps({"error": e.message, **e.extra}).encode()
        self.send_response(e.status)
        if e.code:
            self.send_header("X-Error-Code", e.code)
        self.send_header("X-Error-Message", e.message)
        if e.commit:
            self.send_header("X-Repo-Commit", e.commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _json(self, obj, status: int = 200) -> None:
        payload = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _unknown(self, method: str) -> None:
        with self.hub.lock:
            self.hub.unknown.append((method, self.path))
        raise _HubError(404, None, f"the loopback Hub does not serve {method} {self.path}")

    # ------------------------------------------------------------ access

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[len("Bearer ") :] in self.hub.tokens

    def _repo(self, repo_type: str, repo_id: str, *, files: bool = False) -> Repo:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._authorized()):
            status = 404 if self._authorized() else 401
            raise _HubError(status, "RepoNotFound", f"Repository Not Found for {repo_type} {repo_id}")
        if files and repo.gated and not self._authorized():
            raise _HubError(
                401,
                "GatedRepo",
                f"Access to {repo_type} {repo_id} is restricted. You must be authenticated to access it.",
            )
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.at(revision)
        if commit is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    # ------------------------------------------------------------ files

    def _resolve(self, method: str, parts: list[str]) -> None:
        repo_type = "model"
        if parts[:1] == ["datasets"]:
            repo_type, parts = "dataset", parts[1:]
        if len(parts) < 5 or parts[2] != "resolve" or method == "POST":
            self._unknown(method)
        repo = self._repo(repo_type, "/".join(parts[:2]), files=True)
        commit = self._commit(repo, parts[3])
        path = "/".join(parts[4:])
        if path not in commit.files:
            raise _HubError(404, "EntryNotFound", f"{path} does not exist on {parts[3]}", commit.sha)
        content = commit.files[path]
        start, end, status = 0, len(content), 200
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes="):
            first, _, last = ranged[len("bytes=") :].partition("-")
            start = int(first) if first else max(len(content) - int(last), 0)
            end = min(int(last) + 1, len(content)) if first and last else len(content)
            status = 206
        self.send_response(status)
        self.send_header("X-Repo-Commit", commit.sha)
        self.send_header("ETag", f'"{blob_oid(content)}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(content)}")
        self.end_headers()
        if method == "GET":
            self.wfile.write(content[start:end])

    # ------------------------------------------------------------ API

    def _api(self, method: str, parts: list[str], query: dict, body: bytes) -> None:
        if parts == ["repos", "create"] and method == "POST":
            return self._create_repo(json.loads(body))
        if parts == ["validate-yaml"] and method == "POST":  # a README's metadata, before a commit
            return self._validate_yaml(json.loads(body)["content"])
        if len(parts) < 3 or parts[0] not in _TYPES:
            return self._unknown(method)
        repo_type, repo_id, rest = _TYPES[parts[0]], "/".join(parts[1:3]), parts[3:]
        if method == "GET" and (not rest or rest[0] == "revision"):
            repo = self._repo(repo_type, repo_id)
            return self._info(repo, self._commit(repo, rest[1] if len(rest) > 1 else "main"))
        if method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit(repo, rest[1])
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            return self._json(_listing(commit, "/".join(rest[2:]), recursive))
        if method == "POST" and rest[:1] == ["paths-info"] and len(rest) >= 2:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit(repo, "/".join(rest[1:]))
            wanted = urllib.parse.parse_qs(body.decode()).get("paths", [])
            return self._json([e for p in wanted for e in _path_info(commit, p.strip("/"))])
        if method == "POST" and rest[:1] == ["preupload"]:
            self._writable(repo_type, repo_id)
            files = json.loads(body)["files"]
            return self._json(
                {
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                    ]
                }
            )
        if method == "POST" and rest[:1] == ["commit"] and len(rest) >= 2:
            return self._apply_commit(self._writable(repo_type, repo_id), "/".join(rest[1:]), body)
        if method == "POST" and rest[:1] == ["branch"] and len(rest) >= 2:
            return self._create_branch(self._writable(repo_type, repo_id), "/".join(rest[1:]), body)
        if method == "GET" and rest == ["refs"]:
            repo = self._repo(repo_type, repo_id)
            branches = [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in repo.refs.items()
            ]
            return self._json({"branches": branches, "tags": [], "converts": []})
        return self._unknown(method)

    def _validate_yaml(self, content: str) -> None:
        """A README's metadata block (between its opening `---` lines) must be a YAML mapping."""
        import re

        import yaml

        block = re.match(r"^\s*---[\r\n]+([\S\s]*?)[\r\n]+---(\r\n|\n|$)", content)
        try:
            metadata = yaml.safe_load(block.group(1)) if block else None
        except yaml.YAMLError as e:
            return self._json({"errors": [{"message": str(e)}], "warnings": []}, status=400)
        if metadata is not None and not isinstance(metadata, dict):
            return self._json(
                {"errors": [{"message": "metadata must be a mapping"}], "warnings": []}, status=400
            )
        return self._json({"errors": [], "warnings": []})

    def _info(self, repo: Repo, commit: Commit) -> None:
        self._json(
            {
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.sha,
                "lastModified": commit.date,
                "private": repo.private,
                "gated": "auto" if repo.gated else False,
                "disabled": False,
                "tags": [],
                "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            }
        )

    def _writable(self, repo_type: str, repo_id: str) -> Repo:
        if not self._authorized():
            raise _HubError(401, None, "Invalid credentials in Authorization header")
        return self._repo(repo_type, repo_id)

    def _create_repo(self, request: dict) -> None:
        if not self._authorized():
            raise _HubError(401, None, "Invalid credentials in Authorization header")
        repo_id = (
            f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
        )
        repo_type = request.get("type") or "model"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.url}/{prefix}{repo_id}"
        with self.hub.lock:
            if (repo_type, repo_id) in self.hub.repos:  # the Hub names the existing one
                raise _HubError(409, None, "You already created this repo", url=url)
            private = bool(request.get("private")) or request.get("visibility") == "private"
            self.hub.create(repo_type, repo_id, private)
        self._json({"url": url, "name": repo_id})

    def _create_branch(self, repo: Repo, branch: str, body: bytes) -> None:
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        with self.hub.lock:
            if branch in repo.refs:
                raise _HubError(409, None, f"Reference already exists: refs/heads/{branch}")
            repo.refs[branch] = self._commit(repo, start).sha
        self._json({})

    def _apply_commit(self, repo: Repo, revision: str, body: bytes) -> None:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        with self.hub.lock:
            files = dict(self._commit(repo, revision).files)
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: c for p, c in files.items() if not p.startswith(prefix)}
                elif key != "header":
                    raise _HubError(400, None, f"the loopback Hub takes regular files only, not {key}")
            commit = repo.commit(revision, files, header["summary"])
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        self._json(
            {
                "commitUrl": f"{self.hub.url}/{prefix}{repo.repo_id}/commit/{commit.sha}",
                "commitOid": commit.sha,
            }
        )


def _file_entry(commit: Commit, path: str) -> dict:
    content = commit.files[path]
    return {
        "type": "file",
        "oid": blob_oid(content),
        "size": len(content),
        "path": path,
        "lastCommit": {"id": commit.sha, "title": commit.message, "date": commit.date},
    }


def _dir_entry(commit: Commit, path: str) -> dict:
    oid = hashlib.sha1(f"{commit.sha}:{path}".encode()).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": path}


def _listing(commit: Commit, prefix: str, recursive: bool) -> list[dict]:
    """The tree below `prefix`: every file and folder when recursive, else the children."""
    base = prefix.strip("/") + "/" if prefix.strip("/") else ""
    if base and not any(p.startswith(base) for p in commit.files):
        raise _HubError(404, "EntryNotFound", f"{prefix} does not exist", commit.sha)
    files, dirs = [], set()
    for path in sorted(commit.files):
        if not path.startswith(base):
            continue
        rel = path[len(base) :].split("/")
        for depth in range(1, len(rel)):
            dirs.add(base + "/".join(rel[:depth]))
        if recursive or len(rel) == 1:
            files.append(_file_entry(commit, path))
    if not recursive:
        dirs = {d for d in dirs if "/" not in d[len(base) :]}
    return [_dir_entry(commit, d) for d in sorted(dirs)] + files


def _path_info(commit: Commit, path: str) -> list[dict]:
    if path in commit.files:
        return [_file_entry(commit, path)]
    if path == "" or any(p.startswith(path + "/") for p in commit.files):
        return [_dir_entry(commit, path)]
    return []
