"""API errors as the Kubernetes API server reports them: `Status` objects.

Every failure the stand-in can produce is one of these, raised anywhere below the HTTP
layer and rendered once by it, so a client sees the same `reason`, `code` and `message`
text the real server would send (e.g. `deployments.apps "web" not found`).
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        """The `Status` body, in the real server's field order.

        `details` is there exactly when the real server's constructor sets it (a pointer in
        Go: `{}` when every field is empty), and its empty fields are left out as Go's
        `omitempty` leaves them: a core-group NotFound has no `group`. Clients read it
        unguarded: kubectl debug dereferences `details.name` of a 404.
        """
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            body["details"] = {k: v for k, v in self.details.items() if v not in ("", None, [], 0)}
        body["code"] = self.code
        return body


# The reason and message the API server sends with a bare status code
# (`k8s.io/apimachinery/pkg/api/errors` and `apiserver/pkg/endpoints/handlers/responsewriters`).
FOR_CODE: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "the server rejected our request for an unknown reason"),
    401: ("Unauthorized", "Unauthorized"),
    403: ("Forbidden", "forbidden"),
    404: ("NotFound", "the server could not find the requested resource"),
    405: ("MethodNotAllowed", "the server does not allow this method on the requested resource"),
    409: ("Conflict", "the server reported a conflict"),
    410: ("Expired", "the resource has expired"),
    413: ("RequestEntityTooLarge", "request entity too large"),
    415: ("UnsupportedMediaType", "the server does not support the media type"),
    422: ("Invalid", "the server rejected our request due to an error in our request"),
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "an error on the server has prevented the request from succeeding"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: ("Timeout", "the server was unable to return a response in the time allotted"),
}


# Codes whose Status the real server sends without `details` (NewBadRequest, NewUnauthorized,
# NewGone, NewResourceExpired, NewRequestEntityTooLargeError, the 415 of content negotiation,
# NewServiceUnavailable); every other code's constructor sets them.
_NO_DETAILS = (400, 401, 410, 413, 415, 503)


def generic(code: int, retry_after: int | None = None) -> ApiError:
    """The status a bare code gets (NewGenericServerResponse, as the server's route-not-found
    and method-not-allowed handlers send it): details `{}` naming no object."""
    reason, message = FOR_CODE.get(code, ("", f"the server responded with the status code {code}"))
    details = None if code in _NO_DETAILS and retry_after is None else {}
    if retry_after is not None:
        details = {"retryAfterSeconds": retry_after}
    return ApiError(code, reason, message, details)


def internal(exc: BaseException) -> ApiError:
    return ApiError(
        500, "InternalError", f"Internal error occurred: {exc}", {"causes": [{"message": str(exc)}]}
    )


def _qualified(group: str, plural: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{_qualified(group, plural)} "{name}" not found',
        {"name": name, "group": group, "kind": plural},
    )


def already_exists(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{_qualified(group, plural)} "{name}" already exists',
        {"name": name, "group": group, "kind": plural},
    )


def conflict(group: str, plural: str, name: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(group, plural)} "{name}": {why}',
        {"name": name, "group": group, "kind": plural},
    )


def invalid(group: str, kind: str, name: str, causes: list[dict[str, str]]) -> ApiError:
    """422 Invalid. `causes` items: {"reason": "FieldValueRequired", "message": ..., "field": ...}."""
    qualified_kind = f"{kind}.{group}" if group else kind
    parts = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes]
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{qualified_kind} "{name}" is invalid: {summary}',
        {"name": name, "group": group, "kind": kind, "causes": causes},
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def method_not_allowed(
    message: str = "the server does not allow this method on the requested resource",
) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message, {})


def unsupported_media_type(accepted: list[str]) -> ApiError:
    """The 415 of content negotiation (`negotiation.NewUnsupportedMediaTypeError`)."""
    return ApiError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(accepted),
    )
