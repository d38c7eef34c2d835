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

Everything is derived from the resource table in `resources.py`, built once.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from aiohttp import web

from . import errors, schema
from .resources import Resource, groups

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


async def apis_root(request: web.Request) -> web.Response:
    agg = _aggregated_version(request.headers.get("Accept", ""))
    if agg:
        return json_response(
            _aggregated(False, f"apidiscovery.k8s.io/{agg}"), content_type=_AGGREGATED.format(v=agg)
        )
    return json_response(
        {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [_group_doc(g) for g in groups() if g],
        }
    )


async def api_group(request: web.Request) -> web.Response:
    group = request.match_info["group"]
    if not group or group not in groups():
        raise errors.generic(404)
    return json_response({"kind": "APIGroup", "apiVersion": "v1", **_group_doc(group)})


async def core_resources(request: web.Request) -> web.Response:
    return json_response(_resource_list(""))


async def group_resources(request: web.Request) -> web.Response:
    group, ver = request.match_info["group"], request.match_info["version"]
    if not group or group not in groups() or ver != "v1":
        raise errors.generic(404)
    return json_response(_resource_list(group))


# -- OpenAPI -------------------------------------------------------------------------------


@cache
def _openapi_root() -> bytes:
    return json.dumps(schema.openapi_v3_root(_gv(g) for g in groups())).encode()


async def openapi_v3(request: web.Request) -> web.Response:
    return json_response(_openapi_root())


async def openapi_v3_gv(request: web.Request) -> web.Response:
    gv = request.match_info["gv"]
    served = {schema.openapi_base_path(_gv(g)) for g in groups()}
    if gv not in served:
        raise errors.generic(404)
    # The hash in serverRelativeURL names immutable content: clients may cache it forever.
    return json_response(
        schema.openapi_v3_group_version_bytes(gv), headers={"Cache-Control": "public, immutable"}
    )


def routes() -> list[web.RouteDef]:
    """Discovery routes; `/openapi/v2` is deliberately absent (404: kubectl tolerates it)."""
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
