"""API errors: one exception type per failure kind, mapped to a code in one place.

On the wire an error is a reply with the NATS micro headers `Nats-Service-Error-Code`
and `Nats-Service-Error`, and the body `{"error": {"code", "message", "details"}}`.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error the API reports to its caller; `code` is HTTP-like."""

    code = 500

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.message!r})"


class BadRequest(ApiError):
    """Malformed JSON, wrong types, invalid values, oversized bodies."""

    code = 400


class Forbidden(ApiError):
    """The caller may not do this (permissions, another org)."""

    code = 403


class NotFound(ApiError):
    """An unknown id."""

    code = 404


class Conflict(ApiError):
    """A stale version, a linked or enabled definition, a finished execution."""

    code = 409


class Busy(ApiError):
    """Too much at once: this org's share is used up for now (try again later)."""

    code = 429


class Timeout(ApiError):
    """Nobody answered in time."""

    code = 504


class Unavailable(ApiError):
    """No service is answering on the subject, or a dependency is down."""

    code = 503


class InternalError(ApiError):
    code = 500


_BY_CODE: dict[int, type[ApiError]] = {
    cls.code: cls for cls in (BadRequest, Forbidden, NotFound, Conflict, Busy, Timeout, Unavailable, InternalError)
}


def from_code(code: int, message: str, details: dict[str, Any] | None = None) -> ApiError:
    """The ApiError subclass for a wire code (unknown codes become a plain ApiError)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        err = ApiError(message, details)
        err.code = code
        return err
    return cls(message, details)
