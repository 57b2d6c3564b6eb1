"""A Hugging Face hub on 127.0.0.1, stdlib only, speaking the endpoints huggingface-hub 2.4
calls, so tests run the real client (HF_ENDPOINT=server.url):

- GET  /api/models/{repo}[/revision/{rev}]   model info: id, sha (the commit), siblings
- GET  /api/models/{repo}/tree/{rev}         file listing with LFS sha256 and size
- HEAD /{repo}/resolve/{rev}/{path}          ETag/X-Linked-Etag = sha256, X-Linked-Size,
                                             X-Repo-Commit (no X-Xet-Hash: plain HTTP)
- GET  /{repo}/resolve/{rev}/{path}          the bytes, with Range support (206)

Errors carry the hub's X-Error-Code header (RepoNotFound, GatedRepo, RevisionNotFound,
EntryNotFound), which huggingface_hub turns into its typed exceptions.

Faults, per file: "cut" (the next full GET stops after `cut_at` bytes and closes the
connection, once), "corrupt" (one byte flipped on every GET), "stall" (send `cut_at`
bytes, then hang until `release` is set).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

GOOD_TOKEN = "hf_loopback_good_token"


@dataclass
class HubFile:
    path: str
    source: Path  # the bytes served
    size: int = 0
    sha256: str = ""
    git_oid: str = ""

    def __post_init__(self):
        h = hashlib.sha256()
        g = hashlib.sha1()
        self.size = self.source.stat().st_size
        g.update(f"blob {self.size}\0".encode())
        with open(self.source, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                g.update(chunk)
        self.sha256, self.git_oid = h.hexdigest(), g.hexdigest()


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile] = field(default_factory=dict)
    gated: bool = False
    commit: str = ""

    def __post_init__(self):
        if not self.commit:
            self.commit = hashlib.sha1(self.repo_id.encode()).hexdigest()

    def add(self, path: str, source: Path) -> HubFile:
        self.files[path] = HubFile(path, Path(source))
        return self.files[path]


@dataclass
class Fault:
    kind: str  # "cut", "corrupt", "stall"
    cut_at: int = 1 << 20
    release: threading.Event = field(default_factory=threading.Event)


class Hub:
    """The server, its repos, its faults and a log of the requests it saw."""

    def __init__(self):
        self.repos: dict[str, HubRepo] = {}
        self.faults: dict[tuple[str, str], Fault] = {}
        self.log: list[dict] = []
        self._lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Hub:
        self.thread.start()
        return self

    def stop(self) -> None:
        for fault in self.faults.values():
            fault.release.set()
        self.server.shutdown()
        self.server.server_close()

    def repo(self, repo_id: str, *, gated: bool = False) -> HubRepo:
        self.repos[repo_id] = HubRepo(repo_id, gated=gated)
        return self.repos[repo_id]

    def requests(self, method: str | None = None, contains: str = "") -> list[dict]:
        with self._lock:
            return [
                r
                for r in self.log
                if (method is None or r["method"] == method) and contains in r["path"]
            ]

    def record(self, entry: dict) -> None:
        with self._lock:
            self.log.append(entry)


_API = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client pools connections
    hub: Hub

    def log_message(self, format, *args):  # quiet: pytest shows failures, not access logs
        pass

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # ---------------------------------------------------------------- helpers

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data, headers: dict | None = None) -> None:
        self._send(
            200, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})}
        )

    def _error(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(
            status,
            body,
            {
                "X-Error-Code": code,
                "X-Error-Message": message,
                "Content-Type": "application/json",
                **(headers or {}),
            },
        )

    def _repo(self, repo_id: str, rev: str | None) -> HubRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if rev not in (None, "main", repo.commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo

    def _authorised(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {GOOD_TOKEN}"

    # ---------------------------------------------------------------- methods

    def do_HEAD(self):
        self._route()

    def do_GET(self):
        self._route()

    def _route(self):
        url = urlparse(self.path)
        path = unquote(url.path)
        self.hub.record(
            {
                "method": self.command,
                "path": path,
                "range": self.headers.get("Range"),
                "auth": self.headers.get("Authorization"),
            }
        )
        if m := _TREE.match(path):
            return self._tree(m.group(1), m.group(2))
        if m := _API.match(path):
            return self._info(m.group(1), m.group(2))
        if m := _RESOLVE.match(path):
            return self._resolve(m.group(1), m.group(2), m.group(3))
        self._send(404, b"not found")

    def _info(self, repo_id: str, rev: str | None):
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        self._json(
            {
                "id": repo.repo_id,
                "sha": repo.commit,
                "private": False,
                "gated": "manual" if repo.gated else False,
                "siblings": [{"rfilename": p} for p in repo.files],
            }
        )

    def _tree(self, repo_id: str, rev: str):
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        self._json(
            [
                {
                    "type": "file",
                    "oid": f.git_oid,
                    "size": f.size,
                    "path": f.path,
                    "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": 134},
                }
                for f in repo.files.values()
            ]
        )

    def _resolve(self, repo_id: str, rev: str, filename: str):
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        if repo.gated and not self._authorised():
            status = 403 if self.headers.get("Authorization") else 401
            return self._error(
                status,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it "
                "and be authenticated to access it. Please log in.",
            )
        f = repo.files.get(filename)
        if f is None:
            return self._error(
                404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": repo.commit}
            )
        meta = {
            "X-Repo-Commit": repo.commit,
            "ETag": f'"{f.sha256}"',
            "X-Linked-Etag": f'"{f.sha256}"',
            "X-Linked-Size": f.size,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if self.command == "HEAD":
            self.send_response(200)
            for k, v in meta.items():
                self.send_header(k, str(v))
            self.send_header("Content-Length", str(f.size))
            self.end_headers()
            return
        self._body(repo, f, meta)

    def _body(self, repo: HubRepo, f: HubFile, meta: dict):
        start, end = 0, f.size - 1
        status = 200
        if rng := self.headers.get("Range"):
            m = re.match(r"bytes=(\d+)-(\d*)$", rng)
            if m:
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else f.size - 1
                status = 206
        if start >= f.size:
            return self._send(416, b"", {"Content-Range": f"bytes */{f.size}"})
        fault = self.hub.faults.get((repo.repo_id, f.path))
        self.send_response(status)
        for k, v in meta.items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{f.size}")
        self.end_headers()

        limit = end + 1
        if fault is not None and fault.kind in ("cut", "stall") and start == 0:
            limit = min(limit, fault.cut_at)
        flip = f.size // 2 if fault is not None and fault.kind == "corrupt" else -1
        with open(f.source, "rb") as src:
            src.seek(start)
            pos = start
            while pos < limit:
                chunk = bytearray(src.read(min(1 << 20, limit - pos)))
                if not chunk:
                    break
                if pos <= flip < pos + len(chunk):
                    chunk[flip - pos] ^= 0xFF
                self.wfile.write(chunk)
                pos += len(chunk)
        if limit <= end:  # a cut: the body stops short, the connection closes
            self.wfile.flush()
            if fault.kind == "stall":
                fault.release.wait(30)
            else:
                del self.hub.faults[(repo.repo_id, f.path)]
            self.close_connection = True


def start_hub() -> Hub:
    return Hub().start()
