"""Injected faults for every sandbox stand-in, controlled over HTTP.

Each stand-in installs one `Faults` table with `install(app, name, shape)`: a middleware
placed first in the application's chain, so it runs before the stand-in's own
middlewares and handlers, and before those of any sub-application (aiohttp runs the
root application's middlewares outermost), and the control API below. Fault tests
need no proxy, and the product, which only sees the stand-in's URL, cannot tell a
fault from the real service misbehaving.

Control API, the same on every stand-in (requests to it are never faulted):

- `POST /sandbox/faults` with a JSON object (see `FIELDS`) -> 201 with the fault and
  its `id`. `path` is a regular expression searched (`re.search`) in the request path,
  without the query string; `method` (default: any) narrows it. What a matching
  request gets, in this order: `delay` seconds of waiting; with `hang`, no answer at
  all until the fault expires (never longer than `MAX_HOLD_S`); then the `status`,
  shaped like the real service's error unless `body` is given (sent verbatim), with
  `retry_after` verbatim as the Retry-After header; without a status, the stand-in's
  normal answer. A delayed or hung request whose client goes away is dropped.
  A fault ends after `duration` seconds, after `count` matching requests, or at
  whichever comes first; one of the two is required, so no fault outlives its test.
- `GET /sandbox/faults` -> the active faults, with the requests each has hit so far;
  `GET /sandbox/faults/{id}` -> one of them.
- `DELETE /sandbox/faults` clears them all; `DELETE /sandbox/faults/{id}` clears one.

When several active faults match a request, the oldest applies. State lives with the
application and is only touched on the sandbox's event loop thread; durations run on
that loop's monotonic clock.
"""

from __future__ import annotations

import asyncio
import http
import itertools
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

CONTROL_PATH = "/sandbox/faults"
MAX_HOLD_S = 600.0  # the longest a delay or a hang holds a request
POLL_S = 0.05  # how often a held request checks that its client is still there
FIELDS = ("path", "method", "status", "retry_after", "delay", "hang", "duration", "count", "body")
_METHOD = re.compile(r"[A-Za-z]+")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FaultError(ValueError):
    """A fault specification the control API refuses (answered with 400)."""


@dataclass
class Fault:
    id: str
    path: str
    method: str | None
    status: int | None
    retry_after: str | None
    delay: float
    hang: bool
    duration: float | None
    count: int | None
    body: str | None
    created: float  # loop time
    pattern: re.Pattern[str] = field(repr=False)
    hits: int = 0

    @property
    def expires(self) -> float | None:
        return None if self.duration is None else self.created + self.duration

    def active(self, now: float) -> bool:
        expires = self.expires
        return (expires is None or now < expires) and (self.count is None or self.hits < self.count)

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and bool(self.pattern.search(path))

    def hold_s(self, now: float) -> float:
        """How long a hang holds a request that arrives at `now`."""
        expires = self.expires
        return MAX_HOLD_S if expires is None else max(0.0, min(MAX_HOLD_S, expires - now))

    def phrase(self) -> str:
        """The status's standard reason phrase, for shapes that need a message."""
        try:
            return http.HTTPStatus(self.status or 500).phrase
        except ValueError:
            return "Error"

    def view(self, now: float) -> dict[str, Any]:
        expires = self.expires
        return {
            "id": self.id,
            "path": self.path,
            "method": self.method,
            "status": self.status,
            "retry_after": self.retry_after,
            "delay": self.delay,
            "hang": self.hang,
            "duration": self.duration,
            "count": self.count,
            "body": self.body,
            "hits": self.hits,
            "expires_in": None if expires is None else round(max(0.0, expires - now), 3),
            "remaining": None if self.count is None else self.count - self.hits,
        }

    def describe(self) -> str:
        effects = []
        if self.delay:
            effects.append(f"delay {self.delay:g} s")
        if self.hang:
            effects.append("hang")
        if self.status is not None:
            effects.append(
                f"status {self.status}"
                + (f" (Retry-After: {self.retry_after})" if self.retry_after is not None else "")
            )
        limits = []
        if self.count is not None:
            limits.append(f"{self.count} request(s)")
        if self.duration is not None:
            limits.append(f"{self.duration:g} s")
        return (
            f"{', '.join(effects)} on {self.method or 'any method'} matching {self.path!r}"
            f" for {' or '.join(limits)}"
        )


