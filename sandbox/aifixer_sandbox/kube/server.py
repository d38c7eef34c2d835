"""The Kubernetes API server stand-in: REST routes over the store.

The real `kubernetes` Python client and kubectl v1.32 talk to this unchanged, so the
wire behaviour follows the real server's generic registry and handlers
(`k8s.io/apiserver/pkg/endpoints/handlers`): status codes, `Status` bodies and their
messages, list chunking, watch streams (including the 200-then-ERROR answer to an
expired resourceVersion), the four patch content types, dry runs, field validation
and managedFields. Each write goes through the same pipeline as on a real server:
decode -> (patch) -> default -> validate -> record managedFields -> store.

The store holds immutable objects; reads serialize them directly without copying.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import yaml
from aiohttp import web
from multidict import MultiMapping

from .. import faults
from ..clock import rfc3339
from . import apply, crds, discovery, errors, patch, protobuf, schema, tables
from .defaults import apply_defaults
from .podlogs import PodLogs
from .resources import Resource, by_path
from .selectors import parse_field_selector, parse_label_selector, selector_to_string
from .store import Obj, Predicate, Store, copy

log = logging.getLogger(__name__)

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
# In the order the real server lists them in a 415 (the installer's supportedTypes).
PATCH_TYPES = [JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH, APPLY_PATCH]
_BODY_TYPES = ("application/json", "application/yaml", "")
_CONTINUE_VERSION = "meta.k8s.io/v1"
_CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this response "
    "to retrieve the remainder of the results. Continuing with the provided token results in an "
    "inconsistent list - objects that were created, modified, or deleted between the time the "
    "first chunk was returned and now may show up in the list."
)
_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")
# Kinds whose DELETE answers with the object rather than a Status (ReturnDeletedObject).
_DELETE_RETURNS_OBJECT = (
    "Pod",
    "Service",
    "Namespace",
    "PersistentVolumeClaim",
    "PersistentVolume",
)
# Kinds a PUT may create (AllowCreateOnUpdate in their registry strategies).
_CREATE_ON_UPDATE = ("Event",)
EVENTS_CORE = by_path("", "v1", "events")


@dataclass(frozen=True)
class Options:
    """Tunables; the defaults are the real server's behaviour scaled down to a sandbox."""

    bookmark_interval: float = 5.0  # seconds between watch BOOKMARKs
    max_watch_seconds: float = 3600.0  # bound on any single watch or log follow
    poll_interval: float = 1.0  # how often an idle stream checks that its client is still there


# ---------------------------------------------------------------------------------------------
# Request targets


@dataclass(frozen=True)
class Target:
    """What a resource URL names: a collection or an item, optionally a subresource."""

    res: Resource
    namespace: str | None  # None: cluster-scoped, or all namespaces
    name: str | None
    sub: str = ""
    watch_path: bool = False  # legacy /watch/ prefix

    @property
    def storage(self) -> Resource:
        """The resource the store keys the objects under (events.k8s.io -> core events)."""
        return EVENTS_CORE if self.res.key == EVENTS_CORE.key else self.res


def parse_target(
    group: str,
    version: str,
    tail: str,
    lookup: Callable[[str, str, str], Resource | None] = by_path,
) -> Target:
    """The target a resource URL names; `lookup` resolves resources (custom ones too)."""
    parts = [p for p in tail.split("/") if p]
    watch_path = bool(parts) and parts[0] == "watch"
    if watch_path:
        parts = parts[1:]
    namespace = None
    if len(parts) >= 3 and parts[0] == "namespaces":
        inner = lookup(group, version, parts[2])
        if inner is not None and inner.namespaced:
            namespace, parts = parts[1], parts[2:]
    if not parts or len(parts) > 3:
        raise errors.generic(404)
    res = lookup(group, version, parts[0])
    if res is None or (res.namespaced and namespace is None and len(parts) > 1):
        raise errors.generic(404)
    name = parts[1] if len(parts) > 1 else None
    sub = parts[2] if len(parts) > 2 else ""
    if sub and sub not in res.subresources:
        raise errors.generic(404)
    return Target(res, namespace, name, sub, watch_path)


# ---------------------------------------------------------------------------------------------
# Query parameters


def _bool(q: MultiMapping[str], key: str, default: bool = False) -> bool:
    value = q.get(key)
    if value is None or value == "":
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise errors.bad_request(f'strconv.ParseBool: parsing "{value}": invalid syntax')


def _int(q: MultiMapping[str], key: str) -> int | None:
    value = q.get(key)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.bad_request(f'strconv.ParseInt: parsing "{value}": invalid syntax') from None


def _options_invalid(options_kind: str, field: str, message: str) -> errors.ApiError:
    """422 for a bad query option, as ValidateCreateOptions & co. report it."""
    return errors.ApiError(
        422,
        "Invalid",
        f'{options_kind}.meta.k8s.io "" is invalid: {field}: {message}',
        {
            "group": "meta.k8s.io",
            "kind": options_kind,
            "causes": [{"reason": "FieldValueNotSupported", "message": message, "field": field}],
        },
    )


