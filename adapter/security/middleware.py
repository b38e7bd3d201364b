"""aiohttp middleware: bound in-flight requests, authenticate, authorize, then hand over to the handler.

Order and answers follow k8s.io/apiserver's filter chain: max-in-flight (429) -> authentication (401,
metav1.Status `Unauthorized`) -> authorization (403 naming the user and what they may not do; 500 when the
SubjectAccessReview cannot be made). Requests without credentials to an always-allowed path (/healthz, /livez,
/readyz) pass as system:anonymous. Identity headers (X-Remote-*) and Authorization never reach the handler.
The handler finds the user in `request["user"]`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDict

from toposcale.core.status import status_response

from .authconfig import DEFAULT_EXTRA_HEADER_PREFIXES, DEFAULT_GROUP_HEADERS, DEFAULT_USERNAME_HEADERS
from .authn import ANONYMOUS_USER, AuthenticationError, Authenticator, UserInfo
from .authz import AuthorizationError, Authorizer, Decision, forbidden_status
from .metrics import SecurityMetrics
from .requestinfo import request_info

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
USER_KEY = web.RequestKey("toposcale_user", UserInfo)  # request[USER_KEY]: who is asking


def _peer_certificate(request: web.Request) -> bytes | None:
    transport = request.transport
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    if sslobj is None:
        return None
    return sslobj.getpeercert(binary_form=True)


class SecurityFilter:
    """The state the middleware needs; `insecure_allow_anonymous=True` skips authentication and
    authorization."""

    def __init__(self, authenticator: Authenticator | None, authorizer: Authorizer | None,
                 metrics: SecurityMetrics, *, insecure_allow_anonymous: bool = False,
                 max_requests_inflight: int = 400) -> None:
        if not insecure_allow_anonymous and (authenticator is None or authorizer is None):
            raise ValueError("an authenticator and an authorizer are required unless anonymous access is "
                             "enabled")
        self.authenticator = authenticator
        self.authorizer = authorizer
        self.metrics = metrics
        self.insecure_allow_anonymous = insecure_allow_anonymous
        self.max_requests_inflight = max_requests_inflight
        self.inflight = 0

    def _identity_headers(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        names = DEFAULT_USERNAME_HEADERS + DEFAULT_GROUP_HEADERS + ("x-remote-uid", "authorization")
        prefixes = DEFAULT_EXTRA_HEADER_PREFIXES
        if self.authenticator is not None:
            rh = self.authenticator.sources().request_header
            if rh is not None:
                n, p = rh.all_header_names()
                names, prefixes = names + n, prefixes + p
        return tuple(x.lower() for x in names), tuple(x.lower() for x in prefixes)

    def _scrubbed(self, request: web.Request) -> web.Request:
        names, prefixes = self._identity_headers()
        if not any(k.lower() in names or k.lower().startswith(prefixes) for k in request.headers):
            return request
        kept = CIMultiDict((k, v) for k, v in request.headers.items()
                           if k.lower() not in names and not k.lower().startswith(prefixes))
        return request.clone(headers=kept)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.inflight >= self.max_requests_inflight:
            self.metrics.rejected.labels("inflight").inc()
            return status_response(429, "TooManyRequests", "Too many requests, please try again later.",
                                   headers={"Retry-After": "1"})
        self.inflight += 1
        try:
            return await self._handle(request, handler)
        finally:
            self.inflight -= 1

    async def _handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.insecure_allow_anonymous:
            scrubbed = self._scrubbed(request)
            scrubbed[USER_KEY] = ANONYMOUS_USER
            return await handler(scrubbed)
        assert self.authenticator is not None and self.authorizer is not None
        try:
            info = request_info(request.method, request.path, request.query)
        except ValueError as exc:
            return status_response(400, "BadRequest", str(exc))
        try:
            user: UserInfo | None = await self.authenticator.authenticate(request.headers,
                                                                          _peer_certificate(request))
        except AuthenticationError as exc:
            self.metrics.authentication.labels("failure", "").inc()
            logger.warning("unable to authenticate the request", extra={
                "path": request.path, "peer": request.remote, "error": str(exc)})
            return status_response(401, "Unauthorized", "Unauthorized")
        if user is None:
            if not self.authorizer.always_allowed_path(info):
                self.metrics.authentication.labels("none", "").inc()
                logger.info("request without credentials",
                            extra={"path": request.path, "peer": request.remote})
                return status_response(401, "Unauthorized", "Unauthorized")
            user = ANONYMOUS_USER
        else:
            self.metrics.authentication.labels("success", user.method).inc()
        try:
            decision, reason, source = await self.authorizer.authorize(user, info)
        except (TimeoutError, AuthorizationError) as exc:
            self.metrics.authorization.labels("error", "webhook").inc()
            logger.error("authorization failed", extra={"user": user.name, "path": request.path,
                                                        "error": str(exc)})
            return status_response(500, "InternalError", f"Internal Server Error: {request.path!r}: {exc}")
        if decision is not Decision.ALLOW:
            self.metrics.authorization.labels("deny", source).inc()
            body = forbidden_status(user, info, reason)
            logger.info("forbidden", extra={"user": user.name, "groups": list(user.groups), "verb": info.verb,
                                            "path": request.path, "reason": reason, "source": source})
            return web.json_response(body, status=403)
        self.metrics.authorization.labels("allow", source).inc()
        scrubbed = self._scrubbed(request)
        scrubbed[USER_KEY] = user
        return await handler(scrubbed)
