"""The registry adapter and the sandbox registry, over real sockets on loopback.

The adapter (`requests`) and oras-py, a distribution client of its own, read the same
stand-in: tags with pagination, digests, and the three ways a registry may ask for
credentials (none, basic, bearer token flow). Faults are injected through the
stand-in's control API; the errors are what the farm's retries expect.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import oras.provider
import pytest
import requests
from pydantic import SecretStr

from aifixer import imageref
from aifixer.adapters.errors import PermanentError, TransientError
from aifixer.adapters.registry import Registry
from aifixer.settings import Settings
from aifixer_sandbox.registry import RegistryStore, make_app
from aifixer_sandbox.scenario import Image
from aifixer_sandbox.serve import LoopThread, Site, start_site, stop_site

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CATALOG = [
    "web/storefront:3.0.9",
    "web/storefront:3.1.0",
    *(f"web/storefront:2.4.{p}" for p in range(12)),
    "nginx:1.25.3",
    "ghcr.io/acme/other:1.0.0",  # another host: not served by this registry
]


@dataclass
class Served:
    store: RegistryStore
    url: str

    def settings(self, **extra: object) -> Settings:
        fields: dict = {
            "registries": "docker.io",
            "registry_urls": f"docker.io={self.url}",
            "registry_credentials": SecretStr(self.store.docker_config()),
            "request_timeout_s": 2.0,
        }
        fields.update(extra)
        return Settings(_env_file=None, **fields)

    def faults(self, **spec: object) -> None:
        resp = requests.post(f"{self.url}/sandbox/faults", json=spec, timeout=5)
        assert resp.status_code == 201, resp.text


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread().start()
    yield thread
    thread.stop()


@pytest.fixture(params=["none", "basic", "bearer"])
def served(request, loop) -> Iterator[Served]:
    store = RegistryStore.of(CATALOG, auth=request.param, page_limit=5)
    site = Site("registry", make_app(store, lambda: site.url))
    loop.call(start_site, site)
    yield Served(store, site.url)
    loop.call(stop_site, site)


def ref(text: str) -> imageref.ImageRef:
    return imageref.parse(text)


def test_tags_are_read_across_pages(served: Served) -> None:
    registry = Registry(served.settings())
    tags = registry.tags(ref("web/storefront:3.1.O"))
    assert sorted(tags) == sorted(t.split(":")[1] for t in CATALOG if "storefront" in t)
    pages = [r for r in served.store.requests if r[1].endswith("/tags/list") and r[2] != "token"]
    assert len([p for p in pages if served.store.auth == "none" or p[2] != "anonymous"]) == 3
    # Docker Hub's official images live under library/.
    assert registry.tags(ref("nginx:1.26")) == ["1.25.3"]


def test_the_digest_is_the_manifests_own(served: Served) -> None:
    registry = Registry(served.settings())
    digest = registry.digest(ref("web/storefront:3.1.O"), "3.1.0")
    body = served.store.repos["web/storefront"]["3.1.0"].body
    assert digest == "sha256:" + hashlib.sha256(body).hexdigest()


def test_credentials_are_sent_as_the_registry_asks(served: Served) -> None:
    registry = Registry(served.settings())
    registry.tags(ref("web/storefront:1"))
    registry.digest(ref("web/storefront:1"), "3.0.9")
    kinds = [k for _, _, k in served.store.requests]
    if served.store.auth == "none":
        assert set(kinds) == {"anonymous"}
    elif served.store.auth == "basic":
        assert kinds[0] == "anonymous" and "basic" in kinds and "bearer" not in kinds
    else:
        # One token for the repository, reused by the next calls.
        assert kinds.count("token") == 1 and "bearer" in kinds and "basic" not in kinds


def test_wrong_credentials_are_refused_without_showing_them(served: Served) -> None:
    if served.store.auth == "none":
        pytest.skip("nothing to refuse")
    wrong = json.dumps({"auths": {"docker.io": {"username": "sandbox", "password": "hunter2x"}}})
    registry = Registry(served.settings(registry_credentials=SecretStr(wrong)))
    with pytest.raises(PermanentError) as caught:
        registry.tags(ref("web/storefront:1"))
    assert caught.value.status == 401
    assert "hunter2x" not in str(caught.value) and "hunter2x" not in repr(registry)
    assert served.store.password not in str(caught.value)


def test_unknown_repository_and_tag_are_permanent(served: Served) -> None:
    registry = Registry(served.settings())
    with pytest.raises(PermanentError) as caught:
        registry.tags(ref("finance/ledger-exporter:1.0.0"))
    assert caught.value.status == 404 and "NAME_UNKNOWN" in str(caught.value)
    with pytest.raises(PermanentError) as caught:
        registry.digest(ref("web/storefront:1"), "9.9.9")
    assert caught.value.status == 404


def test_a_registry_off_the_allow_list_is_never_asked(served: Served) -> None:
    registry = Registry(served.settings(registries=""))
    with pytest.raises(PermanentError):
        registry.tags(ref("web/storefront:1"))
    with pytest.raises(PermanentError):
        Registry(served.settings()).tags(ref("ghcr.io/acme/other:1.0.1"))
    assert served.store.requests == []


def test_throttling_and_outages_are_transient(served: Served) -> None:
    registry = Registry(served.settings())
    served.faults(path="/tags/list", status=429, retry_after="7", count=1)
    with pytest.raises(TransientError) as caught:
        registry.tags(ref("web/storefront:1"))
    assert caught.value.status == 429 and caught.value.retry_after == 7.0
    served.faults(path="/manifests/", status=503, count=2)
    with pytest.raises(TransientError) as caught:
        registry.digest(ref("web/storefront:1"), "3.1.0")
    assert caught.value.status == 503
    served.faults(path="/tags/list", delay=3, count=1)
    with pytest.raises(TransientError, match="timed out"):
        registry.tags(ref("web/storefront:1"))


def test_unreachable_is_transient() -> None:
    settings = Settings(
        _env_file=None, registries="docker.io", registry_urls="docker.io=http://127.0.0.1:9"
    )
    with pytest.raises(TransientError, match="cannot reach"):
        Registry(settings).tags(ref("web/storefront:1"))


def test_oras_reads_the_sandbox_registry(served: Served) -> None:
    """A distribution client of its own: tags (paginated), manifests and blobs."""
    host = served.url.removeprefix("http://")
    # oras answers a Basic challenge with its "basic" backend, a Bearer one with "token".
    backend = "basic" if served.store.auth == "basic" else "token"
    client = oras.provider.Registry(hostname=host, insecure=True, auth_backend=backend)
    if served.store.auth != "none":
        client.auth.set_basic_auth(served.store.username, served.store.password)
    container = f"{host}/web/storefront:3.1.0"
    assert sorted(client.get_tags(container)) == sorted(
        t.split(":")[1] for t in CATALOG if "storefront" in t
    )
    manifest = client.get_manifest(container)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    layer = manifest["layers"][0]
    resp = client.get_blob(container, layer["digest"])
    assert "sha256:" + hashlib.sha256(resp.content).hexdigest() == layer["digest"]


def test_an_image_config_holds_its_own_entrypoint_and_cmd(loop) -> None:
    """What runs without a command override, as a distribution client reads it."""
    catalog = {
        "tools/static-api:1.0.0": Image(entrypoint=["/usr/local/bin/static-api"], cmd=["--serve"]),
        "tools/plain:1.0.0": Image(),
    }
    store = RegistryStore.of(catalog)
    site = Site("registry", make_app(store, lambda: site.url))
    loop.call(start_site, site)
    try:
        host = site.url.removeprefix("http://")
        client = oras.provider.Registry(hostname=host, insecure=True, auth_backend="token")
        configs = {}
        for ref in catalog:
            manifest = client.get_manifest(f"{host}/{ref}")
            blob = client.get_blob(f"{host}/{ref}", manifest["config"]["digest"])
            configs[ref] = json.loads(blob.content)["config"]
    finally:
        loop.call(stop_site, site)
    assert configs["tools/static-api:1.0.0"]["Entrypoint"] == ["/usr/local/bin/static-api"]
    assert configs["tools/static-api:1.0.0"]["Cmd"] == ["--serve"]
    assert "Entrypoint" not in configs["tools/plain:1.0.0"]