def _dry_run(q: MultiMapping[str], options_kind: str) -> bool:
    values = q.getall("dryRun", [])
    bad = [v for v in values if v != "All"]
    if bad:
        shown = ", ".join(json.dumps(v) for v in values)
        raise _options_invalid(
            options_kind,
            "dryRun",
            f'Unsupported value: []string{{{shown}}}: supported values: "All"',
        )
    return bool(values)


def _field_validation(q: MultiMapping[str], options_kind: str) -> str:
    value = q.get("fieldValidation", "")
    if value not in ("", "Ignore", "Warn", "Strict"):
        raise _options_invalid(
            options_kind,
            "fieldValidation",
            f'Unsupported value: "{value}": supported values: "", "Ignore", "Strict", "Warn"',
        )
    return value or "Warn"


def _field_manager(request: web.Request) -> str:
    """The fieldManager parameter, else the User-Agent's product name (prefixFromUserAgent)."""
    manager = request.query.get("fieldManager")
    if manager:
        return manager
    return request.headers.get("User-Agent", "unknown").split("/")[0][:128]


# ---------------------------------------------------------------------------------------------
# Bodies


async def _read_object(request: web.Request, res: Resource) -> Obj:
    """The request body as an object (JSON, YAML or, for the kinds `protobuf` knows,
    protobuf), or the decoder's 400, or 415 for any other media type."""
    # No Content-Type means JSON, the first media type the real server supports.
    ctype = request.content_type if "Content-Type" in request.headers else ""
    by_protobuf = protobuf.decodable(res.api_version, res.kind)
    if ctype == protobuf.MEDIA_TYPE and by_protobuf:
        raw = await request.read()
        try:
            return protobuf.decode(raw)
        except protobuf.Malformed as exc:
            raise errors.bad_request(str(exc)) from None
        except protobuf.Undecodable:
            by_protobuf = False  # answered as for a kind with no protobuf codec
    if ctype not in _BODY_TYPES:
        accepted = ["application/json", "application/yaml"]
        if by_protobuf:
            accepted.append(protobuf.MEDIA_TYPE)
        raise errors.unsupported_media_type(accepted)
    raw = await request.read()
    body = _decode(raw, yaml_ok=ctype == "application/yaml")
    if not isinstance(body, dict):
        raise errors.bad_request(
            f"Object 'Kind' is missing in '{raw[:200].decode(errors='replace')}'"
        )
    return body


def _decode(raw: bytes, yaml_ok: bool) -> Any:
    try:
        if yaml_ok:
            return yaml.safe_load(raw)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise errors.bad_request(f"couldn't get version/kind; json parse error: {exc}") from None


def _check_type(body: Obj, res: Resource) -> None:
    """An explicit apiVersion/kind must be the URL's (events.k8s.io bodies are their own)."""
    api_version, kind = body.get("apiVersion"), body.get("kind")
    if api_version and api_version != res.api_version:
        raise errors.bad_request(
            f"the API version in the data ({api_version}) does not match the expected API version ({res.api_version})"
        )
    if kind and kind != res.kind:
        raise errors.bad_request(
            f"the kind in the data ({kind}) does not match the expected kind ({res.kind})"
        )


def _check_namespace(body: Obj, t: Target) -> None:
    meta = body.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise errors.bad_request("metadata must be an object")
    if t.res.namespaced:
        if meta.get("namespace") and meta["namespace"] != t.namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        meta["namespace"] = t.namespace


def _check_name(obj: Obj, t: Target) -> None:
    name = (obj.get("metadata") or {}).get("name", "")
    if name != t.name:
        raise errors.bad_request(
            f"the name of the object ({name}) does not match the name on the URL ({t.name})"
        )


# ---------------------------------------------------------------------------------------------
# events.k8s.io/v1 <-> core/v1 Event (one stored object, two representations)

_EVENT_RENAMES = (  # (core field, events.k8s.io field)
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
)
_EVENT_FIELD_LABELS = {
    "regarding.": "involvedObject.",
    "reportingController": "reportingComponent",
    "deprecatedSource": "source",
}


def event_to_v1(obj: Obj, api_version: str) -> Obj:
    """Render a stored core/v1 Event as `api_version` (v1 or events.k8s.io/v1)."""
    if api_version == "v1":
        return obj
    out = dict(obj)
    out["apiVersion"] = api_version
    for core_name, new_name in _EVENT_RENAMES:
        if core_name in out:
            out[new_name] = out.pop(core_name)
    return out


def event_to_core(obj: Obj) -> Obj:
    out = dict(obj)
    out["apiVersion"] = "v1"
    for core_name, new_name in _EVENT_RENAMES:
        if new_name in out:
            out[core_name] = out.pop(new_name)
    return out


def _event_field_selector(text: str | None) -> str | None:
    for new, core in _EVENT_FIELD_LABELS.items():
        if text:
            text = text.replace(new, core)
    return text


# ---------------------------------------------------------------------------------------------
# The application


