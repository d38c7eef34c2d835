"""One module per outside system; the only place its SDK is imported.

Each adapter translates its SDK's exceptions at the border into `TransientError`
(worth retrying: connection errors, timeouts, 5xx, 429) or `PermanentError` (retrying
cannot help: 4xx, invalid data), so no `ApiException`, `GithubException` or
`TwilioRestException` travels past it.
"""

from .errors import AdapterError, PermanentError, TransientError

__all__ = ["AdapterError", "PermanentError", "TransientError"]
