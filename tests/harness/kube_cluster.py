"""A real Kubernetes control plane on loopback: etcd, kube-apiserver (aggregator on), kube-controller-manager
and
kube-scheduler, built from the Kubernetes sources by `scripts/kube.sh bin-dir` (tests/kube/go.mod).

    python -m tests.harness.kube_cluster up DIR --bin-dir BIN [--scheduler-config FILE] [--hpa-sync-period 2s]
    python -m tests.harness.kube_cluster down DIR

(`scripts/kube.sh up|down DIR` wraps these.) `up` makes a PKI for the run, starts the four processes in their
own
sessions (so they outlive the command), waits until `/readyz` answers ok, and writes into DIR:

- `admin.kubeconfig` (CN=kubernetes-admin, O=system:masters), a kubeconfig per component;
- `env`: shell-sourceable KEY=value lines (server URL, ports, PIDs, CA and key paths);
- `pki/` (cluster CA, front-proxy CA, serving and client certificates, the service-account signing key);
- `etcd.log`, `kube-apiserver.log`, `kube-controller-manager.log`, `kube-scheduler.log`, and `etcd/` (data).

`up` marks DIR as its own first (`.kube-sh-up`, which also says whether `up` created DIR) and refuses a DIR
that exists and is not empty. `down` refuses a DIR without that marker (exit 1, nothing stopped or removed),
stops exactly the PIDs in DIR/env (SIGTERM, then SIGKILL after a grace period) and removes what `up` wrote:
DIR itself only when `up` created it. A failed `up` cleans up the same way, so it never removes a DIR that
existed before it.

`up` starts no kubelet: tests create Node objects themselves (tests/harness/kubelet.py plays a kubelet where
one is needed), and `kube.sh up DIR --kubelets N` adds real nodes (tests/harness/kubelet_lab.py: containerd,
the kubelet, a device plugin). The node lifecycle controller is not run, so fake Nodes are never tainted
unreachable.

From Python (the pytest session fixture in tests/conftest.py uses the script, as a user would):

    cluster = Cluster.load(DIR)          # after `kube.sh up DIR`
    cluster.server, cluster.admin_kubeconfig, cluster.pki_dir, cluster.ca_file
    cluster.restart("kube-apiserver")    # same flags, same ports (watch/restart tests)
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import ipaddress
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from toposcale.core.ports import free_port

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
SERVICE_CIDR = "10.96.0.0/16"
# What the tests need, and not nodelifecycle (no kubelet heartbeats), csrsigning, cloud or volume controllers.
CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "horizontal-pod-autoscaler-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "resourceclaim-controller",
    "endpointslice-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "job-controller",
    "disruption-controller",
    "pod-garbage-collector-controller",
    # PVCs (the qwen example's model volume) carry a protection finalizer only these remove: without them a
    # namespace holding a PVC never finishes terminating.
    "persistentvolumeclaim-protection-controller",
    "persistentvolume-protection-controller",
)
READY_TIMEOUT_S = 120.0
# Written by `up` into DIR before anything else: `down` acts only on a DIR holding it.
MARKER = ".kube-sh-up"
# What `up` and the components write into DIR (a DIR that existed before `up` keeps anything else).
UP_ENTRIES = frozenset({
    MARKER, "env", "env.tmp", "admin.kubeconfig", "controller-manager.kubeconfig", "scheduler.kubeconfig",
    "audit-policy.yaml", "audit.log", "pki", "etcd", *(f"{name}.log" for name in COMPONENTS),
})
AUDIT_GROUP = "system:serviceaccounts:toposcale"
AUDIT_POLICY = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["{AUDIT_GROUP}"]
  - level: None
"""


