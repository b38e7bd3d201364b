"""Errors the API turns into metav1.Status answers (code and reason as the Kubernetes apiserver uses them)."""

from __future__ import annotations

from typing import Any


class AdapterError(Exception):
    code = 500
    reason = "InternalError"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details  # metav1.StatusDetails (name, group, kind), when there is a named object


class BadRequest(AdapterError):
    code = 400
    reason = "BadRequest"


class NotFound(AdapterError):
    code = 404
    reason = "NotFound"


class SourceUnavailable(AdapterError):
    """The source is down, timed out, answered garbage, or its data is stale or undefined: never a made-up
    0."""

    code = 503
    reason = "ServiceUnavailable"


class TooManyRequests(AdapterError):
    code = 429
    reason = "TooManyRequests"
