"""A real HTTP server on 127.0.0.1 that speaks enough of the Hugging Face hub API for huggingface_hub.

It serves one or more repositories whose content is a local directory, with the endpoints
``huggingface_hub`` 2.x calls to download a model:

* ``GET /api/models/<repo>/revision/<rev>`` (model info with ``sha`` and ``siblings``),
* ``GET /api/models/<repo>/tree/<rev>`` (the listing ``snapshot_download`` uses),
* ``HEAD``/``GET /<repo>/resolve/<rev>/<file>`` with ``ETag``, ``X-Repo-Commit``,
  ``X-Linked-Etag``/``X-Linked-Size`` for LFS files and ``Range`` support.

Like the real hub, ``*.safetensors`` files are LFS files (ETag = sha256 of the content) and the
others are plain git blobs (ETag = git blob sha1). No Xet headers are ever sent, so downloads go
over plain HTTP. Faults for tests: drop the connection part-way through a file once, serve a
file with one byte flipped, stall part-way through a file, answer slowly.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt")

#: huggingface_hub writes downloads in chunks of this size, so only whole chunks survive an interruption.
HF_DOWNLOAD_CHUNK = 10 * 1024 * 1024


def checkpoint_bigger_than_a_chunk(config: bytes) -> dict[str, bytes]:
    """A valid checkpoint whose weights (~12 MB) span more than one download chunk."""
    import numpy as np
    from safetensors.numpy import save

    return {"config.json": config, "model.safetensors": save({"w": np.arange(3_000_000, dtype=np.float32)})}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeRepo:
    """One repository: its files (path -> bytes) and a commit sha derived from them."""

    repo_id: str
    files: dict[str, bytes]
    commit: str = ""

    def __post_init__(self) -> None:
        if not self.commit:
            listing = "".join(f"{name}:{git_blob_sha1(data)}\n" for name, data in sorted(self.files.items()))
            self.commit = hashlib.sha1(listing.encode()).hexdigest()

    @classmethod
    def from_directory(cls, repo_id: str, directory: Path) -> FakeRepo:
        files = {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}
        return cls(repo_id=repo_id, files=files)

    def is_lfs(self, name: str) -> bool:
        return name.endswith(LFS_SUFFIXES)

    def etag(self, name: str) -> str:
        data = self.files[name]
        return hashlib.sha256(data).hexdigest() if self.is_lfs(name) else git_blob_sha1(data)

    def sibling(self, name: str) -> dict:
        data = self.files[name]
        entry: dict = {"rfilename": name, "size": len(data), "blobId": git_blob_sha1(data)}
        if self.is_lfs(name):
            entry["lfs"] = {"size": len(data), "sha256": self.etag(name), "pointerSize": 134}
        return entry

    def tree_entry(self, name: str) -> dict:
        data = self.files[name]
        entry: dict = {"type": "file", "path": name, "size": len(data), "oid": git_blob_sha1(data)}
        if self.is_lfs(name):
            entry["lfs"] = {"oid": self.etag(name), "size": len(data), "pointerSize": 134}
        return entry


@dataclass
class FakeHubState:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    #: file name -> bytes sent before the connection is dropped, applied to the next full GET only.
    drop_once: dict[str, int] = field(default_factory=dict)
    #: file names served with their middle byte flipped (headers still announce the true hash).
    corrupt: set[str] = field(default_factory=set)
    #: file name -> bytes sent before the server stops sending (without closing) until it is stopped;
    #: applied to the next full GET only. Lets a test kill a client in the middle of a file.
    stall_once: dict[str, int] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)
    #: file name -> seconds to wait before sending its body, so concurrent clients overlap.
    slow: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeHub:
    """Start with ``with FakeHub() as hub: hub.add_repo(...)``; point ``HF_ENDPOINT`` at ``hub.url``."""

    def __init__(self) -> None:
        self.state = FakeHubState()
        handler = type("BoundHandler", (_HubHandler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._running = False

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_repo(self, repo: FakeRepo) -> FakeRepo:
        self.state.repos[repo.repo_id] = repo
        return repo

    def start(self) -> FakeHub:
        self._thread.start()
        self._running = True
        return self

    def stop(self) -> None:
        self.state.stopping.set()
        if self._running:
            self._server.shutdown()
            self._running = False
        self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the tests inspect ------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self.state.lock:
            return list(self.state.requests)

    def clear_requests(self) -> None:
        with self.state.lock:
            self.state.requests.clear()

    def file_gets(self, name: str) -> list[RecordedRequest]:
        """GET requests for one file through the resolve endpoint."""
        return [r for r in self.requests if r.method == "GET" and "/resolve/" in r.path and r.path.endswith("/" + name)]

    def full_file_gets(self, name: str) -> list[RecordedRequest]:
        return [r for r in self.file_gets(name) if "range" not in r.headers]


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<kind>revision|tree)/(?P<rev>[^/]+)$")
_RANGE = re.compile(r"^bytes=(?P<start>\d+)-(?P<end>\d*)$")


class _HubHandler(BaseHTTPRequestHandler):
    state: FakeHubState
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        return

    def _record(self) -> str:
        path = unquote(urlsplit(self.path).path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        with self.state.lock:
            self.state.requests.append(RecordedRequest(self.command, path, headers))
        return path

    def do_HEAD(self) -> None:
        self._route(self._record(), send_body=False)

    def do_GET(self) -> None:
        self._route(self._record(), send_body=True)

    def _route(self, path: str, send_body: bool) -> None:
        if match := _API.match(path):
            self._api(match["repo"], match["kind"], match["rev"])
        elif match := _RESOLVE.match(path):
            self._resolve(match["repo"], match["rev"], match["file"], send_body)
        else:
            self._error(404, "EntryNotFound")

    def _repo_at(self, repo_id: str, revision: str) -> FakeRepo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound")
            return None
        if revision not in ("main", repo.commit):
            self._error(404, "RevisionNotFound")
            return None
        return repo

    def _api(self, repo_id: str, kind: str, revision: str) -> None:
        repo = self._repo_at(repo_id, revision)
        if repo is None:
            return
        if kind == "revision":
            body = {"id": repo_id, "sha": repo.commit, "siblings": [repo.sibling(n) for n in sorted(repo.files)]}
        else:
            body = [repo.tree_entry(n) for n in sorted(repo.files)]
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, send_body=True)

    def _resolve(self, repo_id: str, revision: str, name: str, send_body: bool) -> None:
        repo = self._repo_at(repo_id, revision)
        if repo is None:
            return
        if name not in repo.files:
            self._error(404, "EntryNotFound", {"X-Repo-Commit": repo.commit})
            return
        data = self._content(name, repo.files[name])
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{repo.etag(name)}"', "Accept-Ranges": "bytes"}
        if repo.is_lfs(name):
            headers["X-Linked-Etag"] = f'"{repo.etag(name)}"'
            headers["X-Linked-Size"] = str(len(data))
        range_match = _RANGE.match(self.headers.get("Range", ""))
        if range_match and send_body:
            start = int(range_match["start"])
            end = int(range_match["end"]) if range_match["end"] else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            self._send(206, data[start : end + 1], headers, send_body=True)
            return
        if send_body:
            time.sleep(self.state.slow.get(name, 0.0))
        drop_after = self._take(self.state.drop_once, name) if send_body else None
        if drop_after is not None:
            self._send_truncated(data, headers, drop_after)
            return
        stall_after = self._take(self.state.stall_once, name) if send_body else None
        if stall_after is not None:
            self._send_truncated(data, headers, stall_after, hang=True)
            return
        self._send(200, data, headers, send_body=send_body)

    def _content(self, name: str, data: bytes) -> bytes:
        if name not in self.state.corrupt:
            return data
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        return bytes(flipped)

    def _take(self, faults: dict[str, int], name: str) -> int | None:
        with self.state.lock:
            return faults.pop(name, None)

    def _send(self, status: int, body: bytes, headers: dict[str, str], send_body: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _send_truncated(self, data: bytes, headers: dict[str, str], sent: int, hang: bool = False) -> None:
        """Announce the whole file, send part of it, then hang up (or go silent) like a flaky network."""
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:sent])
        self.wfile.flush()
        if hang:
            self.state.stopping.wait(timeout=60)
        self.close_connection = True

    def _error(self, status: int, code: str, extra: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": code}).encode()
        headers = {"Content-Type": "application/json", "X-Error-Code": code, **(extra or {})}
        self._send(status, body, headers, send_body=self.command != "HEAD")
