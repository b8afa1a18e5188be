"""Tool errors: how a control-plane call fails, as the tools see it (tools → control plane).

The tree, drawn once::

    ControlPlaneError               status     code (the control plane's, or ours)
    ├── ControlPlaneUnavailableError     —, 5xx     unavailable  (refused, timed out, server error)
    ├── NotAllowedError                  401, 403   unauthorized, forbidden  (carries the reason)
    ├── NotFoundError                    404        not_found
    ├── ConflictError                    409        conflict  (``details`` holds failed gates, …)
    └── InvalidError                     400, 405, 413, 415, 422 and bad arguments caught locally

A 429 (the control plane's per-principal rate limit) stays a plain ``ControlPlaneError``
with ``details["retry_after"]``: it is neither a fault to retry at once nor the caller's
mistake. Messages are the control plane's own words or ours; none ever holds a token.
"""

from __future__ import annotations

from typing import Any


class ControlPlaneError(Exception):
    """Base of every failure of a control-plane call."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        field: str | None = None,
        details: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        """A sentence fit for the person (the control plane's ``message`` when it sent one)."""
        self.status = status
        """The HTTP status, or None when no response arrived."""
        self.code = code
        """The control plane's error code (``forbidden``, ``conflict``…) or ``unavailable``."""
        self.field = field
        """The request field or header the error is about, if any."""
        self.details = details or {}
        """Structured extras: the deciding rule of a denial, the gates of a refused promote."""
        self.request_id = request_id
        """The correlation id sent as ``X-Request-Id``; quote it to find the audit events."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, request_id={self.request_id!r})"
        )


class ControlPlaneUnavailableError(ControlPlaneError):
    """No usable answer: connection refused, timed out, or a 5xx."""


class NotAllowedError(ControlPlaneError):
    """401 or 403; ``message`` is the control plane's reason (``details["rule"]`` decides)."""


class NotFoundError(ControlPlaneError):
    """404: no such object, or one outside the acting principal's tenant."""


class ConflictError(ControlPlaneError):
    """409: stale, duplicate or refused by a gate; ``details`` says which."""


class InvalidError(ControlPlaneError):
    """The request was malformed (400, 422 and the like, or refused before sending)."""


def error_for(
    status: int, body: Any, request_id: str | None, *, fallback: str
) -> ControlPlaneError:
    """The error a failed response stands for, from its ``{"error": {...}}`` document.

    Args:
        status: The HTTP status (>= 400).
        body: The decoded JSON body, or None when it was not JSON.
        request_id: The request id the response echoed (or the one sent).
        fallback: The message to use when the body carries none.
    """
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {}
    kind: type[ControlPlaneError]
    if status >= 500:
        kind = ControlPlaneUnavailableError
    elif status in (401, 403):
        kind = NotAllowedError
    elif status == 404:
        kind = NotFoundError
    elif status == 409:
        kind = ConflictError
    elif status == 429:
        kind = ControlPlaneError
    else:
        kind = InvalidError
    details = error.get("details")
    return kind(
        str(error.get("message") or fallback),
        status=status,
        code=str(error.get("code") or ("unavailable" if status >= 500 else "error")),
        field=error.get("field") if isinstance(error.get("field"), str) else None,
        details=details if isinstance(details, dict) else None,
        request_id=str(error.get("request_id") or request_id or "") or None,
    )
