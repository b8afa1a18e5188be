"""Control plane errors: every failure a handler can raise, rendered as one JSON shape.

The tree, drawn once::

    ApiError                      status  code
    ├── BadRequestError            400    bad_request        (malformed JSON, bad query value)
    ├── UnauthorizedError          401    unauthorized       (missing, unknown or revoked token)
    ├── ForbiddenError             403    forbidden          (role or scope does not allow it)
    ├── NotFoundError              404    not_found          (absent, or in another tenant)
    ├── MethodNotAllowedError      405    method_not_allowed
    ├── ConflictError              409    conflict           (immutable, duplicate, stale)
    │   └── IdempotencyKeyInProgressError  idempotency_key_in_progress  (same key still running)
    ├── PayloadTooLargeError       413    payload_too_large  (names the limit)
    ├── UnsupportedMediaTypeError  415    unsupported_media_type
    ├── UnprocessableError         422    invalid            (schema, unknown field, bad signature)
    │   ├── IdempotencyKeyReusedError       idempotency_key_reused  (same key, other request)
    │   └── IdempotencyKeyUnsupportedError  idempotency_key_unsupported  (shows a secret once)
    └── RateLimitedError           429    rate_limited       (carries Retry-After)

Each error carries structured fields (``code``, ``message``, ``field``, ``details``); the
response adds the request id.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ApiError(Exception):
    """Base of every error a handler raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details or {}
        self.headers = headers or {}

    def body(self, request_id: str) -> dict[str, Any]:
        """The JSON error document for this error."""
        error: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "request_id": request_id,
        }
        if self.field is not None:
            error["field"] = self.field
        if self.details:
            error["details"] = self.details
        return {"error": error}


class BadRequestError(ApiError):
    status = 400
    code = "bad_request"


class UnauthorizedError(ApiError):
    status = 401
    code = "unauthorized"


class ForbiddenError(ApiError):
    status = 403
    code = "forbidden"


class NotFoundError(ApiError):
    status = 404
    code = "not_found"


class MethodNotAllowedError(ApiError):
    status = 405
    code = "method_not_allowed"


class ConflictError(ApiError):
    status = 409
    code = "conflict"


class PayloadTooLargeError(ApiError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(ApiError):
    status = 415
    code = "unsupported_media_type"


class IdempotencyKeyInProgressError(ConflictError):
    code = "idempotency_key_in_progress"


class UnprocessableError(ApiError):
    status = 422
    code = "invalid"


class IdempotencyKeyReusedError(UnprocessableError):
    code = "idempotency_key_reused"


class IdempotencyKeyUnsupportedError(UnprocessableError):
    code = "idempotency_key_unsupported"


class RateLimitedError(ApiError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(
            message, details={"retry_after": retry_after}, headers={"Retry-After": str(retry_after)}
        )