def make_app(store: Store, logs: PodLogs, options: Options | None = None) -> web.Application:
    """The API server as an aiohttp application (bind it with `serve.py`)."""
    api = ApiServer(store, logs, options or Options())
    app = web.Application(middlewares=[_status_errors], client_max_size=8 * 1024 * 1024)
    faults.install(app, "kubernetes", _fault_status)
    app.add_routes(discovery.routes(store))
    app.add_routes(
        [
            web.route("*", "/api/v1/{tail:.+}", api.handle_core),
            web.route("*", "/apis/{group}/{version}/{tail:.+}", api.handle_group),
            web.get("/healthz", _ok),
            web.get("/livez", _ok),
            web.get("/readyz", _ok),
        ]
    )
    return app


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def _fault_status(request: web.Request, fault: faults.Fault) -> web.StreamResponse:
    """An injected status fault as the API server's `Status` (see `faults`)."""
    code = fault.status or 500
    retry_after = None
    if fault.retry_after is not None and fault.retry_after.isdigit():
        retry_after = int(fault.retry_after)
    exc = errors.generic(code, retry_after)
    if code not in errors.FOR_CODE:
        exc.reason, exc.message = "", fault.phrase()
    return status_response(exc)


@web.middleware
async def _status_errors(request: web.Request, handler) -> web.StreamResponse:
    """Every failure leaves as a `Status` body with the real server's code and reason."""
    try:
        return await handler(request)
    except errors.ApiError as exc:
        return status_response(exc)
    except web.HTTPNotFound:
        return status_response(errors.generic(404))
    except web.HTTPMethodNotAllowed:
        return status_response(errors.method_not_allowed())
    except web.HTTPRequestEntityTooLarge:
        return status_response(
            errors.ApiError(413, "RequestEntityTooLarge", "request entity too large")
        )
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception as exc:  # noqa: BLE001 - a bug must still answer with a Status
        log.exception("internal error serving %s %s", request.method, request.path)
        return status_response(errors.internal(exc))


def _from_status(status: dict) -> errors.ApiError:
    """An ApiError from a `Status` body built by a helper module."""
    return errors.ApiError(
        status["code"], status["reason"], status["message"], status.get("details")
    )


def status_response(exc: errors.ApiError) -> web.Response:
    return discovery.json_response(exc.status(), status=exc.code)


def _json(body: Any, status: int = 200, warnings: list[str] | None = None) -> web.Response:
    resp = discovery.json_response(body, status=status)
    for w in warnings or ():
        resp.headers.add("Warning", f"299 - {json.dumps(w)}")
    return resp


