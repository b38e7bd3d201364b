"""Security test fixtures: a real test PKI, the in-process Kubernetes API stand-in, and a TLS server built
by the adapter's own security builder (`build_security`) in front of a small aiohttp app.

The real kube-apiserver cannot answer a TokenReview or a SubjectAccessReview the way each test decides, so
those and the extension-apiserver-authentication ConfigMap are served by `lab/kube/standin.py` (the real wire
format), reached through kubernetes-asyncio exactly as in a cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from toposcale.adapter.security import options
from toposcale.adapter.security.authconfig import CONFIGMAP_NAME, CONFIGMAP_NAMESPACE
from toposcale.adapter.security.middleware import USER_KEY

from lab.kube.standin import KubeStandIn
from lab.pki import Issued, TestPKI
from toposcale.core import listener

METRIC_PATH = "/apis/external.metrics.k8s.io/v1beta1/namespaces/llm/vllm_queue_depth"


@dataclass
class PKI:
    root: TestPKI
    ca: Issued  # cluster CA: signs user client certificates (client-ca-file)
    fp_ca: Issued  # front-proxy CA (requestheader-client-ca-file)
    serving: Issued  # the adapter's serving certificate, signed by `ca`
    front_proxy: Issued  # CN=front-proxy-client, what kube-apiserver presents
    alice: Issued  # CN=alice, O=dev (signed by the cluster CA)


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    root = TestPKI(tmp_path / "pki")
    ca = root.ca("kubernetes-ca")
    fp_ca = root.ca("front-proxy-ca")
    return PKI(root, ca, fp_ca,
               serving=root.server(ca, "toposcale-adapter", hosts=["127.0.0.1", "localhost"]),
               front_proxy=root.client(fp_ca, "front-proxy-client"),
               alice=root.client(ca, "alice", groups=["dev"]))


def auth_configmap(pki: PKI, *, allowed: list[str] | None = None, with_front_proxy: bool = True,
                   with_client_ca: bool = True) -> dict[str, Any]:
    """The ConfigMap as kube-apiserver writes it (list values are JSON arrays)."""
    data: dict[str, str] = {}
    if with_client_ca:
        data["client-ca-file"] = pki.ca.cert_pem.decode()
    if with_front_proxy:
        data.update({
            "requestheader-client-ca-file": pki.fp_ca.cert_pem.decode(),
            "requestheader-allowed-names": json.dumps(["front-proxy-client"] if allowed is None else allowed),
            "requestheader-username-headers": json.dumps(["X-Remote-User"]),
            "requestheader-group-headers": json.dumps(["X-Remote-Group"]),
            "requestheader-uid-headers": json.dumps(["X-Remote-Uid"]),
            "requestheader-extra-headers-prefix": json.dumps(["X-Remote-Extra-"]),
        })
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": CONFIGMAP_NAME, "namespace": CONFIGMAP_NAMESPACE}, "data": data}


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[KubeStandIn]:
    async with KubeStandIn() as k:
        k.kubeconfig = k.write_kubeconfig(tmp_path / "auth-kubeconfig")  # type: ignore[attr-defined]
        yield k


def parse_flags(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    return parser.parse_args(argv)


async def _echo(request: web.Request) -> web.Response:
    """Shows what reached the handler: the user, and any identity header left in the request."""
    user = request[USER_KEY]
    leaked = {k: v for k, v in request.headers.items()
              if k.lower().startswith(("x-remote-", "authorization"))}
    return web.json_response({"user": user.name, "groups": list(user.groups),
                              "extra": {k: list(v) for k, v in user.extra.items()},
                              "method": user.method, "leaked_headers": leaked})


@dataclass
class Server:
    security: options.Security
    site: listener.SecureSite
    runner: web.AppRunner
    registry: CollectorRegistry
    ca_file: Path
    url: str = ""
    sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    def client_ssl(self, cert: Issued | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if cert is not None:
            ctx.load_cert_chain(cert.cert_path, cert.key_path)
        return ctx

    async def get(self, path: str, *, cert: Issued | None = None, headers: dict[str, str] | None = None
                  ) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s, s.get(
                self.url + path, ssl=self.client_ssl(cert), headers=headers or {}) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except json.JSONDecodeError:
                return r.status, text

    def metrics_text(self) -> str:
        return generate_latest(self.registry).decode()


StartServer = Callable[..., Any]


@pytest.fixture
async def start_server(pki: PKI) -> AsyncIterator[StartServer]:
    """`await start_server(flags, **build_security_kwargs)` -> Server, the adapter's security in front."""
    started: list[Server] = []

    async def start(argv: list[str], *, ca_file: Path | None = None, **build_kwargs: Any) -> Server:
        args = parse_flags(argv)
        registry = CollectorRegistry()
        sec = await options.build_security(args, registry, **build_kwargs)
        app = web.Application(middlewares=[sec.middleware])
        async def ok(_request: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(text=generate_latest(registry).decode())

        async def hang(_request: web.Request) -> web.Response:  # a request being answered, for ever
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        for path in ("/healthz", "/livez", "/readyz"):
            app.router.add_get(path, ok)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/hang", hang)
        app.router.add_get("/apis/external.metrics.k8s.io/v1beta1", _echo)
        app.router.add_get("/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}", _echo)
        runner, site = await listener.serve(app, "127.0.0.1", 0, sec.ssl_context, sec.limits, sec.on_cut)
        srv = Server(sec, site, runner, registry, ca_file or pki.ca.cert_path)
        srv.url = f"{'https' if sec.ssl_context else 'http'}://127.0.0.1:{site.port}"
        started.append(srv)
        return srv

    yield start
    for srv in started:
        await srv.runner.cleanup()
        await srv.security.close()


def tls_flags(pki: PKI, kube: KubeStandIn) -> list[str]:
    """The usual production flags: serving pair from files, delegated auth through the (stand-in) API."""
    kc = kube.kubeconfig  # type: ignore[attr-defined]
    return ["--tls-cert-file", str(pki.serving.cert_path),
            "--tls-private-key-file", str(pki.serving.key_path),
            "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc]


async def until(cond: Callable[[], bool], what: str, limit_s: float = 10.0) -> None:
    """Wait for a condition the code under test must reach; the limit only bounds a broken run."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)
