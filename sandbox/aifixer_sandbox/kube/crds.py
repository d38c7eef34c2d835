"""Custom resources: what a CustomResourceDefinition makes the stand-in serve.

As on a real API server (apiextensions-apiserver), storing a `CustomResourceDefinition`
(apiextensions.k8s.io/v1) makes its served versions routable, discoverable (legacy and
aggregated discovery, a group in `/apis`), listed in OpenAPI v3, printable with the
CRD's `additionalPrinterColumns`, and backed by the same store: uids, one global
resourceVersion, watches, optimistic concurrency, JSON and JSON merge patch (a strategic
merge patch is refused with 415, custom resources having no patch strategy), a status
subresource when the CRD declares one, generation bumped on spec changes. The CRD's
status gets the `NamesAccepted` and `Established` conditions and its accepted names.
Deleting the CRD deletes its objects.

Not modelled: validation and pruning against `openAPIV3Schema` (custom objects are
stored as sent), defaulting from the schema, conversion webhooks (versions differ in
`apiVersion` only, as with the `None` strategy), the `scale` subresource.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..clock import rfc3339
from . import tables
from .resources import RESOURCES, RW, Resource, by_kind, by_path

if TYPE_CHECKING:
    from .store import Obj, Store

CRDS = next(r for r in RESOURCES if r.kind == "CustomResourceDefinition")
_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


class CustomResources:
    """The resources one store's CRDs define, kept current from the store's change feed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._by_crd: dict[str, list[Resource]] = {}
        self._by_path: dict[tuple[str, str, str], Resource] = {}
        self._by_kind: dict[tuple[str, str], Resource] = {}
        self.generation = 0  # bumped on every change: discovery caches key on it
        store.on_change(self._changed)

    # -- lookups --------------------------------------------------------------------------

    def by_path(self, group: str, version: str, plural: str) -> Resource | None:
        return by_path(group, version, plural) or self._by_path.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> Resource | None:
        return by_kind(api_version, kind) or self._by_kind.get((api_version, kind))

    def groups(self) -> dict[str, dict[str, list[Resource]]]:
        """Custom resources by group, then version (versions in the CRD's order)."""
        out: dict[str, dict[str, list[Resource]]] = {}
        for name in sorted(self._by_crd):
            for r in self._by_crd[name]:
                out.setdefault(r.group, {}).setdefault(r.version, []).append(r)
        return out

    def __bool__(self) -> bool:
        return bool(self._by_crd)

    # -- the change feed ------------------------------------------------------------------

    def _changed(self, ev_type: str, res: Resource, new: Obj, old: Obj | None) -> None:
        if res.key != CRDS.key:
            return
        name = new["metadata"]["name"]
        before = [(r.group, r.plural) for r in self._by_crd.get(name, [])]
        self._forget(name)
        if ev_type == "DELETED":
            for group, plural in set(before):
                self._delete_objects(group, plural)
            return
        resources = resources_of(new)
        if not resources or f"{resources[0].plural}.{resources[0].group}" != name:
            return  # a name that is not <plural>.<group> is never established
        self._by_crd[name] = resources
        for r in resources:
            self._by_path[(r.group, r.version, r.plural)] = r
            self._by_kind[(r.api_version, r.kind)] = r
        self.generation += 1
        if not _established(new):
            self._later(self._establish, name)

    def _forget(self, name: str) -> None:
        for r in self._by_crd.pop(name, []):
            self._by_path.pop((r.group, r.version, r.plural), None)
            self._by_kind.pop((r.api_version, r.kind), None)
        self.generation += 1

    def _later(self, fn: Any, *args: Any) -> None:
        """Run `fn` after the current write has been delivered to every listener."""
        try:
            asyncio.get_running_loop().call_soon(fn, *args)
        except RuntimeError:
            fn(*args)

    def _establish(self, name: str) -> None:
        crd = self.store.try_get(CRDS, None, name)
        if crd is None or _established(crd):
            return
        spec = crd.get("spec") or {}
        now = rfc3339(self.store.clock.now())
        status = dict(crd.get("status") or {})
        status["acceptedNames"] = spec.get("names") or {}
        status["storedVersions"] = [
            v["name"] for v in spec.get("versions") or [] if v.get("storage")
        ] or [v["name"] for v in (spec.get("versions") or [])[:1]]
        status["conditions"] = [
            {
                "type": "NamesAccepted",
                "status": "True",
                "lastTransitionTime": now,
                "reason": "NoConflicts",
                "message": "no conflicts found",
            },
            {
                "type": "Established",
                "status": "True",
                "lastTransitionTime": now,
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
            },
        ]
        self.store.update(CRDS, {**crd, "status": status}, subresource="status")

    def _delete_objects(self, group: str, plural: str) -> None:
        stored = Resource(group, "", plural, "", "", True, custom=True)  # keyed group/plural
        for obj in self.store.list(stored):
            meta = obj["metadata"]
            self.store.delete(stored, meta.get("namespace"), meta["name"])


def _established(crd: Obj) -> bool:
    return any(
        c.get("type") == "Established" and c.get("status") == "True"
        for c in (crd.get("status") or {}).get("conditions") or []
    )