class ApiServer:
    def __init__(self, store: Store, logs: PodLogs, options: Options) -> None:
        self.store = store
        self.logs = logs
        self.options = options

    async def handle_core(self, request: web.Request) -> web.StreamResponse:
        return await self._dispatch(
            request, parse_target("", "v1", request.match_info["tail"], self.store.custom.by_path)
        )

    async def handle_group(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        return await self._dispatch(
            request, parse_target(m["group"], m["version"], m["tail"], self.store.custom.by_path)
        )

    async def _dispatch(self, request: web.Request, t: Target) -> web.StreamResponse:
        method = request.method
        if t.sub == "log":
            if method != "GET":
                raise errors.method_not_allowed()
            return await self.pod_log(request, t)
        if t.sub == "scale":
            return await self.scale(request, t, method)
        if t.watch_path or (method == "GET" and _bool(request.query, "watch")):
            if method != "GET" or t.sub:
                raise errors.method_not_allowed()
            return await self.watch(request, t)
        if t.name is None:
            handler = {"GET": self.list, "POST": self.create, "DELETE": self.delete_collection}.get(
                method
            )
        else:
            handler = {
                "GET": self.get,
                "PUT": self.update,
                "PATCH": self.patch,
                "DELETE": self.delete,
            }.get(method)
        if handler is None:
            raise errors.method_not_allowed()
        return await handler(request, t)

    def _now(self) -> str:
        return rfc3339(self.store.clock.now())

    # -- representation -------------------------------------------------------------------

    def _out(self, t: Target, obj: Obj) -> Obj:
        """The stored object as the client's API version shows it."""
        if t.res.kind == "Event":
            return event_to_v1(obj, t.res.api_version)
        if t.res.custom and obj.get("apiVersion") != t.res.api_version:
            return {**obj, "apiVersion": t.res.api_version}  # versions differ in name only
        return obj

    def _in(self, t: Target, body: Obj) -> Obj:
        _check_type(body, t.res)
        if t.res.kind == "Event" and t.res.group:
            body = event_to_core(body)
        body["apiVersion"], body["kind"] = t.storage.api_version, t.storage.kind
        return body

    def _live(self, t: Target) -> Obj:
        obj = self.store.try_get(t.storage, t.namespace, t.name or "")
        if obj is None:
            raise errors.not_found(t.res.group, t.res.plural, t.name or "")
        return obj

    def _render(
        self,
        request: web.Request,
        t: Target,
        obj: Obj,
        status: int = 200,
        warnings: list[str] | None = None,
    ) -> web.Response:
        obj = self._out(t, obj)
        if tables.wants_table(request.headers.get("Accept", "")) and not t.sub:
            return _json(self._object_table(request, t, obj))
        return _json(obj, status, warnings)

    def _table(
        self,
        request: web.Request,
        t: Target,
        items: list[Obj],
        list_meta: dict,
        headers: bool = True,
    ) -> dict:
        if t.res.kind == "Event":
            items = [event_to_core(o) for o in items]
        if t.res.custom:
            return crds.table(
                t.res,
                items,
                list_meta,
                self.store.clock.now(),
                request.query.get("includeObject", "Metadata"),
                headers,
            )
        return tables.table(
            t.res.kind,
            items,
            list_meta,
            self.store.clock.now(),
            request.query.get("includeObject", "Metadata"),
            headers,
        )

    def _object_table(
        self, request: web.Request, t: Target, obj: Obj, headers: bool = True
    ) -> dict:
        """One object as a Table: its resourceVersion is the Table's, as the real server's."""
        rv = (obj.get("metadata") or {}).get("resourceVersion", "")
        return self._table(request, t, [obj], {"resourceVersion": rv}, headers)

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, request: web.Request, t: Target) -> web.Response:
        return self._render(request, t, self._live(t))  # the object, or its status subresource

    def _predicate(self, request: web.Request, t: Target) -> Predicate | None:
        q = request.query
        field_text = q.get("fieldSelector")
        if t.res.kind == "Event" and t.res.group:
            field_text = _event_field_selector(field_text)
        preds = [
            p
            for p in (
                parse_label_selector(q.get("labelSelector")),
                parse_field_selector(field_text, t.res.kind, t.res.api_version),
            )
            if p
        ]
        if t.name is not None:
            name = t.name
            preds.append(lambda o: o["metadata"].get("name") == name)
        if not preds:
            return None
        if len(preds) == 1:
            return preds[0]
        return lambda o: all(p(o) for p in preds)

    async def list(self, request: web.Request, t: Target) -> web.Response:
        q = request.query
        if q.get("resourceVersionMatch") and not q.get("resourceVersion"):
            raise errors.bad_request(
                "resourceVersionMatch is forbidden unless resourceVersion is provided"
            )
        if q.get("resourceVersionMatch", "NotOlderThan") not in ("NotOlderThan", "Exact"):
            raise errors.bad_request(f"invalid resourceVersionMatch: {q['resourceVersionMatch']}")
        predicate = self._predicate(request, t)
        limit = _int(q, "limit") or 0
        rv = int(self.store.resource_version)
        start: tuple[str, str] | None = None
        if q.get("continue"):
            rv, start = self._decode_continue(q["continue"])
        items = self.store.list(t.storage, t.namespace, predicate)
        if start is not None:
            items = [
                o
                for o in items
                if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > start
            ]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if 0 < limit < len(items):
            last = items[limit - 1]["metadata"]
            meta["continue"] = _encode_continue(rv, (last.get("namespace", ""), last["name"]))
            if predicate is None:
                meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        if tables.wants_table(request.headers.get("Accept", "")):
            return _json(self._table(request, t, items, meta))
        # List items carry no apiVersion/kind on the wire, as from the real server.
        shown = [
            {k: v for k, v in self._out(t, o).items() if k not in ("apiVersion", "kind")}
            for o in items
        ]
        return _json(
            {
                "kind": f"{t.res.kind}List",
                "apiVersion": t.res.api_version,
                "metadata": meta,
                "items": shown,
            }
        )

    def _decode_continue(self, token: str) -> tuple[int, tuple[str, str]]:
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            if data.get("v") != _CONTINUE_VERSION:
                raise errors.bad_request(
                    f"continue key is not valid: incorrect encoded start resourceVersion (version {_CONTINUE_VERSION})"
                )
            rv, (ns, name) = int(data["rv"]), data["start"]
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise errors.bad_request(
                "continue key is not valid: illegal base64 data at input byte 0"
            ) from None
        if rv < self.store.oldest_resource_version():
            raise errors.ApiError(410, "Expired", _CONTINUE_EXPIRED)
        return rv, (ns, name)

    # -- watch ---------------------------------------------------------------------------------

    async def watch(self, request: web.Request, t: Target) -> web.StreamResponse:
        q = request.query
        predicate = self._predicate(request, t)
        send_initial = _bool(q, "sendInitialEvents")
        rv = None if send_initial else q.get("resourceVersion")
        bookmarks = _bool(q, "allowWatchBookmarks")
        timeout = _int(q, "timeoutSeconds")
        if timeout is None or timeout <= 0:
            timeout = random.uniform(1800, 3600)  # the real server's spread of minRequestTimeout
        deadline = time.monotonic() + min(timeout, self.options.max_watch_seconds)
        expired: errors.ApiError | None = None
        w = None
        try:
            w = self.store.watch(t.storage, t.namespace, predicate, rv)
        except errors.ApiError as exc:
            if exc.code != 410:
                raise
            expired = exc  # the real server answers 200 and reports it as an ERROR event
        resp = web.StreamResponse(
            headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"}
        )
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if expired is not None:
            await _write_event(resp, "ERROR", expired.status())
            return resp
        initial_left = w.queue.qsize() if send_initial else -1
        last_bookmark = time.monotonic()
        # Asked for Tables, every event's object is one (bookmarks too, as the real server's
        # watch encoder transforms them); only the first carries the column definitions.
        as_table = tables.wants_table(request.headers.get("Accept", ""))
        headers = True

        async def send(ev_type: str, obj: Obj) -> None:
            nonlocal headers
            if as_table and obj.get("kind") != "Status":
                obj = self._object_table(request, t, obj, headers)
                headers = False
            await _write_event(resp, ev_type, obj)

        try:
            while (remaining := deadline - time.monotonic()) > 0:
                if initial_left == 0:
                    await send("BOOKMARK", self._bookmark(t, initial_end=True))
                    initial_left = -1
                ev = await w.next(min(remaining, self.options.poll_interval))
                if ev is not None:
                    await send(ev.type, self._out(t, ev.object))
                    if initial_left > 0:
                        initial_left -= 1
                    continue
                if w.closed or _client_gone(request):
                    break
                if bookmarks and time.monotonic() - last_bookmark >= self.options.bookmark_interval:
                    await send("BOOKMARK", self._bookmark(t))
                    last_bookmark = time.monotonic()
        except ConnectionError:
            pass  # the client left
        finally:
            w.close()
        return resp

    def _bookmark(self, t: Target, initial_end: bool = False) -> Obj:
        meta: dict[str, Any] = {"resourceVersion": self.store.resource_version}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"kind": t.res.kind, "apiVersion": t.res.api_version, "metadata": meta}

    # -- writes --------------------------------------------------------------------------------

    def _admit(
        self,
        request: web.Request,
        t: Target,
        obj: Obj,
        old: Obj | None,
        options_kind: str,
        subresource: str = "",
    ) -> tuple[Obj, list[str]]:
        """Default, validate and stamp managedFields; returns (object, warnings)."""
        mode = _field_validation(request.query, options_kind)
        warnings: list[str] = []
        unknown = schema.unknown_fields(obj)
        if unknown and mode != "Strict":
            if mode == "Warn":
                warnings = [f'unknown field "{path}"' for path in unknown]
            obj = schema.prune_unknown(obj)
        obj = apply_defaults(copy(obj))
        problems = schema.validate(obj, strict=mode == "Strict")
        if problems:
            name = (obj.get("metadata") or {}).get("name", "")
            raise _from_status(schema.error_status(t.res.api_version, t.res.kind, name, problems))
        obj = apply.record_update(old, obj, _field_manager(request), self._now(), subresource)
        return obj, warnings

    async def create(self, request: web.Request, t: Target) -> web.Response:
        dry = _dry_run(request.query, "CreateOptions")
        body = self._in(t, await _read_object(request, t.res))
        _check_namespace(body, t)
        obj, warnings = self._admit(request, t, body, None, "CreateOptions")
        created = self.store.create(t.storage, obj, dry_run=dry)
        return self._render(request, t, created, 201, warnings)

    async def update(self, request: web.Request, t: Target) -> web.Response:
        dry = _dry_run(request.query, "UpdateOptions")
        body = self._in(t, await _read_object(request, t.res))
        _check_namespace(body, t)
        _check_name(body, t)
        old = self.store.try_get(t.storage, t.namespace, t.name or "")
        if old is None:
            if t.res.kind in _CREATE_ON_UPDATE and not t.sub:
                return await self._create_obj(request, t, body, dry, "UpdateOptions")
            raise errors.not_found(t.res.group, t.res.plural, t.name or "")
        return self._write(request, t, old, body, dry, "UpdateOptions")

    async def _create_obj(
        self, request: web.Request, t: Target, body: Obj, dry: bool, options_kind: str
    ) -> web.Response:
        obj, warnings = self._admit(request, t, body, None, options_kind)
        return self._render(
            request, t, self.store.create(t.storage, obj, dry_run=dry), 201, warnings
        )

    def _write(
        self, request: web.Request, t: Target, old: Obj, new: Obj, dry: bool, options_kind: str
    ) -> web.Response:
        if t.sub == "status":
            # Only status changes here; the rest of the object comes from the live one.
            new = {
                **old,
                "status": new.get("status"),
                "metadata": {
                    **old["metadata"],
                    "resourceVersion": (new.get("metadata") or {}).get("resourceVersion"),
                },
            }
        obj, warnings = self._admit(request, t, new, old, options_kind, t.sub)
        stored = self.store.update(t.storage, obj, subresource=t.sub, dry_run=dry)
        return self._render(request, t, stored, 200, warnings)

    async def patch(self, request: web.Request, t: Target) -> web.Response:
        q = request.query
        dry = _dry_run(q, "PatchOptions")
        ctype = request.content_type
        raw = await request.read()
        if ctype == APPLY_PATCH:
            return self._apply(request, t, raw, dry)
        if ctype not in (JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH):
            raise errors.unsupported_media_type(PATCH_TYPES)
        if ctype == STRATEGIC_PATCH and t.res.custom:
            # Custom resources have no patch strategy (the real server's 415 for them).
            raise errors.unsupported_media_type([JSON_PATCH, MERGE_PATCH, APPLY_PATCH])
        doc = _decode(raw, yaml_ok=False)
        live = self._live(t)
        patched = self._patched(t, self._out(t, live), ctype, doc)
        patched = self._in(t, patched)
        self._check_identity(t, live, patched)
        return self._write(request, t, live, patched, dry, "PatchOptions")

    def _patched(self, t: Target, current: Obj, ctype: str, doc: Any) -> Obj:
        try:
            if ctype == JSON_PATCH:
                result = patch.json_patch(current, doc)
            elif not isinstance(doc, dict):
                raise errors.bad_request(
                    "json: cannot unmarshal array into Go value of type map[string]interface {}"
                )
            elif ctype == MERGE_PATCH or t.sub == "scale":
                result = patch.merge_patch(current, doc)
            else:
                result = patch.strategic_merge_patch(
                    current, doc, current["apiVersion"], current["kind"]
                )
        except patch.PatchError as exc:
            raise _from_status(exc.status()) from None
        if not isinstance(result, dict):
            raise errors.bad_request("the patch result is not an object")
        return result

    def _check_identity(self, t: Target, live: Obj, patched: Obj) -> None:
        meta = patched.setdefault("metadata", {})
        _check_name(patched, t)
        if t.res.namespaced and meta.get("namespace") != t.namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        uid = meta.get("uid")
        if uid and uid != live["metadata"]["uid"]:
            raise errors.conflict(
                t.res.group,
                t.res.plural,
                t.name or "",
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: {live['metadata']['uid']}",
            )

    def _apply(self, request: web.Request, t: Target, raw: bytes, dry: bool) -> web.Response:
        """Server-side apply: an upsert that tracks field ownership per manager."""
        q = request.query
        manager = q.get("fieldManager")
        if not manager:
            raise errors.ApiError(
                422,
                "Invalid",
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
                {
                    "group": "meta.k8s.io",
                    "kind": "PatchOptions",
                    "causes": [
                        {
                            "reason": "FieldValueRequired",
                            "message": "Required value: is required for apply patch",
                            "field": "fieldManager",
                        }
                    ],
                },
            )
        force = _bool(q, "force")
        applied = _decode(raw, yaml_ok=True)
        if not isinstance(applied, dict):
            raise errors.bad_request(
                f"Object 'Kind' is missing in '{raw[:200].decode(errors='replace')}'"
            )
        _check_type(applied, t.res)
        if not applied.get("apiVersion") or not applied.get("kind"):
            raise errors.bad_request("apiVersion and kind must be set in an apply configuration")
        live = self.store.try_get(t.storage, t.namespace, t.name or "")
        if live is None and t.sub:
            raise errors.not_found(t.res.group, t.res.plural, t.name or "")
        now = self._now()
        try:
            merged = apply.server_side_apply(
                None if live is None else self._out(t, live), applied, manager, force, now
            )
        except apply.ApplyConflict as exc:
            raise _from_status(exc.status()) from None
        merged = self._in(t, merged)
        if live is None:
            _check_namespace(merged, t)
            _check_name(merged, t)
            obj = self._validated(request, t, merged, "PatchOptions")
            return self._render(request, t, self.store.create(t.storage, obj, dry_run=dry), 201)
        self._check_identity(t, live, merged)
        if t.sub == "status":
            merged = {**live, "status": merged.get("status"), "metadata": merged["metadata"]}
        obj = self._validated(request, t, merged, "PatchOptions")
        return self._render(
            request, t, self.store.update(t.storage, obj, subresource=t.sub, dry_run=dry)
        )

    def _validated(self, request: web.Request, t: Target, obj: Obj, options_kind: str) -> Obj:
        """Default and validate an object whose managedFields are already settled (apply)."""
        mode = _field_validation(request.query, options_kind)
        obj = apply_defaults(copy(obj))
        problems = schema.validate(obj, strict=mode == "Strict")
        if problems:
            raise _from_status(
                schema.error_status(
                    t.res.api_version, t.res.kind, obj["metadata"].get("name", ""), problems
                )
            )
        return obj

    # -- deletes -------------------------------------------------------------------------------

    async def _delete_options(self, request: web.Request) -> tuple[dict, bool]:
        opts: dict = {}
        if request.can_read_body:
            raw = await request.read()
            if raw.strip():
                opts = _decode(raw, yaml_ok=False)
                if not isinstance(opts, dict):
                    raise errors.bad_request("DeleteOptions must be an object")
        q = request.query
        policy = q.get("propagationPolicy") or opts.get("propagationPolicy")
        if policy and policy not in ("Foreground", "Background", "Orphan"):
            raise _options_invalid(
                "DeleteOptions",
                "propagationPolicy",
                f'Unsupported value: "{policy}": supported values: '
                '"Foreground", "Background", "Orphan", "nil"',
            )
        body_dry = opts.get("dryRun") or []
        dry = _dry_run(q, "DeleteOptions") or body_dry == ["All"]
        if body_dry and body_dry != ["All"]:
            raise _options_invalid(
                "DeleteOptions",
                "dryRun",
                f'Unsupported value: {json.dumps(body_dry)}: supported values: "All"',
            )
        return opts, dry

    async def delete(self, request: web.Request, t: Target) -> web.Response:
        if t.sub:
            raise errors.method_not_allowed()
        opts, dry = await self._delete_options(request)
        live = self._live(t)
        pre = opts.get("preconditions") or {}
        rv = pre.get("resourceVersion")
        if rv and rv != live["metadata"]["resourceVersion"]:
            raise errors.conflict(
                t.res.group,
                t.res.plural,
                t.name or "",
                f"Precondition failed: ResourceVersion in precondition: {rv}, "
                f"ResourceVersion in object meta: {live['metadata']['resourceVersion']}",
            )
        gone = self.store.delete(
            t.storage, t.namespace, t.name or "", dry_run=dry, uid=pre.get("uid")
        )
        if t.res.kind in _DELETE_RETURNS_OBJECT:
            return _json(self._out(t, gone))
        return _json(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {  # Go's omitempty: no "group" for the core group
                    "name": t.name,
                    **({"group": t.res.group} if t.res.group else {}),
                    "kind": t.res.plural,
                    "uid": gone["metadata"]["uid"],
                },
            }
        )

    async def delete_collection(self, request: web.Request, t: Target) -> web.Response:
        _, dry = await self._delete_options(request)
        items = self.store.list(t.storage, t.namespace, self._predicate(request, t))
        deleted = []
        for obj in items:
            meta = obj["metadata"]
            if self.store.try_get(t.storage, meta.get("namespace"), meta["name"]) is not None:
                deleted.append(
                    self._out(
                        t,
                        self.store.delete(
                            t.storage, meta.get("namespace"), meta["name"], dry_run=dry
                        ),
                    )
                )
        return _json(
            {
                "kind": f"{t.res.kind}List",
                "apiVersion": t.res.api_version,
                "metadata": {"resourceVersion": self.store.resource_version},
                "items": deleted,
            }
        )

    # -- scale subresource -------------------------------------------------------------------

    async def scale(self, request: web.Request, t: Target, method: str) -> web.Response:
        live = self._live(t)
        if method == "GET":
            return _json(_scale_of(live))
        dry = _dry_run(request.query, "UpdateOptions" if method == "PUT" else "PatchOptions")
        if method == "PUT":
            scale = await _read_object(request, t.res)
        elif method == "PATCH":
            if request.content_type not in (JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH):
                raise errors.unsupported_media_type(PATCH_TYPES)
            scale = self._patched(
                t,
                _scale_of(live),
                request.content_type,
                _decode(await request.read(), yaml_ok=False),
            )
        else:
            raise errors.method_not_allowed()
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise errors.invalid(
                "autoscaling",
                "Scale",
                t.name or "",
                [
                    {
                        "reason": "FieldValueInvalid",
                        "message": f"Invalid value: {json.dumps(replicas)}: "
                        "must be greater than or equal to 0",
                        "field": "spec.replicas",
                    }
                ],
            )
        rv = (scale.get("metadata") or {}).get("resourceVersion")
        new = {
            **live,
            "spec": {**live.get("spec", {}), "replicas": replicas},
            "metadata": {
                **live["metadata"],
                "resourceVersion": rv or live["metadata"]["resourceVersion"],
            },
        }
        obj = apply.record_update(live, new, _field_manager(request), self._now(), "scale")
        return _json(_scale_of(self.store.update(t.storage, obj, dry_run=dry)))

    # -- pod logs ------------------------------------------------------------------------------

    async def pod_log(self, request: web.Request, t: Target) -> web.StreamResponse:
        pod = self._live(t)
        q = request.query
        container = _log_container(pod, q.get("container"))
        opts = _log_options(q, t.name or "", self.store.clock.now())
        if not (pod.get("spec") or {}).get("nodeName"):
            return web.Response(
                body=b"", content_type="text/plain"
            )  # not scheduled: nothing to read
        ns, name = t.namespace or "", t.name or ""
        if not opts.previous and not self.logs.has_started(ns, name, container):
            reason = _waiting_reason(pod, container) or "ContainerCreating"
            raise errors.bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: {reason}'
            )
        text = self.logs.read(
            ns,
            name,
            container,
            previous=opts.previous,
            tail_lines=opts.tail_lines,
            since=opts.since,
            timestamps=True,
            limit_bytes=None,
        )
        if not opts.follow:
            return web.Response(
                body=_log_bytes(text, opts.timestamps, opts.limit_bytes), content_type="text/plain"
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await self._follow(request, resp, t, container, text, opts)
        return resp

    async def _follow(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        t: Target,
        container: str,
        text: str,
        opts: LogOptions,
    ) -> None:
        """Stream new lines until the container stops, the pod goes, or the client leaves."""
        ns, name = t.namespace or "", t.name or ""
        budget = opts.limit_bytes
        cursor = _LogCursor()
        deadline = time.monotonic() + self.options.max_watch_seconds
        try:
            while True:
                chunk = _log_bytes(cursor.advance(text), opts.timestamps, budget)
                if chunk:
                    await resp.write(chunk)
                    if budget is not None:
                        budget -= len(chunk)
                        if budget <= 0:
                            return
                pod = self.store.try_get(t.storage, ns, name)
                if (
                    pod is None
                    or not _container_running(pod, container)
                    or time.monotonic() > deadline
                ):
                    return
                while not await self.logs.wait_for_more(
                    ns, name, container, self.options.poll_interval
                ):
                    if _client_gone(request) or time.monotonic() > deadline:
                        return
                    pod = self.store.try_get(t.storage, ns, name)
                    if pod is None or not _container_running(pod, container):
                        return
                text = self.logs.read(ns, name, container, since=cursor.since, timestamps=True)
        except ConnectionError:
            return


# ---------------------------------------------------------------------------------------------
# Helpers: continue tokens, watch events, scale, logs


def _encode_continue(rv: int, start: tuple[str, str]) -> str:
    data = json.dumps({"v": _CONTINUE_VERSION, "rv": rv, "start": list(start)}).encode()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


async def _write_event(resp: web.StreamResponse, ev_type: str, obj: Obj) -> None:
    await resp.write(
        json.dumps({"type": ev_type, "object": obj}, separators=(",", ":")).encode() + b"\n"
    )


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _scale_of(obj: Obj) -> Obj:
    meta = obj["metadata"]
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": spec.get("replicas", 0)},
        "status": {
            "replicas": status.get("replicas", 0),
            "selector": selector_to_string(spec.get("selector") or {}),
        },
    }


