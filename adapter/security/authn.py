"""Delegated authentication, as k8s.io/apiserver's `DelegatingAuthenticatorConfig.New()` builds it.

A union, tried in order, the first success wins: front-proxy request-header (client cert from the
request-header CA with an allowed CN, identity from X-Remote-User / X-Remote-Group / X-Remote-Extra-*), then
client certificates from the cluster client CA (user = CN, groups = O), then bearer tokens checked with a
TokenReview (answers cached for `cache_ttl`, 10 s by default as `--authentication-token-webhook-cache-ttl`).
Authenticated users get the `system:authenticated` group. No credentials at all -> None (the caller answers
401); credentials that fail -> AuthenticationError. Identity headers count only behind a verified front-proxy
certificate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .authconfig import AuthnSources, RequestHeaderConfig
from .cache import ExpiringLRU
from .clientcert import (
    CABundle,
    CertificateError,
    common_name,
    load_leaf,
    organizations,
    verify_client_certificate,
)

ALL_AUTHENTICATED = "system:authenticated"
ALL_UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = "system:anonymous"


@dataclass(frozen=True)
class UserInfo:
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    method: str = ""  # how the user was authenticated: requestheader, x509, token, anonymous

    def with_authenticated_group(self) -> UserInfo:
        if self.name == ANONYMOUS or ALL_AUTHENTICATED in self.groups or ALL_UNAUTHENTICATED in self.groups:
            return self
        return UserInfo(self.name, self.uid, (*self.groups, ALL_AUTHENTICATED), self.extra, self.method)


ANONYMOUS_USER = UserInfo(ANONYMOUS, groups=(ALL_UNAUTHENTICATED,), method="anonymous")


class AuthenticationError(Exception):
    """Credentials were presented and none of them proved an identity."""


@dataclass(frozen=True)
class TokenReviewResult:
    authenticated: bool
    user: UserInfo | None = None
    error: str = ""


TokenReviewer = Callable[[str], Awaitable[TokenReviewResult]]


class Headers(Protocol):
    def getall(self, key: str, default: list[str]) -> list[str]: ...
    def items(self) -> Iterable[tuple[str, str]]: ...


def _first_value(headers: Headers, names: Iterable[str]) -> str:
    for name in names:
        for value in headers.getall(name, []):
            if value:
                return value
            break  # Go's Header.Get looks at the first value only
    return ""


def _all_values(headers: Headers, names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        out.extend(v for v in headers.getall(name, []) if v)
    return out


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _unescape_extra_key(encoded: str) -> str:
    """url.PathUnescape; a malformed key is kept as sent (apiserver records extras even when mis-encoded)."""
    if _BAD_ESCAPE.search(encoded):
        return encoded
    try:
        return urllib.parse.unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        return encoded


def _extra(headers: Headers, prefixes: Iterable[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    items = list(headers.items())
    for prefix in prefixes:
        low = prefix.lower()
        for name, value in items:
            if len(name) >= len(prefix) and name[: len(prefix)].lower() == low:
                out.setdefault(_unescape_extra_key(name[len(prefix):].lower()), []).append(value)
    return {k: tuple(v) for k, v in out.items()}


def authenticate_request_header(headers: Headers, leaf_der: bytes | None, cfg: RequestHeaderConfig,
                                now: dt.datetime) -> UserInfo | None:
    """headerrequest.NewDynamicVerifyOptionsSecure: verify the cert, its CN, then read the identity headers.
    None when there is no certificate or no username header; CertificateError when the cert is not trusted."""
    if leaf_der is None:
        return None
    leaf = load_leaf(leaf_der)
    verify_client_certificate(leaf, cfg.client_ca, now)
    if cfg.allowed_names and common_name(leaf) not in cfg.allowed_names:
        raise CertificateError(f"x509: subject with cn={common_name(leaf)} is not in the allowed list")
    name = _first_value(headers, cfg.username_headers)
    if not name:
        return None
    return UserInfo(name=name, uid=_first_value(headers, cfg.uid_headers),
                    groups=tuple(_all_values(headers, cfg.group_headers)),
                    extra=_extra(headers, cfg.extra_header_prefixes), method="requestheader")


def authenticate_x509(leaf_der: bytes | None, bundle: CABundle | None, now: dt.datetime) -> UserInfo | None:
    """x509.CommonNameUserConversion: user from CN, groups from O."""
    if leaf_der is None or bundle is None:
        return None
    leaf = load_leaf(leaf_der)
    verify_client_certificate(leaf, bundle, now)
    cn = common_name(leaf)
    if not cn:
        return None
    return UserInfo(name=cn, groups=tuple(organizations(leaf)), method="x509")


class InvalidBearer(AuthenticationError):
    pass


def bearer_token(headers: Headers) -> str | None:
    """bearertoken.go: `Authorization: Bearer <token>` (scheme case-insensitive); None when absent or another
    scheme; InvalidBearer for an empty token."""
    auth = _first_value(headers, ["Authorization"]).strip()
    if not auth:
        return None
    parts = auth.split(" ", 2)
    if len(parts) < 2 or parts[0].lower() != "bearer":
        return None
    if not parts[1]:
        raise InvalidBearer("invalid bearer token")
    return parts[1]


class Authenticator:
    def __init__(self, sources: Callable[[], AuthnSources], token_reviewer: TokenReviewer | None, *,
                 cache_ttl: float = 10.0, cache_entries: int = 8192,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.sources = sources
        self.token_reviewer = token_reviewer
        self.cache_ttl = cache_ttl
        self.token_cache: ExpiringLRU[TokenReviewResult] = ExpiringLRU(cache_entries)
        self._now = now

    async def authenticate(self, headers: Headers, leaf_der: bytes | None) -> UserInfo | None:
        src = self.sources()
        now = self._now()
        errors: list[str] = []
        if src.request_header is not None:
            try:
                user = authenticate_request_header(headers, leaf_der, src.request_header, now)
                if user is not None:
                    return user.with_authenticated_group()
            except CertificateError as exc:
                errors.append(f"request-header: {exc}")
        if src.client_ca is not None:
            try:
                user = authenticate_x509(leaf_der, src.client_ca, now)
                if user is not None:
                    return user.with_authenticated_group()
            except CertificateError as exc:
                errors.append(f"x509: {exc}")
        try:
            token = bearer_token(headers)
        except InvalidBearer as exc:
            errors.append(str(exc))
            token = None
        if token is not None:
            try:
                user = await self._token(token)
                return user.with_authenticated_group()
            except AuthenticationError as exc:
                errors.append(f"token: {exc}")
        if errors:
            raise AuthenticationError("; ".join(errors))
        return None

    async def _token(self, token: str) -> UserInfo:
        if self.token_reviewer is None:
            raise AuthenticationError("bearer tokens are not accepted: no TokenReview client configured")
        reviewer = self.token_reviewer
        key = hashlib.sha256(token.encode()).digest()  # the cache never holds the token itself

        async def review() -> TokenReviewResult:
            try:
                return await reviewer(token)
            except Exception as exc:
                raise AuthenticationError(f"TokenReview failed: {exc}") from exc

        result, _ = await self.token_cache.get_or_load(key, review, lambda _r: self.cache_ttl)
        if not result.authenticated or result.user is None or not result.user.name:
            raise AuthenticationError(f"invalid bearer token{': ' + result.error if result.error else ''}")
        return result.user
