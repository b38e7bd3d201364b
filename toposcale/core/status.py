"""metav1.Status: the body every error answer of the adapter and the extender carries, and the one aiohttp
middleware that turns a failed request into it.

Field names and reasons are k8s.io/apimachinery's (pkg/apis/meta/v1 types.go: Status, StatusReason), so a
client that reads apiserver errors (kubectl, client-go, kube-scheduler's extender client) reads ours.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

# metav1.StatusReason for each code a handler or aiohttp itself answers with
REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
    406: "NotAcceptable", 408: "Timeout", 409: "Conflict", 413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
    503: "ServiceUnavailable", 504: "Timeout",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def reason_for(code: int) -> str:
    """The StatusReason of `code`; an unlisted code is BadRequest (4xx) or InternalError (5xx)."""
    return REASONS.get(code, "InternalError" if code >= 500 else "BadRequest")


class StatusError(Exception):
    """An error a handler raises to be answered as a metav1.Status with `code` and `reason` (class attributes
    of the subclasses), `details` (metav1.StatusDetails: name, group, kind, when an object is named) and
    extra response `headers` (Retry-After, say)."""

    code = 500
    reason = "InternalError"

    def __init__(self, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.details = details
        self.headers = headers


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A metav1.Status document."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def status_json(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    """`status(...)` as JSON text."""
    return orjson.dumps(status(code, reason, message, details))


def status_response(code: int, reason: str, message: str, details: dict[str, Any] | None = None,
                    headers: dict[str, str] | None = None) -> web.Response:
    """A `code` answer carrying `status(...)`."""
    return web.Response(status=code, body=status_json(code, reason, message, details),
                        content_type="application/json", headers=headers)


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own error answers (404 unknown path, 405 wrong method, 413 body too large, ...) as a
    Status; a 405 keeps its Allow header."""
    path = request.path[:200]
    if exc.status == 404:
        message = f"the server could not find the requested resource ({request.method} {path})"
    elif exc.status == 405:
        message = f"{request.method} is not supported here ({path})"
    else:
        message = f"{request.method} {path}: {exc.reason}"
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return status_response(exc.status, reason_for(exc.status), message, headers=headers)


def status_middleware(
    logger: logging.Logger,
    *,
    on_answer: Callable[[web.Request, web.StreamResponse, float], None] | None = None,
    internal_detail: bool = False,
) -> Any:
    """The error middleware: a `StatusError` is answered with its code, reason and details; aiohttp's own
    HTTP errors with their code and StatusReason; any other exception (a bug in a handler) is logged with
    its traceback and answered 500 InternalError, and the service keeps serving. The message of a 500 names
    the exception's type, and with `internal_detail` also its text. A client gone away (ConnectionError,
    cancellation) is not answered. `on_answer(request, response, seconds)` sees every answer (request
    metrics)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        response: web.StreamResponse
        try:
            response = await handler(request)
        except StatusError as exc:
            response = status_response(exc.code, exc.reason, str(exc), exc.details, exc.headers)
            level = logging.WARNING if exc.code >= 500 or exc.code == 429 else logging.INFO
            logger.log(level, "request failed", extra={
                "path": request.path[:200], "code": exc.code, "reason": exc.reason, "error": str(exc)[:500]})
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _http_error(request, exc)
            logger.info("request failed", extra={
                "path": request.path[:200], "code": exc.status, "reason": reason_for(exc.status)})
        except (asyncio.CancelledError, ConnectionError):
            raise  # the caller went away: aiohttp closes the connection, nobody reads an answer
        except Exception as exc:
            logger.exception("internal error", extra={"path": request.path[:200]})
            what = f"{type(exc).__name__}: {exc}" if internal_detail else type(exc).__name__
            response = status_response(500, "InternalError", f"internal error: {what}")
        if on_answer is not None:
            on_answer(request, response, time.perf_counter() - start)
        return response

    return middleware
