"""Container registry stand-in: the OCI distribution API over the scenario's image catalog.

Every image of the catalog (`Scenario.images`) whose reference names this registry's
host (docker.io unless told: `web/storefront:3.1.0` is `docker.io/web/storefront`) is
a tag of its repository; the simulated kubelet pulls exactly those, so what the
registry lists and what pulls are one set. The product reads it through its registry
adapter, and any distribution client (oras, skopeo, crane) can too:

- `GET /v2/` (the API version check);
- `GET /v2/<name>/tags/list` with `n` and `last`, and a `Link: <...>; rel="next"`
  header while tags remain, tags in lexical order, as the distribution registry does;
- `HEAD` and `GET /v2/<name>/manifests/<tag or digest>`: an OCI image manifest, its
  digest in `Docker-Content-Digest`; `GET /v2/<name>/blobs/<digest>`: its config (with
  the catalog's `entrypoint` and `cmd` as `Entrypoint` and `Cmd`) and its one layer
  (small, deterministic contents);
- errors as the specification writes them: `{"errors": [{"code": "MANIFEST_UNKNOWN",
  "message": ..., "detail": ...}]}` with its status.

Authentication, as configured (`auth`): "none"; "basic" (401 with `WWW-Authenticate:
Basic realm=...` until the username and password come); "bearer" (401 with
`WWW-Authenticate: Bearer realm="<this server>/token",service=...,scope=...`; the
token endpoint answers `{"token", "access_token", "expires_in"}` for the username and
password, each token valid for the repositories of its scope only). Faults can be
injected as on every stand-in (`aifixer_sandbox.faults`), and `requests` records what
was asked (method, path, how it authenticated) for tests.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import json
import secrets
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from aifixer.imageref import ImageRefError, parse
from aifixer_sandbox import faults

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
SERVICE = "sandbox-registry"
DEFAULT_PAGE = 100  # tags per page when the client asks no `n`
MAX_PAGE = 1000

Auth = Literal["none", "basic", "bearer"]


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(name: str) -> bytes:
    """A one-file tar.gz, the same bytes every time for the same image."""
    content = f"{name}\n".encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("image.txt")
        info.size, info.mtime = len(content), 0
        tar.addfile(info, io.BytesIO(content))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


@dataclass
class Manifest:
    body: bytes
    digest: str


@dataclass
class RegistryStore:
    """The repositories and their tags, built from image references."""

    host: str = "docker.io"
    auth: Auth = "none"
    username: str = "sandbox"
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    repos: dict[str, dict[str, Manifest]] = field(default_factory=dict)  # path -> tag -> manifest
    blobs: dict[str, bytes] = field(default_factory=dict)
    tokens: dict[str, set[str]] = field(default_factory=dict)  # token -> repositories it may pull
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, auth kind
    page_limit: int = MAX_PAGE  # tags per page at most, whatever `n` asks (as GHCR caps it)

    def add(
        self, ref: str, entrypoint: list[str] | None = None, cmd: list[str] | None = None
    ) -> None:
        """Publish an image reference (one of another host is ignored), its config holding
        the image's own ENTRYPOINT and CMD when it has them."""
        try:
            parsed = parse(ref)
        except ImageRefError:
            return
        if parsed.host != self.host or parsed.tag is None:
            return
        name = f"{parsed.repository}:{parsed.tag}"
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {
                    "Labels": {"org.opencontainers.image.ref.name": name},
                    **({"Entrypoint": list(entrypoint)} if entrypoint else {}),
                    **({"Cmd": list(cmd)} if cmd else {}),
                },
                "rootfs": {"type": "layers", "diff_ids": []},
            },
            sort_keys=True,
        ).encode()
        layer = _layer(name)
        self.blobs[_digest(config)] = config
        self.blobs[_digest(layer)] = layer
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": _digest(config), "size": len(config)},
                "layers": [
                    {
                        "mediaType": OCI_LAYER,
                        "digest": _digest(layer),
                        "size": len(layer),
                        "annotations": {"org.opencontainers.image.title": "image.tar.gz"},
                    }
                ],
            },
            sort_keys=True,
        ).encode()
        self.repos.setdefault(parsed.path, {})[parsed.tag] = Manifest(body, _digest(body))

    @classmethod
    def of(cls, refs: Iterable[str] | Mapping[str, object], **options) -> RegistryStore:
        """A store of these references; from a catalog (reference -> Image), each image's
        `entrypoint` and `cmd` go into its config."""
        store = cls(**options)
        for ref in refs:
            image = refs.get(ref) if isinstance(refs, Mapping) else None
            store.add(ref, getattr(image, "entrypoint", None), getattr(image, "cmd", None))
        return store

    def docker_config(self) -> str:
        """The Docker config.json a client logs in with (empty auths without auth)."""
        if self.auth == "none":
            return json.dumps({"auths": {}})
        auth = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return json.dumps({"auths": {self.host: {"auth": auth}}})


def _error(status: int, code: str, message: str, detail: object = None) -> web.Response:
    return web.json_response(
        {"errors": [{"code": code, "message": message, "detail": detail}]}, status=status
    )


def _fault_shape(request: web.Request, fault: faults.Fault) -> web.StreamResponse:
    status = fault.status or 500
    code = "TOOMANYREQUESTS" if status == 429 else "UNAVAILABLE" if status >= 500 else "DENIED"
    resp = _error(status, code, fault.phrase().lower())
    if fault.retry_after is not None:
        resp.headers["Retry-After"] = fault.retry_after
    return resp


