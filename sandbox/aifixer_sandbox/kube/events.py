"""Events as client-go's event recorder writes them.

Controllers, the scheduler and the kubelet all report through one recorder. Like
client-go's EventCorrelator, an identical event (same object, field path, reason,
message, type and source) is not written twice: the stored Event's `count` grows and
its `lastTimestamp` moves, which is what `kubectl describe` shows as "(x5 over 2m)".
"""

from __future__ import annotations

import secrets
from typing import Any

from ..clock import Clock, rfc3339
from .resources import core
from .store import Store

EVENTS = core("events")


class EventRecorder:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._seen: dict[tuple, tuple[str, str]] = {}  # aggregation key -> (namespace, name)

    def record(
        self,
        obj: dict[str, Any],
        type_: str,
        reason: str,
        message: str,
        component: str,
        *,
        field_path: str = "",
        host: str = "",
    ) -> dict[str, Any]:
        """Record an event about `obj` (any stored object). Returns the stored Event."""
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        key = (meta.get("uid"), field_path, reason, message, type_, component)
        now = rfc3339(self.clock.now())
        existing = self._seen.get(key)
        if existing is not None:
            ev = self.store.try_get(EVENTS, *existing)
            if ev is not None:
                ev = self.store.copy(ev)
                ev["count"] = ev.get("count", 1) + 1
                ev["lastTimestamp"] = now
                ev["metadata"].pop("resourceVersion", None)
                return self.store.update(EVENTS, ev)
        involved = {
            "kind": obj.get("kind"),
            "namespace": meta.get("namespace"),
            "name": meta.get("name"),
            "uid": meta.get("uid"),
            "apiVersion": obj.get("apiVersion"),
            "resourceVersion": meta.get("resourceVersion"),
        }
        if field_path:
            involved["fieldPath"] = field_path
        source = {"component": component}
        if host:
            source["host"] = host
        event = {
            "metadata": {
                # client-go names events "<object>.<hex unix nanos>"; unique is what matters.
                "name": f"{meta.get('name')}.{secrets.token_hex(8)}",
                "namespace": namespace,
            },
            "involvedObject": {k: v for k, v in involved.items() if v is not None},
            "reason": reason,
            "message": message,
            "source": source,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": type_,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": host,
        }
        stored = self.store.create(EVENTS, event)
        self._seen[key] = (namespace, stored["metadata"]["name"])
        return stored
