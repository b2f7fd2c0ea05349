"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, for publish and from_hub tests.

It implements only what `huggingface_hub` (2.4, with ``HF_HUB_DISABLE_XET``: the LFS "basic"
transfer) calls to create a dataset repo, upload a folder and download a snapshot: repo create,
branch create, revision info, preupload, LFS batch + PUT, NDJSON commit, tree listing and file
resolve. Repos live in memory as commits (path → file); every upload and commit is counted, so a
test can assert that a second publish of the same folder sends nothing new. Private repos answer
401 + ``X-Error-Code: RepoNotFound`` without a valid token, as the real Hub does.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web

_Handler = Callable[..., Awaitable[web.StreamResponse]]

LFS_SUFFIXES = (".parquet", ".index", ".npy", ".bin", ".safetensors")
_REPO = r"(?P<kind>datasets|models|spaces)/(?P<repo>[^/]+/[^/]+)"


def git_oid(content: bytes) -> str:
    """git's blob id: sha1 of ``blob <size>\\0`` + content (what the Hub reports for files)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class HubFile:
    path: str
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def oid(self) -> str:
        return git_oid(self.content)

    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid


@dataclass
class HubRepo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        """A branch name or a commit sha → the commit sha (None when unknown)."""
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class HubStandIn:
    """Start, use `endpoint` as HF_ENDPOINT, stop. `uploads` counts LFS bodies received,
    `commits` counts commits made; `token` is the one write token it accepts."""

    __test__ = False

    def __init__(self, token: str = "hf_standin_write_token") -> None:
        self.token = token
        self.repos: dict[str, HubRepo] = {}
        self.lfs: dict[str, bytes] = {}
        self.uploads: list[str] = []
        self.commits: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._counter = 0
        self._routes: list[tuple[str, str, _Handler]] = [
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", rf"/api/{_REPO}/branch/(?P<branch>[^/]+)", self._create_branch),
            ("GET", rf"/api/{_REPO}(/revision/(?P<rev>[^/]+))?", self._repo_info),
            ("POST", rf"/api/{_REPO}/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", rf"/api/{_REPO}/commit/(?P<rev>[^/]+)", self._commit),
            ("GET", rf"/api/{_REPO}/tree/(?P<rev>[^/]+)(/(?P<path>.*))?", self._tree),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", self._lfs_batch),
            ("POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", self._lfs_batch),
            ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", self._lfs_put),
            ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self._resolve),
            ("HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self._resolve),
        ]

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HubStandIn:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Stop serving (idempotent: a test may stop it early to prove it is not needed)."""
        if not self._thread.is_alive():
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    # ---- helpers for tests -----------------------------------------------------------------

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of a repo at a revision: path → content."""
        repo = self.repos[repo_id]
        sha = repo.resolve(revision)
        assert sha is not None, f"no revision {revision} in {repo_id}"
        return {p: f.content for p, f in repo.commits[sha].items()}

    # ---- dispatch --------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        self.requests.append((request.method, path))
        for method, pattern, handler in self._routes:
            match = re.fullmatch(pattern, path)
            if method == request.method and match:
                args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                return await handler(request, **args)
        return _error(404, f"stand-in hub: no route for {request.method} {path}")

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    def _repo(self, request: web.Request, repo: str, write: bool = False) -> HubRepo | web.Response:
        found = self.repos.get(repo)
        if found is None or (found.private and not self._authorised(request)):
            # the real Hub hides private repos behind the same answer as missing ones
            status = 401 if not self._authorised(request) else 404
            return _error(status, f"Repository Not Found for url: {request.url}.",
                          code="RepoNotFound")
        if write and not self._authorised(request):
            return _error(401, "Invalid credentials in Authorization header")
        return found

    def _revision(self, request: web.Request, repo: str, rev: str,
                  write: bool = False) -> tuple[HubRepo, str] | web.Response:
        """The repo and the commit sha `rev` names, or the Hub's error answer."""
        found = self._repo(request, repo, write=write)
        if isinstance(found, web.Response):
            return found
        sha = found.resolve(rev)
        if sha is None:
            return _error(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        return found, sha

    def _new_commit(self, repo: HubRepo, parent: str | None, files: dict[str, HubFile]) -> str:
        self._counter += 1
        sha = hashlib.sha1(f"{repo.repo_id}/{self._counter}".encode()).hexdigest()
        repo.commits[sha] = files
        return sha

    # ---- endpoints -------------------------------------------------------------------------

    async def _create_repo(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, "Invalid username or password.")
        body = await request.json()
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else (
            body["name"])
        url = f"{self.endpoint}/datasets/{repo_id}"
        if repo_id in self.repos:
            return web.json_response({"error": "You already created this dataset repo",
                                      "url": url}, status=409)
        repo = HubRepo(repo_id, private=body.get("visibility") == "private"
                       or bool(body.get("private")))
        attributes = HubFile(".gitattributes", b"*.parquet filter=lfs diff=lfs merge=lfs -text\n",
                             lfs=False)
        repo.branches["main"] = self._new_commit(repo, None, {attributes.path: attributes})
        self.repos[repo_id] = repo
        return web.json_response({"url": url, "name": repo_id, "id": repo_id})

    async def _create_branch(self, request: web.Request, kind: str, repo: str,
                             branch: str) -> web.Response:
        found = self._repo(request, repo, write=True)
        if isinstance(found, web.Response):
            return found
        if branch in found.branches:
            return _error(409, f"Branch {branch} already exists")
        found.branches[branch] = found.branches["main"]
        return web.json_response({})

    async def _repo_info(self, request: web.Request, kind: str, repo: str,
                         rev: str = "main") -> web.Response:
        resolved = self._revision(request, repo, rev)
        if isinstance(resolved, web.Response):
            return resolved
        found, sha = resolved
        files = found.commits[sha]
        return web.json_response({
            "id": repo, "_id": repo, "sha": sha, "private": found.private, "disabled": False,
            "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "lastModified": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": p, "size": len(f.content)}
                         for p, f in sorted(files.items())],
        })

    async def _validate_yaml(self, request: web.Request) -> web.Response:
        return web.json_response({"errors": [], "warnings": []})

    async def _preupload(self, request: web.Request, kind: str, repo: str,
                         rev: str) -> web.Response:
        resolved = self._revision(request, repo, rev, write=True)
        if isinstance(resolved, web.Response):
            return resolved
        found, sha = resolved
        current = found.commits[sha]
        answers = []
        for f in (await request.json())["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["path"].endswith(LFS_SUFFIXES) or b"\0" in sample or f["size"] > 1_000_000
            existing = current.get(f["path"])
            oid = None if existing is None else existing.sha256 if existing.lfs else existing.oid
            answers.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                            "shouldIgnore": False, "oid": oid})
        return web.json_response({"files": answers})

    async def _lfs_batch(self, request: web.Request, repo: str, kind: str = "") -> web.Response:
        found = self._repo(request, repo, write=True)
        if isinstance(found, web.Response):
            return found
        body = await request.json()
        objects = []
        for obj in body["objects"]:
            answer: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs:  # already stored objects get no action: no upload
                answer["actions"] = {"upload": {"href": f"{self.endpoint}/lfs-upload/{obj['oid']}"}}
            objects.append(answer)
        return web.json_response({"transfer": "basic", "objects": objects},
                                 content_type="application/vnd.git-lfs+json")

    async def _lfs_put(self, request: web.Request, oid: str) -> web.Response:
        body = await request.read()
        if hashlib.sha256(body).hexdigest() != oid:
            return _error(400, "sha256 of the body does not match the oid")
        self.lfs[oid] = body
        self.uploads.append(oid)
        return web.Response(status=200)

    async def _commit(self, request: web.Request, kind: str, repo: str, rev: str) -> web.Response:
        resolved = self._revision(request, repo, rev, write=True)
        if isinstance(resolved, web.Response):
            return resolved
        found, parent = resolved
        files = dict(found.commits[parent])
        lines = [json.loads(line) for line in (await request.read()).splitlines() if line.strip()]
        header: dict[str, Any] = {}
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                header = value
            elif key == "file":
                content = base64.b64decode(value["content"])
                files[value["path"]] = HubFile(value["path"], content, lfs=False)
            elif key == "lfsFile":
                if value["oid"] not in self.lfs:
                    return _error(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = HubFile(value["path"], self.lfs[value["oid"]], lfs=True)
            elif key in ("deletedFile", "deletedFolder"):
                prefix = value["path"].rstrip("/")
                files = {p: f for p, f in files.items()
                         if p != prefix and not p.startswith(prefix + "/")}
            else:
                return _error(400, f"stand-in hub: unknown commit line {key}")
        sha = self._new_commit(found, parent, files)
        found.branches[rev] = sha
        self.commits.append({"repo": repo, "revision": rev, "sha": sha, "header": header,
                             "paths": [ln["value"]["path"] for ln in lines
                                       if ln["key"] != "header"]})
        return web.json_response({"commitUrl": f"{self.endpoint}/datasets/{repo}/commit/{sha}",
                                  "commitOid": sha, "pullRequestUrl": None})

    async def _tree(self, request: web.Request, kind: str, repo: str, rev: str,
                    path: str = "") -> web.Response:
        resolved = self._revision(request, repo, rev)
        if isinstance(resolved, web.Response):
            return resolved
        found, sha = resolved
        prefix = path.strip("/")
        recursive = request.query.get("recursive", "").lower() in ("1", "true")
        entries: dict[str, dict[str, Any]] = {}
        for p, f in sorted(found.commits[sha].items()):
            if prefix and not p.startswith(prefix + "/"):
                continue
            rest = p[len(prefix) + 1:] if prefix else p
            parts = rest.split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                folder = "/".join(([prefix] if prefix else []) + parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "oid": git_oid(b""),
                                                "size": 0, "path": folder})
            if not recursive and len(parts) > 1:
                continue
            entry: dict[str, Any] = {"type": "file", "oid": f.oid, "size": len(f.content),
                                     "path": p}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": len(f.content), "pointerSize": 130}
            entries[p] = entry
        return web.json_response(list(entries.values()))

    async def _resolve(self, request: web.Request, kind: str, repo: str, rev: str,
                       path: str) -> web.Response:
        resolved = self._revision(request, repo, rev)
        if isinstance(resolved, web.Response):
            return resolved
        found, sha = resolved
        f = found.commits[sha].get(path)
        if f is None:
            return _error(404, f"Entry not found: {path}", code="EntryNotFound")
        headers = {"X-Repo-Commit": sha, "ETag": f'"{f.oid}"',
                   "Content-Length": str(len(f.content))}
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
            headers["X-Linked-Size"] = str(len(f.content))
        if request.method == "HEAD":
            return web.Response(status=200, headers=headers)
        return web.Response(status=200, body=f.content, headers=headers)


def _error(status: int, message: str, code: str | None = None) -> web.Response:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return web.json_response({"error": message}, status=status, headers=headers)