@dataclass(frozen=True)
class LogOptions:
    previous: bool
    follow: bool
    timestamps: bool
    tail_lines: int | None
    since: datetime | None
    limit_bytes: int | None


def _log_invalid(pod: str, field: str, message: str) -> errors.ApiError:
    return errors.ApiError(
        422,
        "Invalid",
        f'PodLogOptions "{pod}" is invalid: {field}: {message}',
        {
            "name": pod,
            "kind": "PodLogOptions",
            "causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}],
        },
    )


def _log_options(q: MultiMapping[str], pod: str, now: datetime) -> LogOptions:
    tail, since_s, limit = _int(q, "tailLines"), _int(q, "sinceSeconds"), _int(q, "limitBytes")
    since_time = q.get("sinceTime")
    if tail is not None and tail < 0:
        raise _log_invalid(
            pod, "tailLines", f"Invalid value: {tail}: must be greater than or equal to 0"
        )
    if limit is not None and limit < 1:
        raise _log_invalid(pod, "limitBytes", f"Invalid value: {limit}: must be greater than 0")
    if since_s is not None and since_time:
        raise _log_invalid(pod, "", "at most one of `sinceTime` or `sinceSeconds` may be specified")
    since = None
    if since_s is not None:
        if since_s < 1:
            raise _log_invalid(
                pod, "sinceSeconds", f"Invalid value: {since_s}: must be greater than 0"
            )
        since = now - timedelta(seconds=since_s)
    elif since_time:
        since = tables.parse_time(since_time)
        if since is None:
            raise errors.bad_request(
                f'parsing time "{since_time}" as "2006-01-02T15:04:05Z07:00": cannot parse'
            )
    return LogOptions(
        _bool(q, "previous"), _bool(q, "follow"), _bool(q, "timestamps"), tail, since, limit
    )


