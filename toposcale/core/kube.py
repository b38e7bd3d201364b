"""Talking to Kubernetes: an `ApiClient` from in-cluster or kubeconfig credentials, and a reflector.

Everything toposcale reads from the cluster goes through kubernetes-asyncio. The reflector hands out plain
dicts in the wire format (camelCase keys, as the apiserver sends them): the extender keeps thousands of Nodes
and building generated model objects for each would cost more than the scoring itself.

Reflector semantics follow client-go's: list (consistent read, paged), remember the list's resourceVersion,
watch from it; a watch that ends normally is resumed from the last resourceVersion seen; `410 Gone`/`Expired`
(as an HTTP status or as a watch ERROR event) and any other watch ERROR event mean the history is gone, so it
relists; network and server errors back off exponentially (with jitter) and retry. Cancelling stops it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

logger = logging.getLogger(__name__)

SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

Obj = dict[str, Any]
OnRelist = Callable[[list[Obj], str], Awaitable[None] | None]
OnEvent = Callable[[str, Obj], Awaitable[None] | None]


async def api_client(
    kubeconfig: str | None = None,
    *,
    serviceaccount_dir: str = SERVICEACCOUNT_DIR,
    request_timeout: float = 30.0,
) -> client.ApiClient:
    """An `ApiClient` for the cluster this process should talk to.

    kubeconfig None and `KUBERNETES_SERVICE_HOST` set: the pod's service account (token re-read as it rotates,
    CA from the mounted ca.crt). Otherwise the kubeconfig at `kubeconfig`, `$KUBECONFIG` or `~/.kube/config`.
    The caller closes it (`async with await api_client() as api:` or `await api.close()`).
    """
    cfg = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        sa = Path(serviceaccount_dir)
        config.incluster_config.InClusterConfigLoader(
            token_filename=str(sa / "token"),
            cert_filename=str(sa / "ca.crt"),
            try_refresh_token=True,
        ).load_and_set(cfg)
        source = "in-cluster"
    else:
        path = (
            kubeconfig
            or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
            or str(Path.home() / ".kube" / "config")
        )
        if not os.path.isfile(path):  # noqa: ASYNC240 -- one stat at start-up
            raise config.ConfigException(
                f"no Kubernetes credentials: not in a pod (KUBERNETES_SERVICE_HOST unset) and no kubeconfig "
                f"at {path}"
            )
        await config.load_kube_config(config_file=path, client_configuration=cfg)
        source = path
    api = client.ApiClient(configuration=cfg)
    _bound_requests(api, aiohttp.ClientTimeout(total=request_timeout, sock_connect=10))
    logger.info("kubernetes client ready", extra={"source": source, "server": cfg.host})
    return api


def _bound_requests(api: client.ApiClient, default: aiohttp.ClientTimeout) -> None:
    """Give every call without its own `_request_timeout` a deadline: kubernetes-asyncio's default is none at
    all, so a stuck apiserver would hang the caller forever. Watches pass their own (longer) timeout."""
    rest = api.rest_client
    unbounded = rest.request

    async def request(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return await unbounded(*args, _request_timeout=_request_timeout or default, **kwargs)

    rest.request = request


class WatchExpired(Exception):
    """The apiserver no longer has the history we asked for (410 Gone / Expired): relist."""


async def _call(cb: Callable[..., Awaitable[None] | None], *args: Any) -> None:
    result = cb(*args)
    if inspect.isawaitable(result):
        await result


def _ref(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return "/".join(x for x in (meta.get("namespace"), meta.get("name")) if x)


async def _raise_for_status(resp: Any) -> None:
    if 200 <= resp.status <= 299:
        return
    body = await resp.read()
    resp.release()
    exc = ApiException(status=resp.status, reason=resp.reason)
    exc.body = body.decode("utf-8", "replace")
    raise exc


async def get_json(api: client.ApiClient, path: str) -> Obj | None:
    """GET `path` from the API server as a wire-format dict; None for 404 (not there, or a group/version it
    does not serve). Any other error status raises ApiException."""
    resp = await api.call_api(path, "GET", auth_settings=["BearerToken"],
                              header_params={"Accept": "application/json"},
                              _preload_content=False, _return_http_data_only=True)
    try:
        if resp.status == 404:
            return None
        await _raise_for_status(resp)
        return json.loads(await resp.read())
    finally:
        resp.release()


class Reflector:
    """List-then-watch a collection, keep the resourceVersion, relist on 410; `await reflector.run()`.

    `list_fn` is a kubernetes-asyncio list method (e.g. `CoreV1Api(api).list_node`,
    `CoreV1Api(api).list_namespaced_pod`); `kwargs` go to every call (namespace, label_selector,
    field_selector). `on_relist(items, resource_version)` receives the complete current set after every
    (re)list; `on_event(type, obj)` each ADDED/MODIFIED/DELETED after it. Callbacks may be sync or async.
    """

    def __init__(
        self,
        list_fn: Callable[..., Awaitable[Any]],
        *,
        on_relist: OnRelist,
        on_event: OnEvent,
        page_size: int = 500,
        watch_timeout_s: int = 300,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 30.0,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.list_fn = list_fn
        self.on_relist = on_relist
        self.on_event = on_event
        self.page_size = page_size
        self.watch_timeout_s = watch_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.kwargs = kwargs
        self.name = name or getattr(list_fn, "__name__", "reflector")
        self.resource_version: str | None = None
        self.synced = asyncio.Event()  # set after the first complete list
        self.relists = 0
        self.last_error: str | None = None
        self.last_contact: float | None = None  # time.monotonic() of the last successful read
        self.callback_errors = 0  # watch events on_event raised on (skipped)

    async def run(self) -> None:
        backoff = self.backoff_initial_s
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                backoff = self.backoff_initial_s  # a clean end of the watch: resume at once
                continue
            except asyncio.CancelledError:
                raise
            except WatchExpired as exc:
                logger.info(
                    "watch history expired, relisting", extra={"reflector": self.name, "error": str(exc)}
                )
                self.last_error = str(exc)
                need_list = True
                continue  # relisting right away is what the apiserver expects after a 410
            except ApiException as exc:
                if exc.status == 410:
                    self.last_error = f"410 Gone: {exc.reason}"
                    logger.info("resource version gone, relisting", extra={"reflector": self.name})
                    need_list = True
                    self.resource_version = None
                    continue
                self.last_error = f"HTTP {exc.status}: {exc.reason}"
                need_list = need_list or exc.status >= 400
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # e.g. on_relist failed: must not end the reflector silently
                logger.exception("list/watch step failed, relisting", extra={"reflector": self.name})
                self.last_error = f"{type(exc).__name__}: {exc}"
                need_list = True
            logger.warning(
                "list/watch failed, retrying",
                extra={"reflector": self.name, "error": self.last_error, "backoff_s": round(backoff, 3)},
            )
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, self.backoff_max_s)

    async def _list(self) -> None:
        items: list[Obj] = []
        cont: str | None = None
        rv = ""
        while True:
            kw = dict(self.kwargs)
            if self.page_size:
                kw["limit"] = self.page_size
            if cont:
                kw["_continue"] = cont
            resp = await self.list_fn(_preload_content=False, **kw)
            await _raise_for_status(resp)
            doc = json.loads(await resp.read())
            resp.release()
            meta = doc.get("metadata") or {}
            rv = rv or meta.get("resourceVersion", "")
            items.extend(doc.get("items") or [])
            cont = meta.get("continue")
            if not cont:
                break
        self.resource_version = rv
        self.relists += 1
        self.last_contact = time.monotonic()
        await _call(self.on_relist, items, rv)
        self.synced.set()

    async def _watch(self) -> None:
        kw = dict(self.kwargs)
        resp = await self.list_fn(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout_s,
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=10, sock_read=self.watch_timeout_s + 30
            ),
            **kw,
        )
        try:
            await _raise_for_status(resp)
            while True:
                line = await resp.content.readline()
                if not line:
                    return
                if not line.strip():
                    continue
                event = json.loads(line)
                etype, obj = event.get("type"), event.get("object") or {}
                self.last_contact = time.monotonic()
                if etype == "ERROR":
                    code, reason = obj.get("code"), obj.get("reason")
                    raise WatchExpired(f"watch ERROR {code} {reason}: {obj.get('message')}")
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if etype == "BOOKMARK":
                    if rv:
                        self.resource_version = rv
                    continue
                try:
                    await _call(self.on_event, etype, obj)
                except Exception:
                    # One object the consumer cannot handle must not stall the stream (resuming from before
                    # it would hand it over again, forever): log it, count it, move on.
                    self.callback_errors += 1
                    logger.exception(
                        "watch event handler failed; event skipped",
                        extra={"reflector": self.name, "event": etype, "object": _ref(obj)},
                    )
                if rv:
                    self.resource_version = rv
        finally:
            resp.release()


class Store:
    """The current objects of a reflected collection, keyed by (namespace, name); pass its methods as
    callbacks: `Reflector(list_fn, on_relist=store.replace, on_event=store.apply)`."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Obj] = {}
        self.resource_version = ""

    @staticmethod
    def key(obj: Obj) -> tuple[str, str]:
        meta = obj.get("metadata") or {}
        return meta.get("namespace", ""), meta.get("name", "")

    def replace(self, items: list[Obj], resource_version: str) -> None:
        self.objects = {self.key(o): o for o in items}
        self.resource_version = resource_version

    def apply(self, etype: str, obj: Obj) -> None:
        if etype == "DELETED":
            self.objects.pop(self.key(obj), None)
        else:
            self.objects[self.key(obj)] = obj
        self.resource_version = (obj.get("metadata") or {}).get("resourceVersion", self.resource_version)
