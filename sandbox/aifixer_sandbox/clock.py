"""Simulated time for the sandbox.

Timestamps the sandbox writes (creationTimestamp, event times, log times) are real
wall-clock UTC, so product code that compares them with its own clock sees nothing
odd. *Durations* the sandbox waits (image pulls, container start, crash back-off,
probe periods, progress deadlines) are simulated: at `speed=20` a 5-minute back-off
passes in 15 wall seconds. Only durations are scaled, never the calendar.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime


class Clock:
    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"clock speed must be > 0, got {speed!r}")
        self.speed = float(speed)
        self._t0 = time.monotonic()

    def now(self) -> datetime:
        """Wall-clock time (UTC) for timestamps."""
        return datetime.now(UTC)

    def sim(self) -> float:
        """Simulated seconds since the clock started; use for deadlines and durations."""
        return (time.monotonic() - self._t0) * self.speed

    async def sleep(self, sim_seconds: float) -> None:
        """Sleep for a simulated duration."""
        await asyncio.sleep(max(0.0, sim_seconds) / self.speed)

    def wall_seconds(self, sim_seconds: float) -> float:
        return max(0.0, sim_seconds) / self.speed


def rfc3339(dt: datetime) -> str:
    """Kubernetes' metav1.Time format: second precision, 'Z'."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(dt: datetime) -> str:
    """Kubernetes' metav1.MicroTime format (events.k8s.io eventTime)."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
