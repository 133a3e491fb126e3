"""The simulated API's error envelope: ``{statusCode, error, message}`` with pinned reason phrases.

Every error the simulator returns has exactly these three fields (API reference §1.4).
State operations raise :class:`ApiError`; the app turns it into a response.
"""

from __future__ import annotations

from typing import Any

REASONS: dict[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

MSG_MISSING_AUTH = "Missing Authorization header"
MSG_INVALID_AUTH = "Invalid authorization header"
MSG_NO_PLAN = "Workspace does not have an active paid plan"
MSG_NOT_FOUND = "Resource not found"
MSG_RATE_LIMITED = "Rate limit exceeded"
MSG_GROUP_CONFLICT = "The sub workspace already has an active parent or invitation"
MSG_SERVER_ERROR = "Internal server error"


def error_body(status: int, message: str) -> dict[str, Any]:
    """Build the three-field error body for ``status``."""
    return {"statusCode": status, "error": REASONS.get(status, "Error"), "message": message}


class ApiError(Exception):
    """An error the simulated API answers with: HTTP ``status`` and the envelope's ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        return error_body(self.status, self.message)


def not_found() -> ApiError:
    """The documented 404 (``Resource not found``)."""
    return ApiError(404, MSG_NOT_FOUND)


def bad_request(message: str) -> ApiError:
    """A 400 with an AJV-style validation message."""
    return ApiError(400, message)