def _log_container(pod: Obj, requested: str | None) -> str:
    spec = pod.get("spec") or {}
    name = pod["metadata"]["name"]
    containers = [c.get("name", "") for c in spec.get("containers") or []]
    inits = [c.get("name", "") for c in spec.get("initContainers") or []]
    if requested:
        if requested not in containers + inits:
            raise errors.bad_request(f"container {requested} is not valid for pod {name}")
        return requested
    if len(containers) == 1:
        return containers[0]
    if not containers:
        raise errors.bad_request(f"a container name must be specified for pod {name}")
    message = f"a container name must be specified for pod {name}, choose one of: [{' '.join(containers)}]"
    if inits:
        message += f" or one of the init containers: [{' '.join(inits)}]"
    raise errors.bad_request(message)


def _container_status(pod: Obj, container: str) -> dict:
    status = pod.get("status") or {}
    for cs in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
        if cs.get("name") == container:
            return cs
    return {}


def _waiting_reason(pod: Obj, container: str) -> str:
    return ((_container_status(pod, container).get("state") or {}).get("waiting") or {}).get(
        "reason", ""
    )


def _container_running(pod: Obj, container: str) -> bool:
    return "running" in (_container_status(pod, container).get("state") or {})


def _log_bytes(timestamped: str, timestamps: bool, limit: int | None) -> bytes:
    """Lines read with timestamps, shown with or without them, cut at `limit` bytes."""
    if not timestamps:
        timestamped = "".join(
            line.split(" ", 1)[1] if " " in line else line
            for line in timestamped.splitlines(keepends=True)
        )
    data = timestamped.encode()
    return data if limit is None else data[:limit]


class _LogCursor:
    """Where a follower is in a container log: the last timestamp sent and how many lines had it.

    Reading again `since` that timestamp returns those lines once more; they are skipped,
    so lines are neither lost nor repeated even when the bounded buffer has rotated.
    """

    def __init__(self) -> None:
        self.since: datetime | None = None
        self._seen_at_since = 0

    def advance(self, timestamped: str) -> str:
        lines = timestamped.splitlines(keepends=True)[self._seen_at_since if self.since else 0 :]
        for line in lines:
            stamp = tables.parse_time(line.split(" ", 1)[0])
            if stamp is None:
                continue
            if stamp == self.since:
                self._seen_at_since += 1
            else:
                self.since, self._seen_at_since = stamp, 1
        return "".join(lines)