# --- PKI ----------------------------------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Pki:
    """RSA certificates laid out as kubeadm does (ca.crt, front-proxy-ca.crt, apiserver.crt, sa.key, ...)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._serial = int(time.time())

    def _key(self) -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def _write(self, name: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> None:
        (self.dir / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kp = self.dir / f"{name}.key"
        kp.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        kp.chmod(0o600)

    def ca(self, name: str, cn: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        key = self._key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        self._serial += 1
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(self._serial)
            .not_valid_before(_now() - dt.timedelta(hours=1))
            .not_valid_after(_now() + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        self._write(name, cert, key)
        return cert, key

    def leaf(
        self,
        name: str,
        issuer: tuple[x509.Certificate, rsa.RSAPrivateKey],
        cn: str,
        *,
        orgs: tuple[str, ...] = (),
        hosts: tuple[str, ...] = (),
        server: bool = False,
        client: bool = False,
    ) -> None:
        key = self._key()
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        eku = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        self._serial += 1
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(issuer[0].subject)
            .public_key(key.public_key())
            .serial_number(self._serial)
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False
            )
        )
        if hosts:
            sans: list[x509.GeneralName] = []
            for h in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(h)))
                except ValueError:
                    sans.append(x509.DNSName(h))
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        self._write(name, b.sign(issuer[1], hashes.SHA256()), key)

    def service_account_keys(self) -> None:
        key = self._key()
        kp = self.dir / "sa.key"
        kp.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        kp.chmod(0o600)
        (self.dir / "sa.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def make_pki(pki_dir: Path) -> None:
    pki = _Pki(pki_dir)
    ca = pki.ca("ca", "kubernetes")
    fp = pki.ca("front-proxy-ca", "front-proxy-ca")
    svc_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
    pki.leaf(
        "apiserver",
        ca,
        "kube-apiserver",
        server=True,
        hosts=(
            "127.0.0.1",
            "::1",
            "localhost",
            svc_ip,
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
    )
    pki.leaf("admin", ca, "kubernetes-admin", orgs=("system:masters",), client=True)
    pki.leaf("controller-manager", ca, "system:kube-controller-manager", client=True)
    pki.leaf("scheduler", ca, "system:kube-scheduler", client=True)
    pki.leaf(
        "apiserver-kubelet-client",
        ca,
        "kube-apiserver-kubelet-client",
        orgs=("kubeadm:cluster-admins",),
        client=True,
    )
    # What kube-apiserver presents to aggregated API servers (the adapter): --proxy-client-cert-file.
    pki.leaf("front-proxy-client", fp, "front-proxy-client", client=True)
    # Serving certificates for the components' own secure ports (they would self-sign otherwise).
    pki.leaf("controller-manager-serving", ca, "kube-controller-manager", server=True, hosts=("127.0.0.1",))
    pki.leaf("scheduler-serving", ca, "kube-scheduler", server=True, hosts=("127.0.0.1",))
    pki.service_account_keys()


def write_kubeconfig(
    path: Path,
    server: str,
    ca_file: Path,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    token: str | None = None,
    user: str = "user",
) -> Path:
    """A kubeconfig with inline CA and credentials (a client certificate or a bearer token)."""
    creds: dict[str, str] = {}
    if cert and key:
        creds = {
            "client-certificate-data": base64.b64encode(cert.read_bytes()).decode(),
            "client-key-data": base64.b64encode(key.read_bytes()).decode(),
        }
    if token:
        creds = {"token": token}
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "local",
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_file.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path


# --- processes ----------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    dir: Path
    bin_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    args: dict[str, list[str]] = field(default_factory=dict)

    @property
    def pki_dir(self) -> Path:
        return self.dir / "pki"

    @property
    def ca_file(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['kube-apiserver']}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['etcd']}"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    def audit_events(self) -> list[dict]:
        """Audit events (level Metadata) of the `toposcale` namespace's service accounts, oldest first."""
        path = self.dir / "audit.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # -- flags --

    def _flags(self, scheduler_config: Path | None, hpa_sync_period: str) -> None:
        d, p = self.dir, self.pki_dir
        self.args["etcd"] = [
            "--name=default",
            f"--data-dir={d / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{self.ports['etcd-peer']}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{self.ports['etcd-peer']}",
            f"--initial-cluster=default=http://127.0.0.1:{self.ports['etcd-peer']}",
            # Throwaway data on a 2-core CI machine: durability buys nothing, fsync costs seconds per test.
            "--unsafe-no-fsync",
            "--quota-backend-bytes=2147483648",
            "--log-level=warn",
        ]
        self.args["kube-apiserver"] = [
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports['kube-apiserver']}",
            "--advertise-address=127.0.0.1",
            # The `kubernetes` Service's endpoints cannot be a loopback address (Endpoints validation).
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            # The aggregator: front-proxy CA and the headers it sets (what kubeadm configures).
            f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-uid-headers=X-Remote-Uid",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={p / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={p / 'front-proxy-client.key'}",
            f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
            # Real kubelets (kubelet_lab.py) are reached at their node's address: their Node names do not
            # resolve.
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            # toposcale's own service accounts are audited, so a test can prove they never got a 403.
            f"--audit-policy-file={d / 'audit-policy.yaml'}",
            f"--audit-log-path={d / 'audit.log'}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
            "--profiling=false",
            "--v=1",
        ]
        (d / "audit-policy.yaml").write_text(AUDIT_POLICY)
        common = [
            "--bind-address=127.0.0.1",
            "--profiling=false",
            "--v=1",
        ]
        kcm_kc = str(d / "controller-manager.kubeconfig")
        self.args["kube-controller-manager"] = [
            f"--kubeconfig={kcm_kc}",
            f"--authentication-kubeconfig={kcm_kc}",
            f"--authorization-kubeconfig={kcm_kc}",
            f"--secure-port={self.ports['kube-controller-manager']}",
            f"--tls-cert-file={p / 'controller-manager-serving.crt'}",
            f"--tls-private-key-file={p / 'controller-manager-serving.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--controllers={','.join(CONTROLLERS)}",
            f"--service-account-private-key-file={p / 'sa.key'}",
            f"--root-ca-file={p / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--horizontal-pod-autoscaler-sync-period={hpa_sync_period}",
            # Short so a test sees an HPA act within seconds; an HPA's own behavior can still lengthen it.
            "--horizontal-pod-autoscaler-downscale-stabilization=10s",
            *common,
        ]
        sch_kc = str(d / "scheduler.kubeconfig")
        self.args["kube-scheduler"] = [
            f"--authentication-kubeconfig={sch_kc}",
            f"--authorization-kubeconfig={sch_kc}",
            f"--secure-port={self.ports['kube-scheduler']}",
            f"--tls-cert-file={p / 'scheduler-serving.crt'}",
            f"--tls-private-key-file={p / 'scheduler-serving.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            *common,
        ]
        if scheduler_config is not None:
            lab = self._lab_scheduler_config(scheduler_config, sch_kc)
            self.args["kube-scheduler"].append(f"--config={lab}")
        else:
            self.args["kube-scheduler"] += [f"--kubeconfig={sch_kc}", "--leader-elect=false"]

    def _lab_scheduler_config(self, path: Path, kubeconfig: str) -> Path:
        """A copy of `path` that runs on this control plane: kube-scheduler ignores --kubeconfig when
        --config is given (the file's clientConnection.kubeconfig decides, and none means in-cluster, which
        fails here), and a file made for a cluster (deploy/extender/scheduler-config.yaml) elects a leader in
        a namespace (toposcale) this fresh one lacks. One scheduler here: no election."""
        cfg = yaml.safe_load(path.read_text())
        cfg.setdefault("clientConnection", {})["kubeconfig"] = kubeconfig
        cfg["leaderElection"] = {**(cfg.get("leaderElection") or {}), "leaderElect": False}
        out = self.dir / "scheduler-config.yaml"
        out.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return out

    def _spawn(self, name: str) -> int:
        log = open(self.dir / f"{name}.log", "ab")
        binary = self.bin_dir / name
        proc = subprocess.Popen(
            [str(binary), *self.args[name]],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.dir,
        )
        log.close()
        self.pids[name] = proc.pid
        return proc.pid

    def _log_tail(self, name: str, lines: int = 25) -> str:
        try:
            text = (self.dir / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def _wait_http(self, name: str, url: str, *, ctx: ssl.SSLContext | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not _alive(self.pids[name]):
                raise RuntimeError(f"{name} exited during start-up; last log lines:\n{self._log_tail(name)}")
            try:
                with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
                    body = r.read().decode()
                    if r.status == 200 and body.strip() == "ok":
                        return
                    last = f"{r.status} {body[:200]}"
            except urllib.error.HTTPError as e:
                last = f"{e.code} {e.read()[:300]!r}"
            except OSError as e:
                last = str(e)
            time.sleep(0.3)
        raise RuntimeError(
            f"{name} not ready after {timeout:.0f} s ({last}); last log lines:\n{self._log_tail(name)}"
        )

    def admin_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
        return ctx

    def _wait(self, name: str) -> None:
        if name == "etcd":
            self._wait_etcd()
        elif name == "kube-apiserver":
            self._wait_http(name, f"{self.server}/readyz", ctx=self.admin_ssl(), timeout=READY_TIMEOUT_S)
        else:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            self._wait_http(
                name, f"https://127.0.0.1:{self.ports[name]}/healthz", ctx=ctx, timeout=READY_TIMEOUT_S
            )

    def _wait_etcd(self) -> None:
        deadline = time.monotonic() + 60
        last = ""
        while time.monotonic() < deadline:
            if not _alive(self.pids["etcd"]):
                raise RuntimeError(f"etcd exited during start-up:\n{self._log_tail('etcd')}")
            try:
                with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=3) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            except (OSError, ValueError) as e:
                last = str(e)
            time.sleep(0.2)
        raise RuntimeError(f"etcd not healthy after 60 s ({last}):\n{self._log_tail('etcd')}")

    def start(
        self,
        *,
        scheduler_config: Path | None = None,
        hpa_sync_period: str = "2s",
        with_scheduler: bool = True,
    ) -> None:
        created = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / MARKER).exists():
            mark = {"made_by": "kube.sh up", "created_dir": created}
            (self.dir / MARKER).write_text(json.dumps(mark) + "\n")
        make_pki(self.pki_dir)
        for name in ("etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            self.ports[name] = free_port()
        p = self.pki_dir
        # one client certificate each: CN is the user the API server authorizes
        for path, cert, user in (
            (self.admin_kubeconfig, "admin", "kubernetes-admin"),
            (self.dir / "controller-manager.kubeconfig", "controller-manager",
             "system:kube-controller-manager"),
            (self.dir / "scheduler.kubeconfig", "scheduler", "system:kube-scheduler"),
        ):
            write_kubeconfig(
                path, self.server, self.ca_file, cert=p / f"{cert}.crt", key=p / f"{cert}.key", user=user
            )
        self._flags(scheduler_config, hpa_sync_period)
        names = [n for n in COMPONENTS if with_scheduler or n != "kube-scheduler"]
        try:
            for name in names:
                self._spawn(name)
                self.write_env()
                self._wait(name)
        except BaseException:
            self.stop()
            raise
        self.write_env()

    def etcd_compact(self) -> int:
        """Compact etcd at its current revision (physical), as kube-apiserver's own compactor does every
        5 minutes: every watch from an older resourceVersion is then answered 410 Gone. Returns the
        revision."""

        def post(path: str, body: dict) -> dict:
            req = urllib.request.Request(
                f"{self.etcd_url}{path}",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())

        rev = int(
            post("/v3/kv/range", {"key": base64.b64encode(b"/registry/").decode()})["header"]["revision"]
        )
        post("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        return rev

    def restart(self, name: str, *, down_s: float = 0.0) -> None:
        """Stop one component and start it again with the same flags and ports."""
        _terminate(self.pids[name])
        time.sleep(down_s)
        self._spawn(name)
        self.write_env()
        self._wait(name)

    def stop(self) -> None:
        for name in reversed(COMPONENTS):
            pid = self.pids.get(name)
            if pid:
                _terminate(pid)

    # -- the env file --

    def write_env(self) -> None:
        lines = {
            "KUBE_SERVER": self.server,
            "KUBE_ETCD_URL": self.etcd_url,
            "KUBE_ADMIN_KUBECONFIG": str(self.admin_kubeconfig),
            "KUBE_PKI_DIR": str(self.pki_dir),
            "KUBE_CA_FILE": str(self.ca_file),
            "KUBE_FRONT_PROXY_CA_FILE": str(self.pki_dir / "front-proxy-ca.crt"),
            "KUBE_BIN_DIR": str(self.bin_dir),
        }
        for name, port in self.ports.items():
            lines[f"KUBE_PORT_{_key(name)}"] = str(port)
        for name, pid in self.pids.items():
            lines[f"KUBE_PID_{_key(name)}"] = str(pid)
        for name, argv in self.args.items():
            lines[f"KUBE_ARGS_{_key(name)}"] = json.dumps(argv)
        text = "".join(f"{k}={shlex.quote(v)}\n" for k, v in lines.items())
        tmp = self.dir / "env.tmp"
        tmp.write_text(text)
        tmp.replace(self.dir / "env")

    @classmethod
    def load(cls, directory: Path | str) -> Cluster:
        d = Path(directory)
        env: dict[str, str] = {}
        for line in (d / "env").read_text().splitlines():
            k, _, v = line.partition("=")
            env[k] = shlex.split(v)[0] if v else ""
        c = cls(dir=d, bin_dir=Path(env["KUBE_BIN_DIR"]))
        for name in ("etcd", "etcd-peer", *COMPONENTS[1:]):
            if f"KUBE_PORT_{_key(name)}" in env:
                c.ports[name] = int(env[f"KUBE_PORT_{_key(name)}"])
        for name in COMPONENTS:
            if f"KUBE_PID_{_key(name)}" in env:
                c.pids[name] = int(env[f"KUBE_PID_{_key(name)}"])
            if f"KUBE_ARGS_{_key(name)}" in env:
                c.args[name] = json.loads(env[f"KUBE_ARGS_{_key(name)}"])
        return c


def _key(name: str) -> str:
    return name.upper().replace("-", "_")


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child (a `down` run): fall back to signal 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie of another parent still answers signal 0; /proc says whether it is one.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def _terminate(pid: int, grace: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)


def _remove_run(directory: Path) -> None:
    """What `up` wrote into `directory` (its marker last), and `directory` itself only when `up` made it."""
    try:
        created = json.loads((directory / MARKER).read_text()).get("created_dir") is True
    except (OSError, ValueError, AttributeError):
        created = False  # unreadable: treat DIR as the user's
    if created:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for entry in sorted(directory.iterdir(), key=lambda e: e.name == MARKER):
        if entry.name in UP_ENTRIES or (entry.name.startswith("audit-") and entry.name.endswith(".log")):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def down_refusal(directory: Path) -> str | None:
    """Why `down` will not touch `directory` (one line), or None: it holds a control plane made by `up`."""
    if not directory.exists():
        return f"{directory} does not exist; nothing stopped, nothing removed"
    if not directory.is_dir():
        return f"{directory} is not a directory; nothing stopped, nothing removed"
    if not (directory / MARKER).is_file():
        return (f"{directory} holds no control plane made by `kube.sh up` (no {MARKER} marker); "
                "nothing stopped, nothing removed")
    return None


def down(directory: Path) -> None:
    """Stop the PIDs `up` recorded in directory/env and remove what `up` wrote (see `down_refusal`)."""
    if (reason := down_refusal(directory)) is not None:
        raise ValueError(reason)
    if (directory / "env").exists():
        Cluster.load(directory).stop()
    _remove_run(directory)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="kube.sh", allow_abbrev=False, description="a real Kubernetes control plane on loopback"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", allow_abbrev=False, help="start a control plane writing into DIR")
    up.add_argument("dir", type=Path)
    up.add_argument("--bin-dir", type=Path, required=True, help="where kube.sh bin-dir built the binaries")
    up.add_argument(
        "--scheduler-config",
        type=Path,
        default=None,
        help="KubeSchedulerConfiguration for kube-scheduler (default: its built-in profile)",
    )
    up.add_argument("--no-scheduler", action="store_true", help="do not start kube-scheduler")
    up.add_argument("--hpa-sync-period", default="2s", help="kube-controller-manager's HPA sync period")
    dn = sub.add_parser(
        "down", allow_abbrev=False,
        help="stop the control plane `up` started in DIR, remove what `up` wrote (DIR too if `up` made it)",
    )
    dn.add_argument("dir", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "down":
        d = a.dir.resolve()
        if (reason := down_refusal(d)) is not None:
            print(f"kube.sh: down refused: {reason}", file=sys.stderr)
            return 1
        down(d)
        return 0
    d = a.dir.resolve()
    if (d / "env").exists() or (d / MARKER).exists():
        print(f"kube.sh: {d} already holds a control plane (kube.sh down {d} first)", file=sys.stderr)
        return 1
    if d.exists() and not d.is_dir():
        print(f"kube.sh: {d} is not a directory", file=sys.stderr)
        return 1
    if d.is_dir() and any(d.iterdir()):
        print(f"kube.sh: {d} is not empty: up writes into a new or an empty directory", file=sys.stderr)
        return 1
    start = time.monotonic()
    cluster = Cluster(dir=d, bin_dir=a.bin_dir.resolve())
    try:
        cluster.start(
            scheduler_config=a.scheduler_config.resolve() if a.scheduler_config else None,
            hpa_sync_period=a.hpa_sync_period,
            with_scheduler=not a.no_scheduler,
        )
    except (RuntimeError, OSError) as e:  # a component that did not start; a missing or unrunnable binary
        print(f"kube.sh: {e}", file=sys.stderr)
        # start() stopped what it had started; never remove a DIR that existed before `up`
        _remove_run(d)
        return 1
    print(
        f"kube.sh: control plane up in {time.monotonic() - start:.1f} s: {cluster.server} "
        f"(kubeconfig {cluster.admin_kubeconfig})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
