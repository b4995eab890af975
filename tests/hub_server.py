"""A loopback stand-in for the Hugging Face Hub, speaking the protocol huggingface_hub 2.x uses.

Why: no test machine reaches the Hub, yet the download path must run against huggingface_hub itself.
What huggingface_hub (2.4) sends, read from its source: ``HEAD /{repo}/resolve/{rev}/{path}`` without
following redirects to another origin (``get_hf_file_metadata``: ``X-Repo-Commit``, ``X-Linked-Etag``
or ``ETag``, ``X-Linked-Size`` or ``Content-Length``, ``Location``; errors from ``X-Error-Code``);
``GET`` of that location with ``Range: bytes=N-`` when resuming (``http_get``, expects 206 and
``Content-Range``); ``GET /api/models/{repo}/tree/{rev}[/{quoted path}]?recursive=&expand=``.
LFS files are answered as the Hub does: 302 to a CDN on another origin (``localhost`` here, so the
client must drop the token), ETag = sha256. Small files (``*.json``) are git blobs served in place.
Faults on demand (``fail``): 401, 404, 500, a connection cut half way, corrupted bytes, a Range ignored
(``norange``: 200 and the whole file); ``rate`` slows bodies.
``/api/agent-harnesses`` (huggingface_hub's daily telemetry fetch) answers an empty registry.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".npz", ".safetensors", ".bin")


@dataclass
class HubFile:
    path: str  # in its repo
    src: Path
    size: int
    sha256: str
    git_sha1: str
    lfs: bool


@dataclass
class Fault:
    kind: str  # "401" | "404" | "500" | "cut" | "corrupt" | "norange"
    match: str  # substring of the request path
    times: int  # how many matching requests it hits
    on: tuple[str, ...] = ("HEAD", "GET")


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: bool  # whether an Authorization header came (never its value)
    status: int = 0
    body_bytes: int = 0
    headers: dict = field(default_factory=dict)


def _digests(src: Path) -> tuple[int, str, str]:
    size = src.stat().st_size
    sha, git = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with open(src, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            git.update(chunk)
    return size, sha.hexdigest(), git.hexdigest()


class HubServer:
    """``with HubServer() as hub: hub.add_folder(repo, folder, src_dir); hub.url``: the HF_ENDPOINT."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, HubFile]] = {}
        self.gated: dict[str, str] = {}  # repo -> the token that may read it
        self.faults: list[Fault] = []
        self.rate: float | None = None  # bytes per second for file bodies; None: as fast as loopback goes
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cdn = f"http://localhost:{self.port}"  # another origin, as cdn-lfs.hf.co is
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name="hub-server")

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # content
    def add_file(self, repo: str, path: str, src: Path) -> HubFile:
        size, sha, git = _digests(Path(src))
        f = HubFile(path, Path(src), size, sha, git, lfs=path.endswith(LFS_SUFFIXES))
        self.repos.setdefault(repo, {})[path] = f
        return f

    def add_folder(self, repo: str, folder: str, src_dir: Path) -> None:
        for p in sorted(Path(src_dir).iterdir()):
            if p.is_file():
                self.add_file(repo, f"{folder}/{p.name}", p)

    def commit(self, repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def fail(self, kind: str, match: str = "", times: int = 1, on: tuple[str, ...] = ("HEAD", "GET")) -> None:
        self.faults.append(Fault(kind, match, times, on))

    def _fault(self, method: str, path: str, kinds: tuple[str, ...]) -> str | None:
        with self._lock:
            for f in self.faults:
                if f.times > 0 and f.kind in kinds and method in f.on and f.match in path:
                    f.times -= 1
                    return f.kind
        return None

    def requests(self, method: str | None = None, contains: str = "") -> list[Request]:
        return [r for r in self.log if (method is None or r.method == method) and contains in r.path]

    def _by_sha(self, sha: str) -> HubFile | None:
        return next((f for files in self.repos.values() for f in files.values() if f.sha256 == sha), None)


def _handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a) -> None:  # quiet: the request log is hub.log
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        # plumbing
        def _serve(self, body: bool) -> None:
            url = urlsplit(self.path)
            self.req = Request(self.command, unquote(url.path), self.headers.get("Range"),
                               "authorization" in {k.lower() for k in self.headers})
            hub.log.append(self.req)
            parts = url.path.strip("/").split("/")
            try:
                if parts[:2] == ["api", "agent-harnesses"]:  # fetched once a day by huggingface_hub's telemetry
                    payload = json.dumps({"standardEnvVars": [], "harnesses": {}}).encode()
                    self._send(200, {"Content-Type": "application/json", "Content-Length": len(payload)}, payload)
                elif parts[:2] == ["api", "models"]:
                    self._tree(parts[2:], parse_qs(url.query))
                elif parts[0] == "lfs-cdn":
                    self._file(hub._by_sha(parts[1]), body, self.req.path)
                elif len(parts) >= 5 and parts[2] == "resolve":
                    self._resolve("/".join(parts[:2]), unquote("/".join(parts[4:])), body)
                else:
                    self._error(404, "RepoNotFound", "Repository not found")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _send(self, status: int, headers: dict[str, str | int], payload: bytes = b"") -> None:
            self.req.status = status
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, str(v))
            self.end_headers()
            if payload and self.command != "HEAD":
                self.wfile.write(payload)
                self.req.body_bytes += len(payload)

        def _error(self, status: int, code: str | None, message: str, repo: str | None = None) -> None:
            payload = json.dumps({"error": message}).encode()
            headers = {"Content-Type": "application/json", "Content-Length": len(payload), "X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            if repo in hub.repos:
                headers["X-Repo-Commit"] = hub.commit(repo)
            self._send(status, headers, payload)

        def _gate(self, repo: str) -> bool:
            """False (and a 401 without a token, 403 with another one) when the repo is gated."""
            token = hub.gated.get(repo)
            if token is None or self.headers.get("Authorization") == f"Bearer {token}":
                return True
            if self.headers.get("Authorization"):
                self._error(403, "GatedRepo", f"Access to model {repo} is restricted and you are not in the "
                            "authorized list. Visit https://huggingface.co/{repo} to ask for access.", repo)
                return False
            self._error(401, "GatedRepo", f"Access to model {repo} is restricted. You must have access to it "
                        "and be authenticated to access it. Please log in.", repo)
            return False

        def _status_fault(self) -> bool:
            """True (and the error sent) when an injected 401/404/500 hits this request."""
            kind = hub._fault(self.command, self.req.path, ("401", "404", "500"))
            if kind:
                code = {"401": "GatedRepo", "404": "EntryNotFound", "500": None}[kind]
                self._error(int(kind), code, f"injected {kind}")
            return bool(kind)

        def _resolve(self, repo: str, path: str, body: bool) -> None:
            if self._status_fault():
                return
            if repo not in hub.repos:
                return self._error(401 if not self.headers.get("Authorization") else 404, "RepoNotFound",
                                   "Repository not found")
            if not self._gate(repo):
                return
            f = hub.repos[repo].get(path)
            if f is None:
                return self._error(404, "EntryNotFound", f"{path} does not exist on \"main\"", repo)
            common = {"X-Repo-Commit": hub.commit(repo), "Accept-Ranges": "bytes"}
            if f.lfs:  # the Hub redirects LFS files to its CDN
                loc = f"{hub.cdn}/lfs-cdn/{f.sha256}?X-Amz-Signature=test"
                return self._send(302, {**common, "Location": loc, "X-Linked-Etag": f'"{f.sha256}"',
                                        "X-Linked-Size": f.size, "ETag": f'"{f.git_sha1}"', "Content-Length": 0})
            self._file(f, body, path, {**common, "ETag": f'"{f.git_sha1}"'})

        def _file(self, f: HubFile | None, body: bool, path: str, extra: dict | None = None) -> None:
            if not extra and self._status_fault():  # on the CDN; resolve drew its own already
                return
            if f is None:
                return self._error(404, None, "no such object")
            kind = hub._fault(self.command, f"{path} {f.path}", ("cut", "corrupt", "norange")) if body else None
            start = 0
            rng = self.headers.get("Range")
            headers = {**(extra or {"ETag": f'"{f.sha256}"'}), "Content-Type": "application/octet-stream",
                       "Accept-Ranges": "bytes"}
            if kind == "norange":  # as a CDN that ignores Range (200, the whole file) does
                rng = None
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[6:-1])
                if start >= f.size:
                    return self._send(416, {"Content-Range": f"bytes */{f.size}", "Content-Length": 0})
                headers["Content-Range"] = f"bytes {start}-{f.size - 1}/{f.size}"
            headers["Content-Length"] = f.size - start
            self.req.status = 206 if start or rng else 200
            self.send_response(self.req.status)
            for k, v in headers.items():
                self.send_header(k, str(v))
            self.end_headers()
            if not body:
                return
            count = f.size - start
            if kind == "cut":  # up to half the file, then the connection drops
                count = max(f.size // 2 - start, 0)
            with open(f.src, "rb") as src:
                if kind == "corrupt":
                    src.seek(start)
                    data = bytearray(src.read(count))
                    data[len(data) // 2] ^= 0xFF
                    self.wfile.write(bytes(data))
                    sent = len(data)
                elif hub.rate:
                    sent = _trickle(self.wfile, src, start, count, hub.rate)
                else:
                    sent = self.connection.sendfile(src, start, count) if count else 0
            self.req.body_bytes += sent
            if kind == "cut":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        def _tree(self, parts: list[str], query: dict) -> None:
            # /api/models/{owner}/{name}/tree/{rev}[/{quoted path}]
            repo, rev_and_path = "/".join(parts[:2]), parts[3:]
            if repo not in hub.repos:
                return self._error(404, "RepoNotFound", "Repository not found")
            if not self._gate(repo):
                return
            prefix = unquote("/".join(rev_and_path[1:])).strip("/")
            recursive = query.get("recursive", ["False"])[0].lower() == "true"
            entries: dict[str, dict] = {}
            for path, f in sorted(hub.repos[repo].items()):
                if prefix and not path.startswith(prefix + "/"):
                    continue
                rest = path[len(prefix) + 1:] if prefix else path
                bits = rest.split("/")
                for i in range(1, len(bits)):  # the folders on the way
                    if recursive or i == 1:
                        p = "/".join(filter(None, [prefix, *bits[:i]]))
                        entries[p] = {"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "path": p}
                if recursive or len(bits) == 1:
                    e = {"type": "file", "oid": f.git_sha1, "size": f.size, "path": path}
                    if f.lfs:
                        e["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                    entries[path] = e
            if prefix and not entries:
                return self._error(404, "EntryNotFound", f"{prefix} does not exist on \"main\"", repo)
            payload = json.dumps(list(entries.values())).encode()
            self._send(200, {"Content-Type": "application/json", "Content-Length": len(payload)}, payload)

    return Handler


def _trickle(out, src, start: int, count: int, rate: float, piece: int = 1 << 18) -> int:
    """Send ``count`` bytes at about ``rate`` bytes/s: a slow link, so a test can act mid-transfer."""
    src.seek(start)
    sent = 0
    try:
        while sent < count:
            data = src.read(min(piece, count - sent))
            out.write(data)
            sent += len(data)
            time.sleep(len(data) / rate)
    except (BrokenPipeError, ConnectionResetError):  # the client went away (a cancelled job): fine
        pass
    return sent


def resolve_url(hub: HubServer, repo: str, path: str) -> str:
    return f"{hub.url}/{repo}/resolve/main/{quote(path)}"
