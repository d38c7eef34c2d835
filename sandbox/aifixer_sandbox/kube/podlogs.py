"""Container logs as the kubelet keeps them, for `GET .../pods/NAME/log`.

The kubelet keeps the current and the previous instance of each container's log;
`previous=true` reads the one before the last restart, as `kubectl logs --previous`
does. Each line carries its wall-clock timestamp for `sinceSeconds`/`sinceTime`,
`timestamps=true` and `tailLines`. Buffers are bounded per container.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from . import errors

MAX_LINES = 5_000


@dataclass
class _Instance:
    lines: deque[tuple[datetime, str]] = field(default_factory=lambda: deque(maxlen=MAX_LINES))


@dataclass
class _Container:
    current: _Instance | None = None
    previous: _Instance | None = None
    waiters: set[asyncio.Event] = field(default_factory=set)


class PodLogs:
    def __init__(self) -> None:
        self._containers: dict[tuple[str, str, str], _Container] = {}

    def start_instance(self, namespace: str, pod: str, container: str) -> None:
        """A container (re)started: the current log becomes the previous one."""
        c = self._containers.setdefault((namespace, pod, container), _Container())
        if c.current is not None:
            c.previous = c.current
        c.current = _Instance()

    def append(self, namespace: str, pod: str, container: str, when: datetime, line: str) -> None:
        c = self._containers.setdefault((namespace, pod, container), _Container())
        if c.current is None:
            c.current = _Instance()
        c.current.lines.append((when, line))
        for ev in c.waiters:
            ev.set()

    def forget_pod(self, namespace: str, pod: str) -> None:
        for key in [k for k in self._containers if k[0] == namespace and k[1] == pod]:
            del self._containers[key]

    def has_started(self, namespace: str, pod: str, container: str) -> bool:
        c = self._containers.get((namespace, pod, container))
        return c is not None and c.current is not None

    def read(
        self,
        namespace: str,
        pod: str,
        container: str,
        *,
        previous: bool = False,
        tail_lines: int | None = None,
        since: datetime | None = None,
        timestamps: bool = False,
        limit_bytes: int | None = None,
    ) -> str:
        """The log text, or the kubelet's 400 when there is nothing to read."""
        c = self._containers.get((namespace, pod, container))
        inst = None if c is None else (c.previous if previous else c.current)
        if inst is None:
            if previous:
                raise errors.bad_request(
                    f'previous terminated container "{container}" in pod "{pod}" not found'
                )
            raise errors.bad_request(
                f'container "{container}" in pod "{pod}" is waiting to start: ContainerCreating'
            )
        lines = list(inst.lines)
        if since is not None:
            lines = [(t, s) for t, s in lines if t >= since]
        if tail_lines is not None:
            lines = lines[-tail_lines:] if tail_lines > 0 else []
        text = "".join((f"{_ts(t)} {s}\n" if timestamps else f"{s}\n") for t, s in lines)
        if limit_bytes is not None:
            text = text.encode()[:limit_bytes].decode(errors="ignore")
        return text

    async def wait_for_more(self, namespace: str, pod: str, container: str, timeout: float) -> bool:
        """Wait until a line is appended (for `follow=true`); False on timeout."""
        c = self._containers.setdefault((namespace, pod, container), _Container())
        ev = asyncio.Event()
        c.waiters.add(ev)
        try:
            await asyncio.wait_for(ev.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            c.waiters.discard(ev)


def _ts(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
