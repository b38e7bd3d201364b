"""Delegated authorization, as k8s.io/apiserver's `DelegatingAuthorizationOptions.toAuthorizer` builds it.

A union, in order: always-allow groups (`system:masters`), always-allow paths (non-resource requests only;
`--authorization-always-allow-paths`, default /healthz,/readyz,/livez; an entry ending in `*` is a prefix),
then a SubjectAccessReview per request, its answers cached (allowed 10 s, denied 10 s: the
`--authorization-webhook-cache-authorized-ttl` / `-unauthorized-ttl` defaults). A SAR that cannot be made is
an error (HTTP 500), never an allow. Pure logic: the SAR call is injected.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from toposcale.core.status import status

from .authconfig import DEFAULT_ALWAYS_ALLOW_GROUPS, DEFAULT_ALWAYS_ALLOW_PATHS
from .authn import UserInfo
from .cache import ExpiringLRU
from .requestinfo import RequestInfo


class Decision(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    NO_OPINION = "no-opinion"


@dataclass(frozen=True)
class SARResult:
    allowed: bool
    denied: bool = False
    reason: str = ""
    evaluation_error: str = ""


SubjectAccessReviewer = Callable[[dict[str, Any]], Awaitable[SARResult]]


class AuthorizationError(Exception):
    """The authorizer could not decide (the SubjectAccessReview failed)."""


def sar_spec(user: UserInfo, info: RequestInfo) -> dict[str, Any]:
    """SubjectAccessReviewSpec (authorization.k8s.io/v1) for this request, with the API's JSON field names."""
    spec: dict[str, Any] = {"user": user.name, "groups": list(user.groups)}
    if user.uid:
        spec["uid"] = user.uid
    if user.extra:
        spec["extra"] = {k: list(v) for k, v in sorted(user.extra.items())}
    if info.is_resource_request:
        attrs = {"namespace": info.namespace, "verb": info.verb, "group": info.api_group,
                 "version": info.api_version, "resource": info.resource, "subresource": info.subresource,
                 "name": info.name}
        spec["resourceAttributes"] = {k: v for k, v in attrs.items() if v}
    else:
        spec["nonResourceAttributes"] = {"path": info.path, "verb": info.verb}
    return spec


def _q(text: str) -> str:
    """Go's %q for ordinary strings."""
    return json.dumps(text, ensure_ascii=False)


def forbidden_message(user: UserInfo, info: RequestInfo) -> str:
    """responsewriters.forbiddenMessage."""
    if not info.is_resource_request:
        return f"User {_q(user.name)} cannot {info.verb} path {_q(info.path)}"
    resource = info.resource + (f"/{info.subresource}" if info.subresource else "")
    what = (f"User {_q(user.name)} cannot {info.verb} resource {_q(resource)} "
            f"in API group {_q(info.api_group)}")
    if info.namespace:
        return f"{what} in the namespace {_q(info.namespace)}"
    return f"{what} at the cluster scope"


def forbidden_status(user: UserInfo, info: RequestInfo, reason: str = "") -> dict[str, Any]:
    """The metav1.Status body apiserver answers 403 with (responsewriters.Forbidden + errors.NewForbidden)."""
    err = forbidden_message(user, info) + (f": {reason}" if reason else "")
    group, resource = (info.api_group, info.resource) if info.is_resource_request else ("", "")
    qualified = f"{resource}.{group}" if group else resource
    if not qualified:
        message = f"forbidden: {err}"
    elif not info.name:
        message = f"{qualified} is forbidden: {err}"
    else:
        message = f"{qualified} {_q(info.name)} is forbidden: {err}"
    pairs = (("name", info.name), ("group", group), ("kind", resource))
    details: dict[str, Any] = {k: v for k, v in pairs if v}
    return status(403, "Forbidden", message, details)


class PathMatcher:
    """k8s.io/apiserver authorization/path.NewAuthorizer: exact paths, or prefixes written `prefix*`."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.exact: set[str] = set()
        self.prefixes: list[str] = []
        for p in paths:
            p = p.strip().removeprefix("/")
            if not p:
                self.exact.add(p)  # "/" itself
                continue
            if "*" in p[:-1]:
                raise ValueError(f"only trailing * allowed in {p!r}")
            if p.endswith("*"):
                self.prefixes.append(p[:-1])
            else:
                self.exact.add(p)

    def matches(self, path: str) -> bool:
        p = path.removeprefix("/")
        return p in self.exact or any(p.startswith(pre) for pre in self.prefixes)


class Authorizer:
    def __init__(self, reviewer: SubjectAccessReviewer | None, *,
                 always_allow_paths: Iterable[str] = DEFAULT_ALWAYS_ALLOW_PATHS,
                 always_allow_groups: Iterable[str] = DEFAULT_ALWAYS_ALLOW_GROUPS,
                 allow_ttl: float = 10.0, deny_ttl: float = 10.0, cache_entries: int = 8192) -> None:
        self.reviewer = reviewer
        self.paths = PathMatcher(always_allow_paths)
        self.groups = frozenset(always_allow_groups)
        self.allow_ttl = allow_ttl
        self.deny_ttl = deny_ttl
        self.cache: ExpiringLRU[SARResult] = ExpiringLRU(cache_entries)

    def always_allowed_path(self, info: RequestInfo) -> bool:
        return not info.is_resource_request and self.paths.matches(info.path)

    async def authorize(self, user: UserInfo, info: RequestInfo) -> tuple[Decision, str, str]:
        """(decision, reason, source): source is group, path, cache or webhook."""
        if self.groups.intersection(user.groups):
            return Decision.ALLOW, "", "group"
        if self.always_allowed_path(info):
            return Decision.ALLOW, "", "path"
        if self.reviewer is None:
            return Decision.NO_OPINION, "no SubjectAccessReview client configured", "none"
        reviewer = self.reviewer
        spec = sar_spec(user, info)
        key = json.dumps(spec, sort_keys=True)

        async def review() -> SARResult:
            try:
                return await reviewer(spec)
            except Exception as exc:
                raise AuthorizationError(f"SubjectAccessReview failed: {exc}") from exc

        result, cached = await self.cache.get_or_load(
            key, review, lambda r: self.allow_ttl if r.allowed else self.deny_ttl)
        source = "cache" if cached else "webhook"
        if result.allowed:
            return Decision.ALLOW, result.reason, source
        if result.denied:
            return Decision.DENY, result.reason, source
        return Decision.NO_OPINION, result.reason, source
