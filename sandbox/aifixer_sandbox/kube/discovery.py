"""What clients ask before they ask for objects: version, discovery and OpenAPI.

kubectl resolves every type name (`deploy`, `rs`, `po`, `ev`) through discovery and
caches the answer on disk, and `kubectl apply` / `explain` need the OpenAPI v3
documents. Two discovery dialects are served, as by a 1.32 API server:

- aggregated discovery (`apidiscovery.k8s.io/v2`, one round trip for `/api` and
  `/apis`), chosen only when the Accept header asks for it. The Content-Type of the
  answer must name the same media type: kubectl parses an aggregated body sent as
  plain `application/json` as legacy discovery and then finds no resources at all;
- legacy discovery (`APIVersions`, `APIGroupList`, `APIGroup`, `APIResourceList`)
  for every other client.

Everything is derived from the resource table in `resources.py`, built once, plus the
custom resources the store's CustomResourceDefinitions add (`crds.py`), built per request.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import crds, errors, schema
from .resources import Resource, groups

if TYPE_CHECKING:
    from .store import Store

VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0",
    "gitCommit": "70d3cc986aa8221cd1dfb1121852688902d3bf53",
    "gitTreeState": "clean",
    "buildDate": "2024-12-11T17:59:15Z",
    "goVersion": "go1.23.3",
    "compiler": "gc",
    "platform": "linux/amd64",
}

_AGGREGATED = "application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"
_SUBRESOURCE_VERBS = {
    "status": ("get", "patch", "update"),
    "scale": ("get", "patch", "update"),
    "log": ("get",),
}
_SCALE_KIND = {"group": "autoscaling", "version": "v1", "kind": "Scale"}


def json_response(
    body: Any,
    status: int = 200,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> web.Response:
    """One serialization per response; `body` may already be encoded bytes."""
    data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    resp = web.Response(body=data, status=status, headers=headers)
    resp.content_type = content_type.split(";")[0]
    if ";" in content_type:
        # aiohttp keeps parameters apart; the whole media type must go on the wire verbatim.
        resp.headers["Content-Type"] = content_type
    return resp


def _gv(group: str) -> str:
    return f"{group}/v1" if group else "v1"


# -- aggregated discovery -------------------------------------------------------------


def _response_kind(r: Resource) -> dict[str, str]:
    return {"group": r.group, "version": r.version, "kind": r.kind}


def _aggregated_resource(r: Resource) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resource": r.plural,
        "responseKind": _response_kind(r),
        "scope": "Namespaced" if r.namespaced else "Cluster",
        "singularResource": r.singular,
        "verbs": sorted(r.verbs),
    }
    if r.short_names:
        out["shortNames"] = list(r.short_names)
    if r.categories:
        out["categories"] = list(r.categories)
    if r.subresources:
        out["subresources"] = [
            {
                "subresource": sub,
                "responseKind": _SCALE_KIND if sub == "scale" else _response_kind(r),
                "verbs": list(_SUBRESOURCE_VERBS[sub]),
            }
            for sub in r.subresources
        ]
    return out


@cache
def _aggregated(core: bool, api_version: str) -> bytes:
    items = []
    for group, resources in groups().items():
        if (group == "") != core:
            continue
        items.append(
            {
                "metadata": {"name": group, "creationTimestamp": None},
                "versions": [
                    {
                        "version": resources[0].version,
                        "freshness": "Current",
                        "resources": [_aggregated_resource(r) for r in resources],
                    }
                ],
            }
        )
    return json.dumps(
        {"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {}, "items": items}
    ).encode()


def _aggregated_version(accept: str) -> str | None:
    """Which aggregated discovery version the client accepts, if any (v2 preferred)."""
    offered = [part.replace(" ", "") for part in accept.split(",")]
    for v in ("v2", "v2beta1"):
        if any(
            "g=apidiscovery.k8s.io" in p
            and f"v={v};" in p + ";"
            and "as=APIGroupDiscoveryList" in p
            for p in offered
        ):
            return v
    return None


# -- legacy discovery -------------------------------------------------------------------


def _group_doc(group: str) -> dict[str, Any]:
    gv = {"groupVersion": _gv(group), "version": "v1"}
    return {"name": group, "versions": [gv], "preferredVersion": gv}


def _legacy_resources(r: Resource) -> list[dict[str, Any]]:
    main: dict[str, Any] = {
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": sorted(r.verbs),
    }
    if r.short_names:
        main["shortNames"] = list(r.short_names)
    if r.categories:
        main["categories"] = list(r.categories)
    out = [main]
    for sub in r.subresources:
        entry: dict[str, Any] = {
            "name": f"{r.plural}/{sub}",
            "singularName": "",
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": list(_SUBRESOURCE_VERBS[sub]),
        }
        if sub == "scale":
            entry.update(group="autoscaling", version="v1", kind="Scale")
        out.append(entry)
    return out


@cache
def _resource_list(group: str) -> bytes:
    resources = [doc for r in groups()[group] for doc in _legacy_resources(r)]
    return json.dumps(
        {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": _gv(group),
            "resources": resources,
        }
    ).encode()


# -- handlers ----------------------------------------------------------------------------


async def version(request: web.Request) -> web.Response:
    return json_response(VERSION)


async def api_root(request: web.Request) -> web.Response:
    agg = _aggregated_version(request.headers.get("Accept", ""))
    if agg:
        return json_response(
            _aggregated(True, f"apidiscovery.k8s.io/{agg}"), content_type=_AGGREGATED.format(v=agg)
        )
    host = request.host or "127.0.0.1"
    return json_response(
        {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
        }
    )


async def core_resources(request: web.Request) -> web.Response:
    return json_response(_resource_list(""))


# -- OpenAPI -------------------------------------------------------------------------------


@cache
def _openapi_root() -> bytes:
    return json.dumps(schema.openapi_v3_root(_gv(g) for g in groups())).encode()


def _custom_aggregated(store: Store) -> list[dict[str, Any]]:
    return [
        {
            "metadata": {"name": group, "creationTimestamp": None},
            "versions": [
                {
                    "version": version,
                    "freshness": "Current",
                    "resources": [_aggregated_resource(r) for r in resources],
                }
                for version, resources in versions.items()
            ],
        }
        for group, versions in store.custom.groups().items()
    ]


def _custom_group_doc(group: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}


def _custom_openapi(store: Store) -> dict[str, tuple[bytes, str]]:
    """Each custom group version's OpenAPI v3 document and its hash, by base path."""
    defs = store.list(crds.CRDS)
    out = {}
    for group, versions in store.custom.groups().items():
        for version in versions:
            body = json.dumps(
                crds.openapi_document(defs, group, version), separators=(",", ":")
            ).encode()
            out[f"apis/{group}/{version}"] = (body, hashlib.sha512(body).hexdigest().upper())
    return out