class _Handlers:
    def __init__(self, store: RegistryStore, base_url: Callable[[], str]) -> None:
        self.s = store
        self.base_url = base_url

    # -- auth --------------------------------------------------------------------

    def _basic_ok(self, header: str) -> bool:
        if not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return secrets.compare_digest(f"{user}:{password}", f"{self.s.username}:{self.s.password}")

    def _denied(self, request: web.Request, repo: str | None) -> web.Response | None:
        """None when the request may go on; else the 401 with the challenge."""
        header = request.headers.get("Authorization", "")
        kind = header.split(" ", 1)[0].lower() if header else "anonymous"
        self.s.requests.append((request.method, request.path, kind))
        if self.s.auth == "none":
            return None
        if self.s.auth == "basic":
            if self._basic_ok(header):
                return None
            resp = _error(401, "UNAUTHORIZED", "authentication required")
            resp.headers["WWW-Authenticate"] = f'Basic realm="{SERVICE}"'
            return resp
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        allowed = self.s.tokens.get(token)
        if allowed is not None and (repo is None or repo in allowed):
            return None
        challenge = f'Bearer realm="{self.base_url()}/token",service="{SERVICE}"'
        if repo is not None:
            challenge += f',scope="repository:{repo}:pull"'
        resp = _error(401, "UNAUTHORIZED", "authentication required")
        resp.headers["WWW-Authenticate"] = challenge
        return resp

    async def token(self, request: web.Request) -> web.Response:
        self.s.requests.append((request.method, request.path, "token"))
        if self.s.auth != "bearer":
            return _error(404, "UNSUPPORTED", "no token service")
        if not self._basic_ok(request.headers.get("Authorization", "")):
            return _error(401, "UNAUTHORIZED", "bad credentials")
        if request.query.get("service", SERVICE) != SERVICE:
            return _error(400, "UNSUPPORTED", "unknown service")
        repos = set()
        for scope in request.query.getall("scope", []):
            for part in scope.split(" "):
                kind, _, rest = part.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind == "repository" and "pull" in actions.split(","):
                    repos.add(name)
        token = secrets.token_urlsafe(24)
        self.s.tokens[token] = repos
        return web.json_response({"token": token, "access_token": token, "expires_in": 300})

    # -- the API -------------------------------------------------------------------

    async def version(self, request: web.Request) -> web.Response:
        denied = self._denied(request, None)
        if denied is not None:
            return denied
        resp = web.json_response({})
        resp.headers["Docker-Distribution-API-Version"] = "registry/2.0"
        return resp

    async def route(self, request: web.Request) -> web.StreamResponse:
        """/v2/<name>/tags/list, /v2/<name>/manifests/<ref>, /v2/<name>/blobs/<digest>:
        the name has slashes, so the path is split here."""
        rest = request.match_info["rest"]
        for marker, handler in (
            ("/tags/list", self._tags),
            ("/manifests/", self._manifest),
            ("/blobs/", self._blob),
        ):
            name, sep, ref = rest.rpartition(marker)
            if sep and name and (marker == "/tags/list") == (ref == ""):
                denied = self._denied(request, name)
                if denied is not None:
                    return denied
                return handler(request, name, ref)
        return _error(404, "NAME_UNKNOWN", "repository name not known to registry")

    def _tags(self, request: web.Request, name: str, _: str) -> web.Response:
        if request.method != "GET":
            return _error(405, "UNSUPPORTED", "method not allowed")
        tags = self.s.repos.get(name)
        if tags is None:
            return _error(404, "NAME_UNKNOWN", "repository name not known to registry", name)
        try:
            n = int(request.query.get("n", DEFAULT_PAGE))
        except ValueError:
            return _error(400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested")
        if n < 0 or n > MAX_PAGE:
            return _error(400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested")
        last = request.query.get("last", "")
        ordered = sorted(t for t in tags if t > last)
        n = min(n, self.s.page_limit)
        page = ordered[:n]
        resp = web.json_response({"name": name, "tags": page})
        if n and len(ordered) > n:
            resp.headers["Link"] = f'</v2/{name}/tags/list?n={n}&last={page[-1]}>; rel="next"'
        return resp

    def _manifest(self, request: web.Request, name: str, ref: str) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return _error(405, "UNSUPPORTED", "method not allowed")
        tags = self.s.repos.get(name)
        if tags is None:
            return _error(404, "NAME_UNKNOWN", "repository name not known to registry", name)
        found = tags.get(ref) or next((m for m in tags.values() if m.digest == ref), None)
        if found is None:
            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown", {"Tag": ref})
        accept = request.headers.get("Accept", "")
        if accept and OCI_MANIFEST not in accept and "*/*" not in accept:
            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown: no acceptable media type")
        headers = {
            "Content-Type": OCI_MANIFEST,
            "Docker-Content-Digest": found.digest,
            "Content-Length": str(len(found.body)),
        }
        if request.method == "HEAD":
            return web.Response(status=200, headers=headers)
        return web.Response(body=found.body, headers=headers)

    def _blob(self, request: web.Request, name: str, digest: str) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return _error(405, "UNSUPPORTED", "method not allowed")
        data = self.s.blobs.get(digest)
        if name not in self.s.repos or data is None:
            return _error(404, "BLOB_UNKNOWN", "blob unknown to registry", digest)
        headers = {"Docker-Content-Digest": digest, "Content-Type": "application/octet-stream"}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return web.Response(status=200, headers=headers)
        return web.Response(body=data, headers=headers)


def make_app(store: RegistryStore, base_url: Callable[[], str]) -> web.Application:
    """The distribution API over `store`; `base_url()` is where clients reach it (the
    token realm is named from it)."""
    app = web.Application()
    faults.install(app, "registry", _fault_shape)
    h = _Handlers(store, base_url)
    app.router.add_get("/v2/", h.version)
    app.router.add_get("/token", h.token)
    app.router.add_route("*", "/v2/{rest:.+}", h.route)
    return app
