"""The Kubernetes side of delegated auth, through kubernetes-asyncio: TokenReview, SubjectAccessReview, and
the `kube-system/extension-apiserver-authentication` ConfigMap (listed, then watched; relisted after 410
Gone).

Concurrent reviews are bounded (`max_inflight`) and each has a deadline (apiserver's ClientTimeout, 10 s).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from kubernetes_asyncio import client

from toposcale.core.kube import Reflector

from .authconfig import CONFIGMAP_NAME, CONFIGMAP_NAMESPACE, AuthnSources, from_configmap
from .authn import TokenReviewResult, UserInfo
from .authz import SARResult

logger = logging.getLogger(__name__)


class KubeTokenReviewer:
    def __init__(self, api: client.ApiClient, *, timeout: float = 10.0, max_inflight: int = 64,
                 audiences: list[str] | None = None) -> None:
        self.api = client.AuthenticationV1Api(api)
        self.timeout = timeout
        self.audiences = audiences
        self._sem = asyncio.Semaphore(max_inflight)

    async def __call__(self, token: str) -> TokenReviewResult:
        spec: dict[str, Any] = {"token": token}
        if self.audiences:
            spec["audiences"] = self.audiences
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        async with self._sem:
            resp = await self.api.create_token_review(
                body, _request_timeout=aiohttp.ClientTimeout(total=self.timeout))
        status = resp.status
        if status is None or not status.authenticated or status.user is None:
            return TokenReviewResult(False, None, (status.error if status else "") or "")
        u = status.user
        extra = {k: tuple(v or ()) for k, v in (u.extra or {}).items()}
        user = UserInfo(name=u.username or "", uid=u.uid or "", groups=tuple(u.groups or ()), extra=extra,
                        method="token")
        return TokenReviewResult(True, user, status.error or "")


class KubeSubjectAccessReviewer:
    def __init__(self, api: client.ApiClient, *, timeout: float = 10.0, max_inflight: int = 64) -> None:
        self.api = client.AuthorizationV1Api(api)
        self.timeout = timeout
        self._sem = asyncio.Semaphore(max_inflight)

    async def __call__(self, spec: dict[str, Any]) -> SARResult:
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        async with self._sem:
            resp = await self.api.create_subject_access_review(
                body, _request_timeout=aiohttp.ClientTimeout(total=self.timeout))
        st = resp.status
        if st is None:
            raise ValueError("SubjectAccessReview answer has no status")
        return SARResult(allowed=bool(st.allowed), denied=bool(st.denied), reason=st.reason or "",
                         evaluation_error=st.evaluation_error or "")


class AuthConfigMapWatcher:
    """Keeps `current` = the parsed ConfigMap (AuthnSources()) when it does not exist); calls `on_change` with
    each new value. A ConfigMap that fails to parse keeps the previous value and is logged, as apiserver
    does."""

    def __init__(self, api: client.ApiClient, on_change: Callable[[AuthnSources], None], *,
                 namespace: str = CONFIGMAP_NAMESPACE, name: str = CONFIGMAP_NAME) -> None:
        self.namespace, self.name = namespace, name
        self.on_change = on_change
        self.current: AuthnSources | None = None
        self.parse_error: str | None = None
        self.reflector = Reflector(
            client.CoreV1Api(api).list_namespaced_config_map, on_relist=self._relist, on_event=self._event,
            name="extension-apiserver-authentication", namespace=namespace,
            field_selector=f"metadata.name={name}")

    @property
    def synced(self) -> asyncio.Event:
        return self.reflector.synced

    def _apply(self, obj: dict[str, Any] | None) -> None:
        data = (obj or {}).get("data") or {}
        try:
            parsed = from_configmap(data)
        except ValueError as exc:
            self.parse_error = str(exc)
            logger.error("extension-apiserver-authentication ConfigMap not applied",
                         extra={"error": str(exc)})
            return
        self.parse_error = None
        if parsed != self.current:
            self.current = parsed
            logger.info("authentication settings from ConfigMap", extra={
                "configmap": f"{self.namespace}/{self.name}", "present": obj is not None,
                "client_ca": parsed.client_ca is not None,
                "requestheader": parsed.request_header is not None,
                "allowed_names": list(parsed.request_header.allowed_names) if parsed.request_header else []})
            self.on_change(parsed)

    def _relist(self, items: list[dict[str, Any]], _rv: str) -> None:
        match = [o for o in items if (o.get("metadata") or {}).get("name") == self.name]
        if not match:
            logger.warning("ConfigMap not found: only flag-configured authentication applies",
                           extra={"configmap": f"{self.namespace}/{self.name}"})
        self._apply(match[0] if match else None)

    def _event(self, etype: str, obj: dict[str, Any]) -> None:
        if (obj.get("metadata") or {}).get("name") != self.name:
            return
        self._apply(None if etype == "DELETED" else obj)

    async def run(self) -> None:
        await self.reflector.run()
