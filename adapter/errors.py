"""Errors the API turns into metav1.Status answers (code and reason as the Kubernetes apiserver uses them;
the kit's error middleware, toposcale.core.status, answers them)."""

from __future__ import annotations

from toposcale.core.status import StatusError


class AdapterError(StatusError):
    """`details`: metav1.StatusDetails (name, group, kind), when there is a named object."""

    code = 500
    reason = "InternalError"


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
