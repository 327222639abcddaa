"""An in-memory stand-in of the Hugging Face Hub, served on 127.0.0.1, for tests that upload or download.

It implements the part of the Hub HTTP API that `huggingface_hub` uses for repos, commits and files:

- `whoami`: `GET /api/whoami-v2`
- `create_repo`, `delete_repo`, `update_repo_settings`: `POST /api/repos/create`, `DELETE /api/repos/delete`,
  `PUT /api/{type}s/{id}/settings`
- `repo_info`, `model_info`, `dataset_info`: `GET /api/{type}s/{id}[/revision/{rev}]`
- `list_repo_tree`, `list_repo_files`, `get_paths_info`: `GET /api/{type}s/{id}/tree/{rev}[/{path}]`,
  `POST /api/{type}s/{id}/paths-info/{rev}`
- `list_repo_refs`, `list_repo_commits`: `GET /api/{type}s/{id}/refs`, `GET /api/{type}s/{id}/commits/{rev}`
- `create_commit`, `upload_file`, `upload_folder`: `POST .../preupload/{rev}`, the LFS batch API with basic
  transfer (`PUT` + verify), `POST .../commit/{rev}`
- README metadata checks: `POST /api/validate-yaml`
- `hf_hub_download`, `snapshot_download`, `file_exists`: `HEAD` / `GET /{prefix}{id}/resolve/{rev}/{path}`, with
  `Range` support

Repos are model, dataset or space repos with a single `main` branch and a commit history (files are readable at
`main` or at any commit id). Large and binary files (by extension, or 10 MiB and up) must be committed through the
LFS protocol (basic transfer), as on the Hub; the commit fails if an LFS object was not uploaded completely. Xet
storage is not implemented, so clients must run with `HF_HUB_DISABLE_XET=1` (the fixture sets it). Pull requests,
branches other than `main`, tags and pagination are not implemented.

Authentication: requests carrying `Authorization: Bearer <hub.token>` act as `hub.user`. Writes need that token;
private repos are invisible without it (401, as the Hub answers); a wrong token gets 401 everywhere.

Use the `hub_standin` fixture (which points `HF_ENDPOINT` and `huggingface_hub`'s constants at the server and
isolates the cache), or `HubStandin` directly:

```python
from hub_standin import hub_standin  # noqa: F401  (makes the fixture available in a test module)

def test_upload(hub_standin):
    HfApi().create_repo("me/x", repo_type="dataset")   # goes to the stand-in
    ...
    assert hub_standin.file("me/x", "README.md", repo_type="dataset") == b"..."

subprocess.run([...], env={**os.environ, **hub_standin.env()})  # for a child process
```
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import json
import os
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

REPO_TYPES = ("model", "dataset", "space")
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# Extensions the Hub's default .gitattributes stores with LFS.
LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.jpeg", "*.jpg",
    "*.lz4", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.png", "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar", "*.tflite", "*.tgz", "*.wasm",
    "*.webp", "*.xz", "*.zip", "*.zst",
)  # fmt: skip
LFS_SIZE_THRESHOLD = 10 * 2**20
DEFAULT_TOKEN = "hf_standin_write_token"
DEFAULT_USER = "standin-user"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def needs_lfs(path: str, size: int) -> bool:
    """Whether the Hub would store this file with LFS: by its extension, or by size."""
    name = path.rsplit("/", 1)[-1]
    return size >= LFS_SIZE_THRESHOLD or any(fnmatch.fnmatch(name, pattern) for pattern in LFS_PATTERNS)


@dataclass(frozen=True)
class StoredFile:
    """A file in a commit: its content and whether it is stored with LFS."""

    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_oid(self) -> str:
        """The git blob id (of the LFS pointer for LFS files), as the Hub's tree listing gives."""
        return _git_blob_oid(_lfs_pointer(self.sha256, len(self.data)) if self.lfs else self.data)

    @property
    def etag(self) -> str:
        """The download ETag: sha256 for LFS files, the git blob id otherwise."""
        return self.sha256 if self.lfs else self.git_oid

    def tree_entry(self, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.git_oid, "size": len(self.data), "path": path}
        if self.lfs:
            pointer = _lfs_pointer(self.sha256, len(self.data))
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": len(pointer)}
        return entry