# What a status fault answers, given the request and the fault; `body` and Retry-After
# are applied by the middleware.
Shape = Callable[[web.Request, Fault], web.StreamResponse]


def text_shape(request: web.Request, fault: Fault) -> web.StreamResponse:
    """A plain-text error: the status's reason phrase."""
    return web.Response(status=fault.status or 500, text=fault.phrase())


class Faults:
    """The faults of one stand-in. Touched only on the sandbox's event loop thread."""

    def __init__(self, name: str, shape: Shape = text_shape) -> None:
        self.name = name
        self.shape = shape
        self._faults: dict[str, Fault] = {}
        self._ids = itertools.count(1)

    # -- the table

    def add(self, spec: Any, now: float) -> Fault:
        """Validate `spec` (the POST body) and make it an active fault; FaultError if bad."""
        fault = Fault(id=f"f{next(self._ids)}", created=now, **parse(spec))
        self._faults[fault.id] = fault
        log.info("%s: fault %s injected: %s", self.name, fault.id, fault.describe())
        return fault

    def active(self, now: float) -> list[Fault]:
        for fault in [f for f in self._faults.values() if not f.active(now)]:
            del self._faults[fault.id]
        return list(self._faults.values())

    def take(self, method: str, path: str, now: float) -> Fault | None:
        """The fault that applies to this request, if any, counting the hit."""
        for fault in self.active(now):
            if fault.matches(method, path):
                fault.hits += 1
                return fault
        return None

    def get(self, fault_id: str, now: float) -> Fault | None:
        fault = self._faults.get(fault_id)
        return fault if fault is not None and fault.active(now) else None

    def remove(self, fault_id: str, now: float) -> Fault | None:
        fault = self.get(fault_id, now)
        if fault is not None:
            del self._faults[fault_id]
        return fault

    def clear(self, now: float) -> int:
        cleared = len(self.active(now))
        self._faults.clear()
        return cleared

    # -- HTTP

    def middleware(self) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
        @web.middleware
        async def sandbox_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
            path = request.path
            if path == CONTROL_PATH or path.startswith(CONTROL_PATH + "/"):
                return await self._control(request)
            loop = asyncio.get_running_loop()
            fault = self.take(request.method, path, loop.time())
            if fault is None:
                return await handler(request)
            if fault.delay and not await _hold(request, fault.delay):
                return _dropped()
            if fault.hang and not await _hold(request, fault.hold_s(loop.time())):
                return _dropped()
            if fault.status is None:
                return await handler(request)
            return self._respond(request, fault)

        return sandbox_faults

    def _respond(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        status = fault.status or 500
        if fault.body is not None:
            response = web.Response(
                status=status, text=fault.body, content_type=_content_type(fault.body)
            )
        else:
            response = self.shape(request, fault)
        if fault.retry_after is not None:
            response.headers["Retry-After"] = fault.retry_after
        return response

    async def _control(self, request: web.Request) -> web.StreamResponse:
        now = asyncio.get_running_loop().time()
        rest = request.path[len(CONTROL_PATH) :]
        if rest in ("", "/"):
            if request.method == "GET":
                return web.json_response({"faults": [f.view(now) for f in self.active(now)]})
            if request.method == "DELETE":
                return web.json_response({"cleared": self.clear(now)})
            if request.method == "POST":
                try:
                    spec = await request.json()
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return _message(400, "the body must be a JSON object describing the fault")
                try:
                    fault = self.add(spec, now)
                except FaultError as exc:
                    return _message(400, str(exc))
                return web.json_response(fault.view(now), status=201)
            return _message(405, f"{request.method} is not allowed here", allow="GET, POST, DELETE")
        fault_id = rest[1:]
        if "/" in fault_id:
            return _message(404, f"no such path: {request.path}")
        if request.method not in ("GET", "DELETE"):
            return _message(405, f"{request.method} is not allowed here", allow="GET, DELETE")
        fault = self.get(fault_id, now) if request.method == "GET" else self.remove(fault_id, now)
        if fault is None:
            return _message(404, f"no active fault {fault_id!r}")
        return web.json_response(fault.view(now))


FAULTS = web.AppKey("sandbox_faults", Faults)


def install(app: web.Application, name: str, shape: Shape = text_shape) -> Faults:
    """Give `app` a fault table: its middleware goes first, before the app's own."""
    faults = Faults(name, shape)
    app[FAULTS] = faults
    app.middlewares.insert(0, faults.middleware())
    return faults


# -- validation


def parse(spec: Any) -> dict[str, Any]:
    """The fields of a Fault from a POST body; FaultError says what is wrong."""
    if not isinstance(spec, dict):
        raise FaultError("the body must be a JSON object describing the fault")
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
        raise FaultError(f"unknown field(s) {unknown}; known: {list(FIELDS)}")

    path = spec.get("path")
    if not isinstance(path, str) or not path:
        raise FaultError("path is required: a regular expression searched in the request path")
    try:
        pattern = re.compile(path)
    except re.error as exc:
        raise FaultError(f"path is not a valid regular expression: {exc}") from None

    method = spec.get("method")
    if method is not None:
        if not isinstance(method, str) or not _METHOD.fullmatch(method):
            raise FaultError('method must be an HTTP method such as "GET", or omitted for any')
        method = method.upper()

    status = spec.get("status")
    if status is not None and (not _is_int(status) or not 100 <= status <= 599):
        raise FaultError("status must be an integer from 100 to 599")

    retry_after = spec.get("retry_after")
    if retry_after is not None:
        if not isinstance(retry_after, str) or not retry_after.isprintable() or not retry_after:
            raise FaultError(
                'retry_after must be a non-empty string, sent verbatim as Retry-After (e.g. "5")'
            )
        if status is None:
            raise FaultError("retry_after needs a status to be sent with")

    body = spec.get("body")
    if body is not None:
        if not isinstance(body, str):
            raise FaultError("body must be a string, sent verbatim as the response body")
        if status is None:
            raise FaultError("body needs a status to be sent with")

    delay = _seconds(spec, "delay", 0.0)
    if delay > MAX_HOLD_S:
        raise FaultError(f"delay must be at most {MAX_HOLD_S:g} s")
    hang = spec.get("hang", False)
    if not isinstance(hang, bool):
        raise FaultError("hang must be true or false")

    duration = _seconds(spec, "duration", None)
    if duration is not None and duration <= 0:
        raise FaultError("duration must be more than 0 s")
    count = spec.get("count")
    if count is not None and (not _is_int(count) or count < 1):
        raise FaultError("count must be an integer of at least 1")
    if duration is None and count is None:
        raise FaultError("a fault needs a duration (seconds) or a count (requests), or both")
    if status is None and not delay and not hang:
        raise FaultError("a fault must do something: give a status, a delay or hang")

    return {
        "path": path,
        "pattern": pattern,
        "method": method,
        "status": status,
        "retry_after": retry_after,
        "delay": delay,
        "hang": hang,
        "duration": duration,
        "count": count,
        "body": body,
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(spec: dict[str, Any], name: str, default: float | None) -> Any:
    value = spec.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FaultError(f"{name} must be a number of seconds")
    if value < 0:
        raise FaultError(f"{name} must not be negative")
    return float(value)


# -- helpers


async def _hold(request: web.Request, seconds: float) -> bool:
    """Wait `seconds`; False as soon as the client has gone away."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            return False
        left = deadline - loop.time()
        if left <= 0:
            return True
        await asyncio.sleep(min(POLL_S, left))


def _dropped() -> web.StreamResponse:
    # The client is gone: nothing will be read. aiohttp discards what it cannot send.
    return web.Response(status=499)


def _content_type(body: str) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return "text/plain"
    return "application/json" if isinstance(parsed, dict | list) else "text/plain"


def _message(status: int, message: str, allow: str | None = None) -> web.Response:
    headers = {"Allow": allow} if allow else None
    return web.json_response({"message": message}, status=status, headers=headers)
