"""The one error contract: exceptions carry HTTP status and OpenAI error type; one mapper renders them."""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadRequest",
    "ContextLengthExceeded",
    "DeadlineExceeded",
    "Forbidden",
    "HeadersTooLarge",
    "ModelNotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "ServiceUnavailable",
    "SurgeError",
    "Unauthorized",
    "UnsupportedMediaType",
    "error_body",
]


class SurgeError(Exception):
    """An error a client should see as an OpenAI-style error body with `status`."""

    status: int = 500
    type: str = "internal_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = headers or {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Replicas raise these through Ray; keyword-only fields need explicit pickling.
        return (_rebuild, (type(self), self.message, self.param, self.code, self.headers))

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def _rebuild(
    cls: type[SurgeError], message: str, param: str | None, code: str | None, headers: dict[str, str]
) -> SurgeError:
    return cls(message, param=param, code=code, headers=headers)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class BadRequest(SurgeError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(SurgeError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class Forbidden(SurgeError):
    status = 403
    type = "permission_error"
    default_code = "model_not_allowed"


class ModelNotFound(SurgeError):
    status = 404
    type = "invalid_request_error"
    default_code = "model_not_found"


class ContextLengthExceeded(SurgeError):
    status = 413
    type = "invalid_request_error"
    default_code = "context_length_exceeded"


class PayloadTooLarge(SurgeError):
    """The body is over `ingress.limits.max_body_bytes`; refused before it is parsed."""

    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class RequestTimeout(SurgeError):
    """The body did not arrive within `ingress.limits.body_timeout_s`."""

    status = 408
    type = "invalid_request_error"
    default_code = "request_timeout"


class UnsupportedMediaType(SurgeError):
    status = 415
    type = "invalid_request_error"
    default_code = "unsupported_media_type"


class HeadersTooLarge(SurgeError):
    status = 431
    type = "invalid_request_error"
    default_code = "headers_too_large"


class RateLimited(SurgeError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class ServiceUnavailable(SurgeError):
    status = 503
    type = "service_unavailable_error"
    default_code = "overloaded"


class DeadlineExceeded(SurgeError):
    status = 504
    type = "timeout_error"
    default_code = "deadline_exceeded"
