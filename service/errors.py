"""Errors the service answers with: each maps to a 4xx status and a JSON body `{"error": {type, message}}`."""

from __future__ import annotations


class ServiceError(Exception):
    """An error caused by the request (or the server's load), never a bug: status is 4xx (or 503)."""

    status = 400
    type = "bad_request"

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    pass


class BadImage(ServiceError):
    type = "bad_image"


class UnsupportedMedia(ServiceError):
    status = 415
    type = "unsupported_media_type"


class PayloadTooLarge(ServiceError):
    status = 413
    type = "payload_too_large"


class Unauthorized(ServiceError):
    status = 401
    type = "unauthorized"


class NotFound(ServiceError):
    status = 404
    type = "not_found"


class Conflict(ServiceError):
    status = 409
    type = "conflict"


class Invalid(ServiceError):
    status = 422
    type = "invalid_request"


class Overloaded(ServiceError):
    status = 429
    type = "overloaded"


class NotReady(ServiceError):
    status = 503
    type = "not_ready"


class TimedOut(ServiceError):
    status = 503
    type = "timeout"
