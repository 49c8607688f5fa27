"""A local HTTP server that stands in for the Hugging Face Hub in tests (no Hub is reachable here).

It is NOT the Hub: it answers, on 127.0.0.1 only and in memory, just the calls that the installed
huggingface_hub (2.x) makes to push a model folder and to download it back, as read from its source:

- ``POST /api/repos/create``: create a model repository (409 with its URL when it exists, as the Hub).
- ``POST /api/validate-yaml``: the README's metadata, checked as the Hub would reject it (not a mapping,
  a ``pipeline_tag`` that is not a Hub task, a ``model-index`` result without task type or metric values).
- ``POST /api/models/{repo}/preupload/{revision}``: every file is uploaded as a "regular" file, inline in
  the commit, so no LFS or Xet transfer is involved (the real Hub would ask for LFS/Xet for weights).
- ``POST /api/models/{repo}/commit/{revision}``: the NDJSON commit (header, then one ``file`` line per
  file, base64 content); ``deletedFile`` lines are applied too, ``lfsFile`` lines are refused.
- ``GET /api/models/{repo}[/revision/{revision}]``: repository info (``sha``, ``siblings``).
- ``GET /api/models/{repo}/tree/{revision}[/{path}]``: the file listing used by ``snapshot_download``.
- ``HEAD`` / ``GET /{repo}/resolve/{revision}/{path}``: file metadata (``X-Repo-Commit``, ``ETag``,
  ``Content-Length``) and content; missing files answer 404 with ``X-Error-Code: EntryNotFound``.

Any other call answers 501 naming the method and path, so a client change shows up as a clear failure.
Point huggingface_hub to it with ``HF_ENDPOINT=<server.url>`` (read when huggingface_hub is imported).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml

REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/models/{REPO}/preupload/(?P<revision>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{REPO}/commit/(?P<revision>[^/]+)$"), "commit"),
    ("GET", re.compile(rf"^/api/models/{REPO}(?:/revision/(?P<revision>[^/]+))?$"), "repo_info"),
    ("GET", re.compile(rf"^/api/models/{REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?$"), "tree"),
    ("HEAD", re.compile(rf"^/{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("GET", re.compile(rf"^/{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)$"), "resolve"),
]


#: Hub tasks a model card's ``pipeline_tag`` may name (the classification-related subset hf_msd can emit,
#: plus ``other``); anything else is rejected like the Hub rejects an unknown task.
PIPELINE_TAGS = {
    "text-classification",
    "image-classification",
    "visual-question-answering",
    "zero-shot-classification",
    "image-text-to-text",
    "other",
}


def metadata_errors(readme: str) -> list[str]:
    """What the Hub would reject in a README's YAML header (empty when it is acceptable)."""
    if not readme.startswith("---\n"):
        return []
    try:
        metadata = yaml.safe_load(readme.split("---\n", 2)[1])
    except yaml.YAMLError as error:
        return [f"YAML header does not parse: {error}"]
    if not isinstance(metadata, dict):
        return ["YAML header is not a mapping"]
    errors = []
    if "pipeline_tag" in metadata and metadata["pipeline_tag"] not in PIPELINE_TAGS:
        errors.append(f'"pipeline_tag" must be a Hub task, got {metadata["pipeline_tag"]!r}')
    for entry in metadata.get("model-index") or []:
        for result in entry.get("results") or []:
            if not (result.get("task") or {}).get("type"):
                errors.append('"model-index" result without "task.type"')
            if not all("type" in m and "value" in m for m in result.get("metrics") or []):
                errors.append('"model-index" metric without "type" or "value"')
    return errors