def resources_of(crd: Obj) -> list[Resource]:
    """The Resource of each served version of a CRD (empty when it is malformed)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not (group and plural and kind):
        return []
    out = []
    for v in spec.get("versions") or []:
        if not v.get("served", True) or not v.get("name"):
            continue
        subresources = tuple(s for s in ("status",) if s in (v.get("subresources") or {}))
        columns = v.get("additionalPrinterColumns") or [_AGE]
        out.append(
            Resource(
                group,
                v["name"],
                plural,
                kind,
                names.get("singular") or kind.lower(),
                spec.get("scope", "Namespaced") == "Namespaced",
                tuple(names.get("shortNames") or ()),
                verbs=RW,
                subresources=subresources,
                categories=tuple(names.get("categories") or ()),
                custom=True,
                printer_columns=tuple(tuple(sorted(c.items())) for c in columns),
            )
        )
    return out


# -- printing (the CRD table convertor) ----------------------------------------------------------

_NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although "
    "some resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)


def table(
    res: Resource,
    items: list[Obj],
    list_meta: dict[str, Any],
    now: datetime,
    include_object: str = "Metadata",
    headers: bool = True,
) -> dict[str, Any]:
    """A Table of custom objects: Name, then the CRD's printer columns."""
    columns = [dict(c) for c in res.printer_columns]
    definitions = [
        {
            "name": "Name",
            "type": "string",
            "format": "name",
            "description": _NAME_DESCRIPTION,
            "priority": 0,
        }
    ] + [
        {
            "name": c.get("name", ""),
            "type": c.get("type", "string"),
            "format": c.get("format", ""),
            "description": c.get("description", ""),
            "priority": int(c.get("priority", 0)),
        }
        for c in columns
    ]

    def cells(obj: dict[str, Any]) -> list[Any]:
        return [(obj.get("metadata") or {}).get("name", "")] + [
            _cell(c.get("type", "string"), jsonpath(obj, c.get("jsonPath", "")), now)
            for c in columns
        ]

    return tables.assemble(items, cells, definitions, list_meta, include_object, headers)


def _cell(kind: str, found: list[Any], now: datetime) -> Any:
    if not found:
        return None
    value = found[0]
    if kind == "date":
        return tables.since(value if isinstance(value, str) else None, now)
    if kind == "string":
        if isinstance(value, bool):
            return "true" if value else "false"
        return value if isinstance(value, str) else _go_print(value)
    return value


def _go_print(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


_STEP = re.compile(
    r"""\.(?P<field>[A-Za-z0-9_\-]+)
      | \[(?P<index>-?\d+|\*)\]
      | \[\?\(@\.(?P<fkey>[A-Za-z0-9_.\-]+)\s*==\s*(?P<q>["'])(?P<fval>[^"']*)(?P=q)\)\]""",
    re.VERBOSE,
)


def jsonpath(obj: Any, path: str) -> list[Any]:
    """The values a printer column's simple JSONPath (`.status.conditions[?(@.type=="Ready")].status`) selects."""
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    values = [obj]
    pos = 0
    while pos < len(text):
        m = _STEP.match(text, pos)
        if m is None:
            return []
        pos = m.end()
        nxt: list[Any] = []
        for v in values:
            if m.group("field") is not None:
                if isinstance(v, dict) and m.group("field") in v:
                    nxt.append(v[m.group("field")])
            elif m.group("index") is not None:
                if not isinstance(v, list):
                    continue
                if m.group("index") == "*":
                    nxt.extend(v)
                else:
                    i = int(m.group("index"))
                    if -len(v) <= i < len(v):
                        nxt.append(v[i])
            elif isinstance(v, list):
                keys = m.group("fkey").split(".")
                for el in v:
                    cur = el
                    for k in keys:
                        cur = cur.get(k) if isinstance(cur, dict) else None
                    if cur is not None and str(cur) == m.group("fval"):
                        nxt.append(el)
        values = nxt
    return values


# -- OpenAPI v3 ------------------------------------------------------------------------------


def definition_name(group: str, version: str, kind: str) -> str:
    """`argoproj.io`, `v1alpha1`, `Application` -> `io.argoproj.v1alpha1.Application`."""
    return ".".join([*reversed(group.split(".")), version, kind])


def openapi_document(crds: list[Obj], group: str, version: str) -> dict[str, Any]:
    """The OpenAPI v3 document of one custom group version, paths and schemas."""
    from . import schema

    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for crd in crds:
        for r in resources_of(crd):
            if (r.group, r.version) != (group, version):
                continue
            served = next(v for v in crd["spec"]["versions"] if v.get("name") == version)
            body = ((served.get("schema") or {}).get("openAPIV3Schema")) or {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
            }
            name = definition_name(group, version, r.kind)
            gvk = [{"group": group, "version": version, "kind": r.kind}]
            schemas[name] = {**body, "x-kubernetes-group-version-kind": gvk}
            schemas[name + "List"] = {
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}},
                    "metadata": {"type": "object"},
                },
                "x-kubernetes-group-version-kind": [
                    {"group": group, "version": version, "kind": r.kind + "List"}
                ],
            }
            for path, item in schema.resource_paths(
                f"{group}/{version}", r.kind, name, name + "List", r.plural, r.namespaced
            ).items():
                paths[path] = item
    for meta in (
        "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch",
        "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
    ):
        schemas[meta] = {"type": "object"}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
