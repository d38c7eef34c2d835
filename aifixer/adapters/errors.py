"""The two errors every adapter raises, decided once at the border.

Transient: the same call may succeed later (connection refused or reset, timeouts,
HTTP 5xx, 429 with its Retry-After). Permanent: it will not (other 4xx, a payload the
other side refuses, a model reply that does not validate). Tasks retry the first with
backoff and a bound, and fail the second at once.
"""

from __future__ import annotations

from ..redact import redact


class AdapterError(Exception):
    """An outside system's failure, its message redacted: it may quote a response body,
    and it travels on — into the incident record, the logs, Celery's retry events
    (what Flower shows) and the call's speech."""

    def __init__(self, system: str, message: str, *, status: int | None = None) -> None:
        message = redact(message)
        super().__init__(f"{system}: {message}")
        self.system = system
        self.message = message
        self.status = status


class TransientError(AdapterError):
    def __init__(self, system: str, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(system, message, status=status)
        # What the service asked for, as sent (it may be huge, or inf): the tasks clamp it.
        self.retry_after = retry_after if retry_after is None or retry_after >= 0 else None


class PermanentError(AdapterError):
    pass


class Conflict(PermanentError):
    """Someone else changed the object since it was read: aifixer must not overwrite it."""

    def __init__(self, system: str, message: str) -> None:
        super().__init__(system, message, status=409)


def is_transient_status(status: int) -> bool:
    return status == 429 or status >= 500


def bounded(text: str, limit: int = 500) -> str:
    """Response bodies in errors and logs are cut: they can be large and are not ours."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more bytes)"