def routes(store: Store | None = None) -> list[web.RouteDef]:
    """Discovery routes; `/openapi/v2` is deliberately absent (404: kubectl tolerates it).

    With a `store`, the resources of its CustomResourceDefinitions are discoverable too.
    """

    def custom() -> dict[str, dict[str, list[Resource]]]:
        return store.custom.groups() if store is not None else {}

    async def apis_root(request: web.Request) -> web.Response:
        agg = _aggregated_version(request.headers.get("Accept", ""))
        if agg:
            body: bytes = _aggregated(False, f"apidiscovery.k8s.io/{agg}")
            if store is not None and store.custom:
                doc = json.loads(body)
                doc["items"] += _custom_aggregated(store)
                body = json.dumps(doc).encode()
            return json_response(body, content_type=_AGGREGATED.format(v=agg))
        return json_response(
            {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [_group_doc(g) for g in groups() if g]
                + [_custom_group_doc(g, list(v)) for g, v in custom().items()],
            }
        )

    async def api_group(request: web.Request) -> web.Response:
        group = request.match_info["group"]
        if group in custom():
            doc = _custom_group_doc(group, list(custom()[group]))
            return json_response({"kind": "APIGroup", "apiVersion": "v1", **doc})
        if not group or group not in groups():
            raise errors.generic(404)
        return json_response({"kind": "APIGroup", "apiVersion": "v1", **_group_doc(group)})

    async def group_resources(request: web.Request) -> web.Response:
        group, ver = request.match_info["group"], request.match_info["version"]
        resources = custom().get(group, {}).get(ver)
        if resources:
            return json_response(
                {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": f"{group}/{ver}",
                    "resources": [doc for r in resources for doc in _legacy_resources(r)],
                }
            )
        if not group or group not in groups() or ver != "v1":
            raise errors.generic(404)
        return json_response(_resource_list(group))

    async def openapi_v3(request: web.Request) -> web.Response:
        if store is None or not store.custom:
            return json_response(_openapi_root())
        doc = json.loads(_openapi_root())
        for base, (_body, digest) in _custom_openapi(store).items():
            doc["paths"][base] = {"serverRelativeURL": f"/openapi/v3/{base}?hash={digest}"}
        return json_response(doc)

    async def openapi_v3_gv(request: web.Request) -> web.Response:
        gv = request.match_info["gv"]
        if store is not None and store.custom:
            found = _custom_openapi(store).get(gv)
            if found is not None:
                return json_response(found[0], headers={"Cache-Control": "public, immutable"})
        return await openapi_v3_builtin(request)

    paths = [
        ("/version", version),
        ("/api", api_root),
        ("/apis", apis_root),
        ("/api/v1", core_resources),
        ("/apis/{group}", api_group),
        ("/apis/{group}/{version}", group_resources),
        ("/openapi/v3", openapi_v3),
    ]
    # The generated Python client asks for `/api/`, `/apis/apps/` ...: serve both spellings.
    return [web.get(p + slash, fn) for p, fn in paths for slash in ("", "/")] + [
        web.get("/openapi/v3/{gv:.+}", openapi_v3_gv)
    ]


async def openapi_v3_builtin(request: web.Request) -> web.Response:
    gv = request.match_info["gv"]
    served = {schema.openapi_base_path(_gv(g)) for g in groups()}
    if gv not in served:
        raise errors.generic(404)
    # The hash in serverRelativeURL names immutable content: clients may cache it forever.
    return json_response(
        schema.openapi_v3_group_version_bytes(gv), headers={"Cache-Control": "public, immutable"}
    )