def git_blob_id(content: bytes) -> str:
    """The git object id of a file's content (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class Repository:
    """A model repository: one file snapshot per commit, ``main`` pointing to the last one."""

    def __init__(self) -> None:
        self.commits: dict[str, dict[str, bytes]] = {}
        self.main: str = hashlib.sha1(b"initial commit").hexdigest()
        self.commits[self.main] = {}

    def snapshot(self, revision: str | None) -> tuple[str, dict[str, bytes]] | None:
        sha = self.main if revision in (None, "main") else revision
        return (sha, self.commits[sha]) if sha in self.commits else None


class HubState:
    """What the server holds: repositories by id, and every request seen (method, path) for assertions."""

    def __init__(self) -> None:
        self.repos: dict[str, Repository] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        state = self.server.state
        with state.lock:
            state.requests.append((method, path))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        for route_method, pattern, name in ROUTES:
            match = pattern.match(path)
            if route_method == method and match:
                with state.lock:
                    getattr(self, name)(match.groupdict(), parse_qs(url.query), body, method)
                return
        self._json(501, {"error": f"the local Hub stand-in does not implement {method} {path}"})

    # ---- responses -------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, headers: dict[str, str], method: str = "GET") -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict[str, str] | None = None, method: str = "GET") -> None:
        body = json.dumps(payload).encode()
        self._send(status, body, {"Content-Type": "application/json", **(headers or {})}, method)

    def _repo(self, repo_id: str, method: str) -> Repository | None:
        repo = self.server.state.repos.get(repo_id)
        if repo is None:
            message = f"Repository {repo_id} not found"
            headers = {"X-Error-Code": "RepoNotFound", "X-Error-Message": message}
            self._json(404, {"error": message}, headers, method)
        return repo

    def _snapshot(self, repo: Repository, revision: str | None, method: str):
        found = repo.snapshot(unquote(revision) if revision else None)
        if found is None:
            message = f"Invalid rev id: {revision}"
            self._json(404, {"error": message}, {"X-Error-Code": "RevisionNotFound"}, method)
        return found

    # ---- routes ----------------------------------------------------------------------------------

    def create_repo(self, groups, query, body, method) -> None:
        payload = json.loads(body)
        if payload.get("type", "model") not in (None, "model"):
            self._json(400, {"error": "only model repositories are supported"})
            return
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        url = f"{self.server.url}/{repo_id}"
        if repo_id in self.server.state.repos:
            self._json(409, {"error": "You already created this model repo", "url": url})
            return
        self.server.state.repos[repo_id] = Repository()
        self._json(200, {"url": url, "name": repo_id})

    def validate_yaml(self, groups, query, body, method) -> None:
        errors = metadata_errors(json.loads(body)["content"])
        if errors:
            self._json(
                400, {"errors": [{"message": e} for e in errors]}, {"X-Error-Message": "; ".join(errors)}
            )
        else:
            self._json(200, {"warnings": []})

    def preupload(self, groups, query, body, method) -> None:
        if self._repo(groups["repo"], method) is None:
            return
        files = json.loads(body)["files"]
        self._json(
            200,
            {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
        )

    def commit(self, groups, query, body, method) -> None:
        repo = self._repo(groups["repo"], method)
        if repo is None:
            return
        found = self._snapshot(repo, groups["revision"], method)
        if found is None:
            return
        files = dict(found[1])
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {p: c for p, c in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            elif key != "header":
                self._json(400, {"error": f"the local Hub stand-in does not accept {key!r} commit lines"})
                return
        digest = hashlib.sha1(json.dumps(sorted((p, git_blob_id(c)) for p, c in files.items())).encode())
        digest.update(repo.main.encode())
        sha = digest.hexdigest()
        repo.commits[sha] = files
        repo.main = sha
        self._json(200, {"commitUrl": f"{self.server.url}/{groups['repo']}/commit/{sha}", "commitOid": sha})

    def repo_info(self, groups, query, body, method) -> None:
        repo = self._repo(groups["repo"], method)
        found = repo and self._snapshot(repo, groups.get("revision"), method)
        if found:
            sha, files = found
            siblings = [{"rfilename": path} for path in sorted(files)]
            self._json(200, {"id": groups["repo"], "sha": sha, "siblings": siblings, "private": False})

    def tree(self, groups, query, body, method) -> None:
        repo = self._repo(groups["repo"], method)
        found = repo and self._snapshot(repo, groups["revision"], method)
        if not found:
            return
        prefix = (groups.get("path") or "").strip("/")
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        entries, folders = [], set()
        for path in sorted(found[1]):
            if prefix and not path.startswith(prefix + "/"):
                continue
            relative = path[len(prefix) + 1 :] if prefix else path
            parts = relative.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(([prefix] if prefix else []) + parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append({"type": "directory", "path": folder, "oid": git_blob_id(folder.encode())})
            if recursive or len(parts) == 1:
                content = found[1][path]
                entries.append(
                    {"type": "file", "path": path, "size": len(content), "oid": git_blob_id(content)}
                )
        self._json(200, entries)

    def resolve(self, groups, query, body, method) -> None:
        repo = self._repo(groups["repo"], method)
        found = repo and self._snapshot(repo, groups["revision"], method)
        if not found:
            return
        sha, files = found
        content = files.get(groups["path"])
        if content is None:
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}
            self._json(404, {"error": f"Entry not found: {groups['path']}"}, headers, method)
            return
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{git_blob_id(content)}"',
            "Content-Type": "application/octet-stream",
        }
        self._send(200, content, headers, method)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: HubState):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class LocalHub:
    """Context manager running the stand-in Hub in a background thread; ``url`` is its ``HF_ENDPOINT``."""

    def __init__(self) -> None:
        self.state = HubState()
        self._server = _Server(self.state)
        self.url = self._server.url
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LocalHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str) -> dict[str, bytes]:
        """The files of ``repo_id`` at ``main``."""
        repo = self.state.repos[repo_id]
        return dict(repo.commits[repo.main])
