"""The two errors every adapter raises, decided once at the border.

Transient: the same call may succeed later (connection refused or reset, timeouts,
HTTP 5xx, 429 with its Retry-After). Permanent: it will not (other 4xx, a payload the
other side refuses, a model reply that does not validate). Tasks retry the first with
backoff and a bound, and fail the second at once.
"""

from __future__ import annotations

from typing import Any

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
    def __init__(
        self,
        system: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(system, message, status=status)
        # What the service asked for, as sent (it may be huge, or inf): the tasks clamp it.
        self.retry_after = retry_after if retry_after is None or retry_after >= 0 else None


class PermanentError(AdapterError):
    pass


class Unproven(PermanentError):
    """A fix verified in the cluster whose GitOps change could not be proven by rendering
    the repository (kustomize, Helm): no edit found makes the rendered Deployment carry
    exactly the fix. Not to be proposed as a normal pull request; `explanation` and
    `hand_edits` say what a person must edit."""

    def __init__(self, system: str, explanation: str, hand_edits: list[str]) -> None:
        super().__init__(system, explanation)
        self.explanation = self.message
        self.hand_edits = [redact(h) for h in hand_edits]


class Conflict(PermanentError):
    """Someone else changed the object since it was read: aifixer must not overwrite it."""

    def __init__(self, system: str, message: str) -> None:
        super().__init__(system, message, status=409)


def is_transient_status(status: int) -> bool:
    return status == 429 or status >= 500


def bounded(text: str, limit: int = 500) -> str:
    """Response bodies in errors and logs are cut: they can be large and are not ours."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more bytes)"


def retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds; None when absent or an HTTP date (the backoff decides)."""
    try:
        return float(value) if value else None
    except ValueError:
        return None


def get_json(http: Any, system: str, url: str, params: Any, timeout: float) -> Any:
    """GET `url` with a `requests` session and return its JSON, errors decided here.

    Raises:
        TransientError: unreachable, timed out, 5xx or 429 (with its Retry-After), or
            a body that is not JSON.
        PermanentError: any other refusal (a 400 for a query it cannot parse...), with
            the service's own words.
    """
    import requests

    try:
        resp = http.get(url, params=params, timeout=timeout)
    except requests.Timeout as exc:
        raise TransientError(system, f"timed out after {timeout}s: {exc}") from exc
    except requests.RequestException as exc:
        raise TransientError(system, f"cannot reach {url}: {exc}") from exc
    if resp.status_code >= 300:
        message = bounded(resp.text.strip()) or resp.reason
        if is_transient_status(resp.status_code):
            raise TransientError(
                system,
                message,
                status=resp.status_code,
                retry_after=retry_after(resp.headers.get("Retry-After")),
            )
        raise PermanentError(system, message, status=resp.status_code)
    try:
        return resp.json()
    except ValueError as exc:
        raise TransientError(system, f"not JSON: {bounded(resp.text)}") from exc