@dataclass
class Commit:
    """One commit: id, message, parent and the full file set after it."""

    oid: str
    title: str
    message: str
    parent: str | None
    files: dict[str, StoredFile]
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    """A repo with a single `main` branch."""

    repo_type: str
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)
    created_at: str = field(default_factory=_now)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    @property
    def files(self) -> dict[str, StoredFile]:
        """Files at the head of `main`."""
        return self.head.files

    def commit_at(self, revision: str) -> Commit | None:
        if revision == "main":
            return self.head
        for commit in self.commits:
            if commit.oid == revision or (len(revision) >= 7 and commit.oid.startswith(revision)):
                return commit
        return None


class HubError(Exception):
    """An error answer: status, Hub error code (X-Error-Code) and message."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        payload: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.payload = payload or {}


class HubStandin:
    """An in-memory Hub served over HTTP on 127.0.0.1 (a free port).

    Args:
        token (`str`, *optional*, defaults to `"hf_standin_write_token"`):
            The only valid access token (write access).
        user (`str`, *optional*, defaults to `"standin-user"`):
            The user the token belongs to; repos created without a namespace go there.
    """

    def __init__(self, token: str = DEFAULT_TOKEN, user: str = DEFAULT_USER):
        self.token = token
        self.user = user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.server_errors: list[str] = []
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----- lifecycle

    def start(self) -> HubStandin:
        handler = type("StandinHandler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-standin", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubStandin:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in Hub is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """Environment variables that point a `huggingface_hub` client (e.g. a child process) at this server."""
        no_proxy = ",".join(p for p in (os.environ.get("NO_PROXY", ""), "127.0.0.1", "localhost") if p)
        return {
            "HF_ENDPOINT": self.url,
            "HF_TOKEN": self.token,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }

    # ----- direct access for tests

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        """The stored repo; `KeyError` naming the existing repos if absent."""
        with self._lock:
            try:
                return self.repos[(repo_type, repo_id)]
            except KeyError:
                raise KeyError(f"no {repo_type} repo {repo_id!r}; repos: {sorted(self.repos)}") from None

    def file(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bytes:
        """Content of a file of a repo at a revision."""
        commit = self.repo(repo_id, repo_type).commit_at(revision)
        if commit is None or path not in commit.files:
            raise KeyError(f"{path!r} is not in {repo_type} repo {repo_id!r} at {revision!r}")
        return commit.files[path].data

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> Repo:
        """Create a repo with the Hub's initial commit (a `.gitattributes` listing the LFS patterns)."""
        if repo_type not in REPO_TYPES:
            raise ValueError(f"repo_type must be one of {REPO_TYPES}")
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo", code="RepoExists")
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private)
            attributes = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS)
            self._commit(repo, {".gitattributes": StoredFile(attributes.encode(), lfs=False)}, "initial commit", "")
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def add_files(
        self, repo_id: str, files: dict[str, bytes], repo_type: str = "model", message: str = "Add files"
    ) -> str:
        """Commit files directly (LFS where the Hub would use it); returns the commit id. Useful to seed a repo."""
        with self._lock:
            repo = self.repo(repo_id, repo_type)
            new = dict(repo.files)
            for path, data in files.items():
                if needs_lfs(path, len(data)):
                    self.lfs_objects[hashlib.sha256(data).hexdigest()] = data
                new[path] = StoredFile(data, lfs=needs_lfs(path, len(data)))
            return self._commit(repo, new, message, "").oid

    # ----- internals

    def _commit(self, repo: Repo, files: dict[str, StoredFile], title: str, message: str) -> Commit:
        parent = repo.commits[-1].oid if repo.commits else None
        digest = hashlib.sha1()
        digest.update(f"{repo.repo_type}/{repo.repo_id}\n{parent}\n{title}\n{next(self._counter)}\n".encode())
        for path in sorted(files):
            digest.update(f"{path} {files[path].git_oid}\n".encode())
        commit = Commit(oid=digest.hexdigest(), title=title, message=message, parent=parent, files=files)
        repo.commits.append(commit)
        return commit


