"""Container registries, read over the OCI distribution API with `requests`.

Two questions only: which tags a repository has (`GET /v2/<name>/tags/list`, `n` and
the `Link` header's next page, bounded by AIFIXER_REGISTRY_MAX_TAGS) and which digest a
tag points at (`HEAD /v2/<name>/manifests/<tag>` with the manifest media types in
Accept, read from `Docker-Content-Digest`; a GET hashed when a registry leaves the
header out).

Only the registries of AIFIXER_REGISTRIES are asked (`allows`), at the base URL of
AIFIXER_REGISTRY_URLS (https://<host> by default, Docker Hub's API for docker.io).
Authentication is the registry's choice, answered from AIFIXER_REGISTRY_CREDENTIALS (a
Docker config.json): a `Basic` challenge with the host's username and password, a
`Bearer realm=...,service=...,scope=...` challenge (Docker Hub, GHCR, Harbor, Quay)
with a token from the realm, asked with those credentials, or anonymously when the
host has none. Credentials go only to the registry itself or to a realm over https,
never over plain http to another host, and appear in no message.

Errors are decided here once: unreachable, timeouts, 5xx and 429 are `TransientError`
(with Retry-After); 401, 403, 404 and other refusals `PermanentError` with the
registry's words.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from aifixer.imageref import DIGEST, ImageRef, valid_tags
from aifixer.settings import Settings

from .errors import PermanentError, TransientError, bounded, is_transient_status, retry_after

log = logging.getLogger(__name__)

SYSTEM = "registry"
HUB = "docker.io"
HUB_URL = "https://registry-1.docker.io"
PAGE = 1000  # tags asked for per page (`n`); a registry may answer fewer
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_CHALLENGE = re.compile(r"^\s*(\w+)\s*(.*)$", re.DOTALL)
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str | None) -> tuple[str, dict[str, str]]:
    """`WWW-Authenticate: Bearer realm="...",service="...",scope="..."` as ("bearer", params)."""
    match = _CHALLENGE.match(header or "")
    if not match:
        return "", {}
    params = {k.lower(): (q if q else bare) for k, q, bare in _PARAM.findall(match.group(2))}
    return match.group(1).lower(), params


def _normal_host(key: str) -> str:
    """A config.json `auths` key ("https://index.docker.io/v1/", "ghcr.io") as a host."""
    host = urlsplit(key).netloc if "://" in key else key.split("/", 1)[0]
    host = host.lower()
    return HUB if host in ("index.docker.io", "registry-1.docker.io") else host


def read_credentials(secret: Any) -> dict[str, tuple[str, str]]:
    """host -> (username, password) from a Docker config.json; {} when none.

    Raises:
        PermanentError: not a Docker config.json (its content is never quoted).
    """
    if secret is None:
        return {}
    text = secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret)
    if not text.strip():
        return {}
    bad = PermanentError(
        SYSTEM, 'AIFIXER_REGISTRY_CREDENTIALS is not a Docker config.json ({"auths": {...}})'
    )
    try:
        data = json.loads(text)
    except ValueError:
        raise bad from None
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        raise bad
    out = {}
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            raise bad
        user, password = entry.get("username"), entry.get("password")
        if isinstance(entry.get("auth"), str):
            try:
                user, _, password = (
                    base64.b64decode(entry["auth"], validate=True).decode().partition(":")
                )
            except (binascii.Error, UnicodeDecodeError):
                raise bad from None
        if isinstance(user, str) and isinstance(password, str) and user:
            out[_normal_host(str(key))] = (user, password)
    return out


class Registry:
    """The allow-listed registries of the settings; one `requests` session for all."""

    def __init__(self, settings: Settings) -> None:
        self.allowed = frozenset(settings.registries)
        self.urls = {h: u.rstrip("/") for h, u in settings.registry_urls.items()}
        self._credentials = read_credentials(settings.registry_credentials)
        self.timeout = settings.request_timeout_s
        self.max_tags = settings.registry_max_tags
        self.http = requests.Session()
        self._tokens: dict[tuple[str, str], str] = {}

    def close(self) -> None:
        self.http.close()

    def __repr__(self) -> str:  # the credentials never show
        return f"Registry(allowed={sorted(self.allowed)})"

    def allows(self, ref: ImageRef) -> bool:
        return ref.host in self.allowed

    def base_url(self, host: str) -> str:
        if host in self.urls:
            return self.urls[host]
        return HUB_URL if host == HUB else f"https://{host}"

    # -- the two questions --------------------------------------------------------

    def tags(self, ref: ImageRef) -> list[str]:
        """The repository's tags (valid ones only), in the registry's order, at most
        `registry_max_tags`.

        Raises:
            PermanentError: the registry is not allow-listed, the repository is unknown
                (404) or access is refused; TransientError.
        """
        base = self._base(ref)
        url: str | None = f"{base}/v2/{ref.path}/tags/list"
        params: dict[str, Any] | None = {"n": min(PAGE, self.max_tags)}
        tags: list[str] = []
        pages = self.max_tags // PAGE + 2
        while url is not None and len(tags) < self.max_tags and pages > 0:
            pages -= 1
            resp = self._send("GET", ref, url, params=params)
            try:
                body = resp.json()
            except ValueError as exc:
                raise TransientError(SYSTEM, f"tags of {ref.repository}: not JSON") from exc
            listed = body.get("tags") if isinstance(body, dict) else None
            tags.extend(valid_tags(listed or []))
            url, params = self._next_page(base, resp), None
        return tags[: self.max_tags]

    def digest(self, ref: ImageRef, tag: str) -> str:
        """The digest (sha256:...) the tag points at: of its index or manifest.

        Raises:
            PermanentError: no such tag (404), access refused; TransientError.
        """
        url = f"{self._base(ref)}/v2/{ref.path}/manifests/{tag}"
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        resp = self._send("HEAD", ref, url, headers=headers)
        digest = resp.headers.get("Docker-Content-Digest", "").strip()
        if DIGEST.fullmatch(digest):
            return digest
        resp = self._send("GET", ref, url, headers=headers)
        if len(resp.content) > MAX_MANIFEST_BYTES:
            raise PermanentError(SYSTEM, f"manifest of {ref.repository}:{tag} is too large")
        digest = "sha256:" + hashlib.sha256(resp.content).hexdigest()
        sent = resp.headers.get("Docker-Content-Digest", "").strip()
        if sent and sent != digest:
            raise PermanentError(SYSTEM, f"{ref.repository}:{tag}: digest does not match content")
        return digest

    # -- HTTP, auth and errors ------------------------------------------------------

    def _base(self, ref: ImageRef) -> str:
        if not self.allows(ref):
            raise PermanentError(SYSTEM, f"registry {ref.host} is not in AIFIXER_REGISTRIES")
        return self.base_url(ref.host)

    @staticmethod
    def _next_page(base: str, resp: requests.Response) -> str | None:
        link = (resp.links.get("next") or {}).get("url")
        if not link:
            return None
        url = urljoin(resp.url or base + "/", link)
        if urlsplit(url).netloc != urlsplit(base).netloc:
            raise PermanentError(SYSTEM, "the next page of tags is on another host")
        return url

    def _send(
        self,
        method: str,
        ref: ImageRef,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        scope = f"repository:{ref.path}:pull"
        key = (ref.host, scope)
        headers = dict(headers or {})
        if key in self._tokens:
            headers["Authorization"] = f"Bearer {self._tokens[key]}"
        resp = self._call(method, url, params=params, headers=headers)
        if resp.status_code == 401:
            scheme, challenge = parse_challenge(resp.headers.get("WWW-Authenticate"))
            credentials = self._credentials.get(ref.host)
            if scheme == "bearer":
                self._tokens[key] = self._token(ref, url, challenge, scope, credentials)
                headers["Authorization"] = f"Bearer {self._tokens[key]}"
                resp = self._call(method, url, params=params, headers=headers)
            elif scheme == "basic" and credentials is not None:
                headers.pop("Authorization", None)
                resp = self._call(method, url, params=params, headers=headers, auth=credentials)
        self._check(resp, f"{method} {ref.repository}")
        return resp

    def _token(
        self,
        ref: ImageRef,
        url: str,
        challenge: dict[str, str],
        scope: str,
        credentials: tuple[str, str] | None,
    ) -> str:
        realm = challenge.get("realm", "")
        where, registry = urlsplit(realm), urlsplit(url)
        if where.scheme not in ("http", "https") or not where.netloc:
            raise PermanentError(SYSTEM, f"{ref.host} names no usable token service")
        if registry.scheme == "https" and where.scheme != "https":
            raise PermanentError(SYSTEM, f"{ref.host} names a token service over plain http")
        # Credentials go to the registry itself, or to a token service over https.
        send = credentials if where.netloc == registry.netloc or where.scheme == "https" else None
        params = {"scope": challenge.get("scope") or scope}
        if challenge.get("service"):
            params["service"] = challenge["service"]
        resp = self._call("GET", realm, params=params, headers={}, auth=send)
        self._check(resp, f"token for {ref.repository}")
        try:
            body = resp.json()
        except ValueError as exc:
            raise TransientError(SYSTEM, f"token for {ref.repository}: not JSON") from exc
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token or any(c.isspace() for c in token):
            raise PermanentError(SYSTEM, f"token service of {ref.host} answered no token")
        return token

    def _call(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None,
        headers: dict[str, str],
        auth: tuple[str, str] | None = None,
    ) -> requests.Response:
        try:
            return self.http.request(
                method, url, params=params, headers=headers, auth=auth, timeout=self.timeout
            )
        except requests.Timeout as exc:
            raise TransientError(SYSTEM, f"timed out after {self.timeout}s") from exc
        except requests.RequestException as exc:
            where = urlsplit(url)
            raise TransientError(
                SYSTEM, f"cannot reach {where.scheme}://{where.netloc}: {type(exc).__name__}"
            ) from exc

    @staticmethod
    def _check(resp: requests.Response, what: str) -> None:
        if resp.status_code < 300:
            return
        text = "" if resp.request.method == "HEAD" else bounded(resp.text.strip())
        message = f"{what}: {resp.status_code} {text or resp.reason}"
        if is_transient_status(resp.status_code):
            raise TransientError(
                SYSTEM,
                message,
                status=resp.status_code,
                retry_after=retry_after(resp.headers.get("Retry-After")),
            )
        raise PermanentError(SYSTEM, message, status=resp.status_code)