# --------------------------------------------------------------------------------------------------- HTTP handler

_TYPE_PLURALS = {"models": "model", "datasets": "dataset", "spaces": "space"}
_API_REPO = re.compile(r"^/api/(?P<plural>models|datasets|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)(?P<rest>/.*)?$")
_LFS_BATCH = re.compile(
    r"^/(?:(?P<plural>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+?)\.git/info/lfs/objects/batch$"
)
_RESOLVE = re.compile(
    r"^/(?:(?P<plural>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
)
_LFS_OBJECT = re.compile(r"^/_standin/lfs/(?P<oid>[0-9a-f]{64})(?P<verify>/verify)?$")


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandin
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:  # silence the default stderr logging
        pass

    # ----- plumbing

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False):
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _auth(self) -> bool:
        """True with the valid token, False without a token; a wrong token is an error."""
        header = self.headers.get("Authorization")
        if not header:
            return False
        if header != f"Bearer {self.hub.token}":
            raise HubError(401, "Invalid credentials in Authorization header")
        return True

    def _require_auth(self) -> None:
        if not self._auth():
            raise HubError(401, "You must be authenticated to do this (no token)", code="Unauthorized")

    def _repo(self, repo_type: str, repo_id: str, authenticated: bool) -> Repo:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authenticated):
            status = 401 if not authenticated else 404
            raise HubError(status, f"Repository Not Found for {repo_type} {repo_id}", code="RepoNotFound")
        return repo

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path = split.path
        query = parse_qs(split.query)
        self.hub.requests.append((method, path))
        body = self._body() if method in ("POST", "PUT", "DELETE") else b""
        try:
            with self.hub._lock:
                self._route(method, path, query, body)
        except HubError as error:
            headers = {"X-Error-Message": error.message, **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            payload = json.dumps({"error": error.message, **error.payload}).encode()
            self._send(error.status, payload, headers, head=method == "HEAD")
        except Exception as error:  # a bug in the stand-in or an unexpected request: make it visible
            self.hub.server_errors.append(f"{method} {self.path}: {error!r}")
            self._send(500, json.dumps({"error": repr(error)}).encode())

    do_GET = lambda self: self._dispatch("GET")  # noqa: E731
    do_HEAD = lambda self: self._dispatch("HEAD")  # noqa: E731
    do_POST = lambda self: self._dispatch("POST")  # noqa: E731
    do_PUT = lambda self: self._dispatch("PUT")  # noqa: E731
    do_DELETE = lambda self: self._dispatch("DELETE")  # noqa: E731

    # ----- routes

    def _route(self, method: str, path: str, query: dict, body: bytes) -> None:
        if path == "/api/whoami-v2" and method == "GET":
            self._require_auth()
            return self._json(200, self._whoami())
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(json.loads(body or b"{}"))
        if path == "/api/repos/delete" and method in ("DELETE", "POST"):
            return self._delete_repo(json.loads(body or b"{}"))
        if path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml(json.loads(body or b"{}"))
        if match := _LFS_OBJECT.match(path):
            return self._lfs_object(method, match["oid"], bool(match["verify"]), body)
        if (match := _LFS_BATCH.match(path)) and method == "POST":
            repo_type = _TYPE_PLURALS[match["plural"]] if match["plural"] else "model"
            return self._lfs_batch(repo_type, f"{match['ns']}/{match['name']}", json.loads(body or b"{}"))
        if match := _API_REPO.match(path):
            repo_type = _TYPE_PLURALS[match["plural"]]
            repo_id = f"{unquote(match['ns'])}/{unquote(match['name'])}"
            return self._api_repo(method, repo_type, repo_id, match["rest"] or "", query, body)
        if (match := _RESOLVE.match(path)) and method in ("GET", "HEAD"):
            repo_type = _TYPE_PLURALS[match["plural"]] if match["plural"] else "model"
            repo_id = f"{unquote(match['ns'])}/{unquote(match['name'])}"
            return self._resolve(method, repo_type, repo_id, unquote(match["rev"]), unquote(match["path"]))
        raise HubError(404, f"the stand-in Hub does not implement {method} {path}")

    def _whoami(self) -> dict[str, Any]:
        return {
            "type": "user",
            "id": "0" * 24,
            "name": self.hub.user,
            "fullname": "Stand-in User",
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "standin", "role": "write"}},
        }

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.hub.url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    def _create_repo(self, payload: dict[str, Any]) -> None:
        self._require_auth()
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"invalid repo type {repo_type!r}")
        name = payload.get("name")
        if not name or "/" in name:
            raise HubError(400, f"invalid repo name {name!r}")
        repo_id = f"{payload.get('organization') or self.hub.user}/{name}"
        private = payload.get("visibility") == "private" if "visibility" in payload else bool(payload.get("private"))
        existing = self.hub.repos.get((repo_type, repo_id))
        if existing is not None:
            raise HubError(409, f"You already created this {repo_type} repo", payload={"url": self._repo_url(existing)})
        repo = self.hub.create_repo(repo_id, repo_type, private=private)
        self._json(
            200, {"url": self._repo_url(repo), "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]}
        )

    def _delete_repo(self, payload: dict[str, Any]) -> None:
        self._require_auth()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload.get('name')}"
        self._repo(repo_type, repo_id, authenticated=True)
        del self.hub.repos[(repo_type, repo_id)]
        self._json(200, {})

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        content = payload.get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.S)
        if match is None:
            return self._json(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
        try:
            metadata = yaml.safe_load(match.group(1))
        except yaml.YAMLError as error:
            return self._json(400, {"errors": [{"message": f"Invalid YAML: {error}"}]})
        if metadata is not None and not isinstance(metadata, dict):
            return self._json(400, {"errors": [{"message": "YAML metadata must be a mapping"}]})
        self._json(200, {"errors": [], "warnings": []})

    def _api_repo(self, method: str, repo_type: str, repo_id: str, rest: str, query: dict, body: bytes) -> None:
        authenticated = self._auth()
        repo = self._repo(repo_type, repo_id, authenticated)
        if method == "GET" and (rest == "" or rest.startswith("/revision/")):
            revision = unquote(rest[len("/revision/") :]) if rest else "main"
            return self._json(200, self._info(repo, self._commit(repo, revision)))
        if method == "GET" and rest.startswith("/tree/"):
            revision, _, sub_path = rest[len("/tree/") :].partition("/")
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            commit = self._commit(repo, unquote(revision))
            return self._json(200, self._tree(commit, unquote(sub_path).strip("/"), recursive))
        if method == "POST" and rest.startswith("/paths-info/"):
            commit = self._commit(repo, unquote(rest[len("/paths-info/") :]))
            form = parse_qs(body.decode())
            paths = form.get("paths", []) if form else json.loads(body or b"{}").get("paths", [])
            return self._json(200, self._paths_info(commit, paths))
        if method == "GET" and rest == "/refs":
            main = {"name": "main", "ref": "refs/heads/main", "targetCommit": repo.head.oid}
            return self._json(200, {"branches": [main], "tags": [], "converts": []})
        if method == "GET" and rest.startswith("/commits/"):
            commit = self._commit(repo, unquote(rest[len("/commits/") :]))
            history = repo.commits[: repo.commits.index(commit) + 1][::-1]
            return self._json(200, [self._commit_entry(c) for c in history])
        if method == "POST" and rest.startswith("/preupload/"):
            self._require_auth()
            self._writable_revision(repo, unquote(rest[len("/preupload/") :]), query)
            return self._json(200, self._preupload(repo, json.loads(body or b"{}")))
        if method == "POST" and rest.startswith("/commit/"):
            self._require_auth()
            self._writable_revision(repo, unquote(rest[len("/commit/") :]), query)
            return self._json(200, self._apply_commit(repo, body))
        if method == "PUT" and rest == "/settings":
            self._require_auth()
            settings = json.loads(body or b"{}")
            if "private" in settings:
                repo.private = bool(settings["private"])
            if "visibility" in settings:
                repo.private = settings["visibility"] == "private"
            return self._json(200, {})
        raise HubError(404, f"the stand-in Hub does not implement {method} /api/{repo_type}s/{repo_id}{rest}")

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.commit_at(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return commit

    def _writable_revision(self, repo: Repo, revision: str, query: dict) -> None:
        if query.get("create_pr", ["0"])[0] not in ("0", ""):
            raise HubError(400, "the stand-in Hub does not implement pull requests")
        if revision != "main":
            raise HubError(
                404, f"Invalid rev id: {revision} (the stand-in Hub has only 'main')", code="RevisionNotFound"
            )

    def _info(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        card_data = None
        readme = commit.files.get("README.md")
        if readme is not None:
            match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", readme.data.decode("utf-8", "replace"), flags=re.S)
            if match:
                try:
                    card_data = yaml.safe_load(match.group(1))
                except yaml.YAMLError:
                    card_data = None
        siblings = []
        for path, stored in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path, "size": len(stored.data), "blobId": stored.git_oid}
            if stored.lfs:
                entry = stored.tree_entry(path)["lfs"]
                sibling["lfs"] = {"sha256": entry["oid"], "size": entry["size"], "pointerSize": entry["pointerSize"]}
            siblings.append(sibling)
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "createdAt": repo.created_at,
            "lastModified": commit.date,
            "cardData": card_data,
            "siblings": siblings,
            "usedStorage": sum(len(f.data) for f in commit.files.values()),
        }

    @staticmethod
    def _tree(commit: Commit, sub_path: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = f"{sub_path}/" if sub_path else ""
        if sub_path and sub_path in commit.files:
            raise HubError(400, f"{sub_path} is a file, not a folder")
        below = {path: stored for path, stored in commit.files.items() if path.startswith(prefix)}
        if sub_path and not below:
            raise HubError(404, f"{sub_path} does not exist at {commit.oid}", code="EntryNotFound")
        entries: dict[str, dict[str, Any]] = {}
        for path, stored in sorted(below.items()):
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and folder not in entries:
                    entries[folder] = {
                        "type": "directory",
                        "oid": _git_blob_oid(folder.encode()),
                        "size": 0,
                        "path": folder,
                    }
            if recursive or len(parts) == 1:
                entries[path] = stored.tree_entry(path)
        return list(entries.values())

    @staticmethod
    def _paths_info(commit: Commit, paths: list[str]) -> list[dict[str, Any]]:
        result = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                result.append(commit.files[path].tree_entry(path))
            elif any(p.startswith(f"{path}/") for p in commit.files):
                result.append({"type": "directory", "oid": _git_blob_oid(path.encode()), "size": 0, "path": path})
        return result

    def _commit_entry(self, commit: Commit) -> dict[str, Any]:
        return {
            "id": commit.oid,
            "title": commit.title,
            "message": commit.message,
            "authors": [{"user": self.hub.user}],
            "date": commit.date,
        }

    def _preupload(self, repo: Repo, payload: dict[str, Any]) -> dict[str, Any]:
        files = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item["size"])
            existing = repo.files.get(path)
            lfs = existing.lfs if existing is not None else needs_lfs(path, size)
            remote_oid = None if existing is None else (existing.sha256 if existing.lfs else existing.git_oid)
            files.append(
                {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": remote_oid}
            )
        return {"files": files, "commitOid": repo.head.oid}

    def _apply_commit(self, repo: Repo, body: bytes) -> dict[str, Any]:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent and not repo.head.oid.startswith(parent):
            raise HubError(412, f"parent commit {parent} is not the head of main ({repo.head.oid})")
        files = dict(repo.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"].strip("/")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                data = base64.b64decode(value["content"])
                if needs_lfs(path, len(data)):
                    raise HubError(400, f"{path} must be uploaded with LFS (binary or large file)")
                files[path] = StoredFile(data, lfs=False)
            elif key == "lfsFile":
                oid = value["oid"]
                data = self.hub.lfs_objects.get(oid)
                if data is None:
                    raise HubError(422, f"LFS object {oid} for {path} was not uploaded")
                if "size" in value and int(value["size"]) != len(data):
                    raise HubError(422, f"LFS object {oid} for {path} has size {len(data)}, not {value['size']}")
                files[path] = StoredFile(data, lfs=True)
            elif key == "deletedFile":
                if path not in files:
                    raise HubError(404, "A file with this name doesn't exist", code="EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                doomed = [p for p in files if p.startswith(f"{path}/")]
                if not doomed:
                    raise HubError(404, "A folder with this name doesn't exist", code="EntryNotFound")
                for p in doomed:
                    del files[p]
            else:
                raise HubError(400, f"the stand-in Hub does not implement commit operation {key!r}")
        commit = self.hub._commit(repo, files, header.get("summary") or "Update", header.get("description") or "")
        url = f"{self._repo_url(repo)}/commit/{commit.oid}"
        return {"success": True, "commitOid": commit.oid, "commitUrl": url, "hookOutput": ""}

    def _lfs_batch(self, repo_type: str, repo_id: str, payload: dict[str, Any]) -> None:
        self._require_auth()
        self._repo(repo_type, repo_id, authenticated=True)
        if payload.get("operation") != "upload":
            raise HubError(400, "the stand-in Hub implements the LFS batch API for uploads only")
        if "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "the stand-in Hub implements only the basic LFS transfer")
        objects = []
        for item in payload.get("objects", []):
            oid, size = item["oid"], int(item["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            stored = self.hub.lfs_objects.get(oid)
            if stored is None or len(stored) != size:
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.url}/_standin/lfs/{oid}", "header": {}},
                    "verify": {"href": f"{self.hub.url}/_standin/lfs/{oid}/verify", "header": {}},
                }
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_object(self, method: str, oid: str, verify: bool, body: bytes) -> None:
        if verify and method == "POST":
            self._require_auth()
            request = json.loads(body or b"{}")
            stored = self.hub.lfs_objects.get(oid)
            if stored is None or len(stored) != int(request.get("size", -1)):
                raise HubError(404, f"LFS object {oid} is missing or incomplete")
            return self._json(200, {})
        if not verify and method == "PUT":
            if hashlib.sha256(body).hexdigest() != oid:
                raise HubError(400, f"uploaded content does not match LFS oid {oid} ({len(body)} bytes received)")
            self.hub.lfs_objects[oid] = body
            return self._send(200, b"", {"ETag": f'"{oid}"'})
        raise HubError(405, f"{method} not allowed on LFS objects")

    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo(repo_type, repo_id, self._auth())
        commit = self._commit(repo, revision)
        stored = commit.files.get(path)
        if stored is None:
            raise HubError(404, f"Entry Not Found: {path}", code="EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{stored.etag}"',
            "Accept-Ranges": "bytes",
        }
        if stored.lfs:
            headers["X-Linked-Etag"] = f'"{stored.etag}"'
            headers["X-Linked-Size"] = str(len(stored.data))
        data = stored.data
        status = 200
        requested = self.headers.get("Range")
        if requested and (match := re.fullmatch(r"bytes=(\d+)-(\d*)", requested.strip())):
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            if start >= len(data) and len(data) > 0:
                raise HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data = data[start : end + 1]
            status = 206
        self._send(status, data, headers, head=method == "HEAD")


@pytest.fixture
def hub_standin(monkeypatch, tmp_path_factory):
    """A running [`HubStandin`]; `HF_ENDPOINT`, `HF_TOKEN` and the `huggingface_hub` (and `datasets`) endpoint
    constants point at it for the test, Xet is disabled and the Hub cache lives in a temporary folder."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path_factory.mktemp("hf-home")
    with HubStandin() as hub:
        for key, value in hub.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("HF_HOME", str(cache))
        monkeypatch.setattr(hub_constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(
            hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(Path(cache) / "hub"))
        try:
            import datasets.config as datasets_config
        except ImportError:
            datasets_config = None
        if datasets_config is not None:
            monkeypatch.setattr(datasets_config, "HF_ENDPOINT", hub.url)
            monkeypatch.setattr(
                datasets_config, "HUB_DATASETS_URL", hub.url + "/datasets/{repo_id}/resolve/{revision}/{path}"
            )
            monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", False)
        yield hub
        assert not hub.server_errors, f"the stand-in Hub failed on: {hub.server_errors}"
