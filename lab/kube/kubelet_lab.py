"""Real nodes for the lab's control plane: containerd, the kubelet built from source and a device plugin
speaking the real device-plugin API, one set per node, all on this machine (root needed).

    lab = KubeletLab.create(cluster, DIR / "kubelets", deviceplugin=PATH, image_cache=image_cache_dir())
    lab.add(LabNode.from_fixture("kl-a100", FIXTURE, labels={...}))
    lab.start()                      # every node Ready, its GPUs allocatable, pods really run
    lab.restart_kubelet("kl-a100")   # SIGKILL, then the same kubelet again (same flags, dirs, ports)
    lab.down()                       # every process by PID, cgroups, the bridge, the files

What one node is (all under DIR/<node>/, nothing pulled from a registry):

- **containerd** (Debian's package, 1.6) on a private socket, root and state, the `native` snapshotter (no
  overlay mounts), its CRI plugin with a sandbox image built here (`pause` compiled from the pause.c of the
  k8s.io/kubernetes module, `FROM scratch` with buildah) and the pods' image (the project's simulated vLLM
  exporter text served by busybox's httpd, see `build_images`), both imported with `ctr images import`;
  `restrict_oom_score_adj` on, because CI machines refuse root a negative oom_score_adj (the kubelet asks
  -998 for sandboxes; runc then fails with "can't get final child's PID from pipe: EOF");
- **CNI**: Debian's containernetworking-plugins, `bridge` (a bridge of this node's own, `tsl<hex>`, gateway
  address on the host) + `host-local` on a /24 of 10.244.0.0/16 that no address of this machine is in,
  + `loopback`: each pod has its own network namespace and address, reached from the host (the kubelet's
  probes) through the bridge. No masquerading, no iptables rules;
- **the kubelet** (`kube.sh bin-dir`), registered as a Node with a client certificate of the cluster CA
  (CN system:node:<name>, O system:nodes), its own root dir, ports (`port`, `healthzPort`, no read-only port)
  and cgroup root `/toposcale-lab-<run>-<node>` (cgroupfs driver, cgroupsPerQOS). `failCgroupV1: false`
  because CI machines run cgroup v1 (the kubelet refuses it by default since 1.35); `failSwapOn: false`;
  eviction thresholds at their minimum (a CI disk nearly full must not taint the node);
- **the device plugin** (`scripts/gpuallocator.sh deviceplugin-bin`, tests/gpuallocator/deviceplugin): the
  node's GPUs from a topology fixture, NVIDIA's go-gpuallocator best-effort policy for GetPreferredAllocation.

One mount namespace per node: the kubelet's device-plugin socket is compiled in
(`/var/lib/kubelet/device-plugins/kubelet.sock`, pluginapi.KubeletSocket), so two kubelets on one machine
need two views of that path. containerd is started by `unshare --mount --propagation private` after a tmpfs is
mounted over `/var/lib` and `/run` there and DIR/<node>/device-plugins is bound onto
`/var/lib/kubelet/device-plugins`; the kubelet joins that namespace (`nsenter --mount`), and so do the shims
and containers containerd starts. Everything they mount (the kubelet's volumes, the pods' network namespaces,
runc's and the shims' state under /run/containerd, CNI's cache under /var/lib/cni) is private to the node and
goes when its last process does. The device plugin runs in the host's namespace on DIR/<node>/device-plugins
(the same directory). containerd and everything it starts run in the pids cgroup
`/toposcale-lab-<run>-<node>/runtime`, the pods in the kubelet's cgroup root: `down` finds every process of a
node there, by PID, and nothing outside.

Hosts: cgroup v1 or hybrid (what the CI machines run); one with only the unified v2 hierarchy is refused with
one line (it would need delegated controllers, which nothing here has run on yet). Root is needed.

The lab plays the node lifecycle controller in one respect (that controller is not run: the suite's other
Nodes are fake and send no heartbeats): once a node reports Ready it removes the
`node.kubernetes.io/not-ready` taint kube-apiserver's TaintNodesByCondition admission put on the new Node.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lab.kube.cluster import Cluster, write_kubeconfig
from lab.pki import KubePki
from lab.procs import free_port, pid_alive, terminate_pid

ROOT = Path(__file__).resolve().parents[2]
STATE = "lab.json"
RESOURCE = "nvidia.com/gpu"
PAUSE_TAG = "3.10.2"  # build/pause/Makefile's TAG in k8s.io/kubernetes v1.37.2
PAUSE_IMAGE = f"localhost/toposcale-pause:{PAUSE_TAG}"
EXPORTER_PORT = 8000
CGROUP_FS = Path("/sys/fs/cgroup")
CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
POD_SUPERNET = ipaddress.ip_network("10.244.0.0/16")
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
START_TIMEOUT_S = 120.0
# How long a restarted node must stay Ready with its GPUs before it counts as back: three status updates
# (nodeStatusUpdateFrequency below is 2 s), so a stale status of the restart can no longer arrive.
STATUS_SETTLE_S = 6.0


class LabError(RuntimeError):
    """A node that could not be set up; the message says what failed (with the log's last lines)."""


# --- images -------------------------------------------------------------------------------------------------

SERVE_SH = f"""#!/bin/sh
# The project's simulated vLLM exporter text at /metrics, and what the container was given (its environment:
# NVIDIA_VISIBLE_DEVICES from the device plugin's Allocate) at /env.
set -e
mkdir -p /tmp/www
cp /metrics.txt /tmp/www/metrics
env > /tmp/www/env
exec httpd -f -p "${{PORT:-{EXPORTER_PORT}}}" -h /tmp/www
"""
BUSYBOX_APPLETS = ("sh", "env", "httpd", "mkdir", "cp", "cat", "sleep")


def _run(argv: list[str], *, what: str, timeout: float = 300, **kw: Any) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode != 0:
        raise LabError(f"{what} failed ({r.returncode}): {' '.join(argv)}\n{(r.stderr or r.stdout)[-2000:]}")
    return r.stdout


def _kube_module_dir() -> Path:
    """Where the Go module cache holds k8s.io/kubernetes (its build/pause/linux/pause.c)."""
    out = _run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"],
        what="go list",
        cwd=ROOT / "tests" / "kube",
        timeout=120,
    )
    return Path(out.strip())


def exporter_metrics() -> str:
    """The vLLM V1 exporter text the project's simulated exporter serves (lab/peers/exporters.py)."""
    from lab.peers.exporters import VllmExporter

    e = VllmExporter(generation="v1", engines=1, model_name="qwen2.5-7b")
    e.waiting = 0
    e.running = 1
    return e.render()


def build_images(cache: Path) -> dict[str, Path]:
    """The pause and exporter images as OCI archives, built with buildah (vfs storage, no daemon) into `cache`
    (keyed by what makes them, so later runs reuse them). Returns image name -> archive."""
    pause_c = _kube_module_dir() / "build" / "pause" / "linux" / "pause.c"
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    if not busybox.is_file():
        raise LabError("busybox is missing (apt-get install busybox-static): the pods' image is made of it")
    metrics = exporter_metrics()
    key = hashlib.sha256(
        pause_c.read_bytes() + busybox.read_bytes() + metrics.encode() + SERVE_SH.encode()
    ).hexdigest()[:12]
    exporter_image = f"localhost/toposcale-vllm-exporter:{key}"
    out = {PAUSE_IMAGE: cache / f"pause-{key}.tar", exporter_image: cache / f"exporter-{key}.tar"}
    if all(p.is_file() for p in out.values()):
        return out
    cache.mkdir(parents=True, exist_ok=True)
    b = [
        "buildah",
        "--root",
        str(cache / "storage"),
        "--runroot",
        str(cache / "runroot"),
        "--storage-driver",
        "vfs",
    ]
    work = cache / f"work-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        # pause exactly as build/pause/Makefile compiles it (CFLAGS), a static binary on an empty image.
        _run(
            [
                "gcc",
                "-Os",
                "-Wall",
                "-Werror",
                "-static",
                f"-DVERSION=v{PAUSE_TAG}-toposcale",
                "-o",
                str(work / "pause"),
                str(pause_c),
            ],
            what="compiling pause.c",
        )
        ctr = _run([*b, "from", "scratch"], what="buildah from").strip()
        try:
            _run([*b, "copy", ctr, str(work / "pause"), "/pause"], what="buildah copy")
            _run(
                [*b, "config", "--entrypoint", '["/pause"]', "--user", "65535:65535", ctr],
                what="buildah config",
            )
            _run([*b, "commit", "-q", ctr, PAUSE_IMAGE], what="buildah commit")
        finally:
            subprocess.run([*b, "rm", ctr], capture_output=True)
        fs = work / "rootfs"
        (fs / "bin").mkdir(parents=True)
        (fs / "tmp").mkdir(mode=0o1777)
        shutil.copy2(busybox, fs / "bin" / "busybox")
        for applet in BUSYBOX_APPLETS:
            (fs / "bin" / applet).symlink_to("busybox")
        (fs / "metrics.txt").write_text(metrics)
        (fs / "serve.sh").write_text(SERVE_SH)
        (fs / "serve.sh").chmod(0o755)
        ctr = _run([*b, "from", "scratch"], what="buildah from").strip()
        try:
            _run([*b, "copy", ctr, f"{fs}/.", "/"], what="buildah copy")
            _run(
                [
                    *b,
                    "config",
                    "--cmd",
                    '["/bin/sh", "/serve.sh"]',
                    "--env",
                    "PATH=/bin",
                    "--port",
                    str(EXPORTER_PORT),
                    ctr,
                ],
                what="buildah config",
            )
            _run([*b, "commit", "-q", ctr, exporter_image], what="buildah commit")
        finally:
            subprocess.run([*b, "rm", ctr], capture_output=True)
        for name, archive in out.items():
            tmp = archive.with_suffix(f".{os.getpid()}.tmp")  # another run may be building it too
            tmp.unlink(missing_ok=True)
            _run([*b, "push", "-q", name, f"oci-archive:{tmp}:{name}"], what="buildah push")
            tmp.replace(archive)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def exporter_image(images: dict[str, Path]) -> str:
    return next(name for name in images if name != PAUSE_IMAGE)


# --- one node ----------------------------------------------------------------------------------------------


@dataclass
class LabNode:
    name: str
    topology: dict[str, Any]  # the device plugin's --topology: one topology of tests/gpuallocator's input
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)
    # set by the lab
    dir: str = ""
    cgroup: str = ""  # /toposcale-lab-<run>-<index>
    bridge: str = ""
    subnet: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)  # containerd, kubelet, deviceplugin
    argv: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_fixture(
        cls,
        name: str,
        source: Path,
        *,
        labels: dict[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
    ) -> LabNode:
        """A node whose GPUs are a fixture's (a `nvidia-smi topo -m` text or an NVML capture), with the device
        IDs the agent reads from that fixture and the NUMA node of each GPU as its topology hint."""
        from lab.kube.gpu_kubelet import GpuNode

        g = GpuNode(name, source)
        topo = json.loads(json.dumps(g.nvml))
        for i, gpu in enumerate(topo["gpus"]):
            gpu["uuid"] = g.go_ids[i]
            numa = g.topo.gpus[i].numa
            if numa >= 0:
                gpu["numaNode"] = numa
        return cls(name=name, topology=topo, labels=dict(labels or {}), taints=list(taints or []))

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def gpu_ids(self) -> list[str]:
        return [g["uuid"] for g in self.topology["gpus"]]

    @property
    def containerd_socket(self) -> Path:
        return self.path / "containerd.sock"

    @property
    def plugin_dir(self) -> Path:
        return self.path / "device-plugins"

    @property
    def kubelet_root(self) -> Path:
        return self.path / "kubelet"

    @property
    def pod_resources_socket(self) -> Path:
        return self.kubelet_root / "pod-resources" / "kubelet.sock"

    def log(self, component: str) -> Path:
        return self.path / f"{component}.log"

    def log_tail(self, component: str, lines: int = 25) -> str:
        try:
            text = self.log(component).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def _cgroup_dirs(cgroup: str) -> list[Path]:
    """The node's cgroup in every hierarchy mounted under /sys/fs/cgroup (the kubelet's cgroupfs driver and
    runc create the pod and container cgroups in each, the hybrid mode's `unified` v2 one included)."""
    out = []
    for h in sorted(CGROUP_FS.iterdir()):
        if h.is_dir() and not h.is_symlink() and (h / "cgroup.procs").exists():
            out.append(h / cgroup.lstrip("/"))
    return out


def _cgroup_pids(cgroup: str) -> set[int]:
    """Every process in the node's pids cgroup tree (containerd, shims, containers, pods)."""
    pids: set[int] = set()
    top = CGROUP_FS / "pids" / cgroup.lstrip("/")
    if not top.is_dir():
        return pids
    for d, _dirs, files in os.walk(top):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                pids |= {int(x) for x in (Path(d) / "cgroup.procs").read_text().split()}
    return pids


def _remove_cgroups(cgroup: str) -> None:
    for top in _cgroup_dirs(cgroup):
        if not top.is_dir():
            continue
        # deepest first: a cgroup directory goes with rmdir once it has no children and no processes
        for d, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(Path(w[0]).parts)):
            with contextlib.suppress(OSError):
                os.rmdir(d)


def _used_subnets() -> set[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    nets = set()
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            with contextlib.suppress(ValueError):
                nets.add(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return nets


def _pick_subnet(taken: set[ipaddress.IPv4Network], start: int) -> ipaddress.IPv4Network:
    """A /24 of POD_SUPERNET that no address of this machine is in, scanning from `start` (the lab's random
    run id: two labs starting at once rarely pick the same before either made its bridge)."""
    used = _used_subnets() | taken
    nets = list(POD_SUPERNET.subnets(new_prefix=24))
    for i in range(len(nets)):
        net = nets[(start + i) % len(nets)]
        if not any(net.overlaps(u) for u in used):
            return net
    raise LabError(f"no free /24 left in {POD_SUPERNET} for a node's pods")


# --- the lab -----------------------------------------------------------------------------------------------


@dataclass
class KubeletLab:
    dir: Path
    cluster_dir: Path
    bin_dir: Path
    deviceplugin: Path
    images: dict[str, str] = field(default_factory=dict)  # image name -> OCI archive
    run_id: str = ""
    nodes: dict[str, LabNode] = field(default_factory=dict)

    @classmethod
    def create(
        cls, cluster: Cluster, directory: Path, *, deviceplugin: Path, image_cache: Path
    ) -> KubeletLab:
        if os.geteuid() != 0:
            raise LabError("real kubelets need root (containerd, cgroups, network namespaces)")
        for tool in ("containerd", "ctr", "runc", "unshare", "nsenter", "buildah", "gcc", "ip", "go"):
            if shutil.which(tool) is None:
                raise LabError(
                    f"{tool} is missing: Go >= 1.26 (the pause image is compiled from the Go module cache's "
                    "k8s.io/kubernetes) and apt-get install containerd runc containernetworking-plugins "
                    "busybox-static buildah gcc util-linux iproute2"
                )
        if not (CNI_BIN_DIR / "bridge").exists():
            raise LabError(f"no CNI plugins in {CNI_BIN_DIR} (apt-get install containernetworking-plugins)")
        if not (CGROUP_FS / "pids" / "cgroup.procs").is_file():
            # What the CI machines have; a unified-only (cgroup v2) host would need the kubelet's cgroup root
            # and the runtime's cgroup made with controllers delegated, which nothing here has run on yet.
            raise LabError(
                f"no cgroup v1 pids hierarchy at {CGROUP_FS / 'pids'}: the lab runs on cgroup v1 or hybrid "
                "hosts"
            )
        if not (cluster.bin_dir / "kubelet").is_file():
            raise LabError(f"no kubelet in {cluster.bin_dir} (./scripts/kube.sh bin-dir builds it)")
        d = directory.resolve()
        for hidden in ("/var/lib", "/run", "/var/run"):
            if d == Path(hidden) or Path(hidden) in d.parents:
                raise LabError(
                    f"{d} is under {hidden}, which each node's mount namespace covers: pick another DIR"
                )
        d.mkdir(parents=True, exist_ok=True)
        images = build_images(image_cache)
        lab = cls(
            dir=d,
            cluster_dir=cluster.dir,
            bin_dir=cluster.bin_dir,
            deviceplugin=deviceplugin,
            images={k: str(v) for k, v in images.items()},
            run_id=os.urandom(3).hex(),
        )
        lab.save()
        return lab

    @property
    def cluster(self) -> Cluster:
        return Cluster.load(self.cluster_dir)

    @property
    def exporter_image(self) -> str:
        return exporter_image({k: Path(v) for k, v in self.images.items()})

    # -- state --

    def save(self) -> None:
        doc = {
            "dir": str(self.dir),
            "cluster_dir": str(self.cluster_dir),
            "bin_dir": str(self.bin_dir),
            "deviceplugin": str(self.deviceplugin),
            "images": self.images,
            "run_id": self.run_id,
            "nodes": [asdict(n) for n in self.nodes.values()],
        }
        tmp = self.dir / (STATE + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(self.dir / STATE)

    @classmethod
    def load(cls, directory: Path) -> KubeletLab:
        doc = json.loads((directory / STATE).read_text())
        lab = cls(
            dir=Path(doc["dir"]),
            cluster_dir=Path(doc["cluster_dir"]),
            bin_dir=Path(doc["bin_dir"]),
            deviceplugin=Path(doc["deviceplugin"]),
            images=doc["images"],
            run_id=doc["run_id"],
        )
        for n in doc["nodes"]:
            lab.nodes[n["name"]] = LabNode(**n)
        return lab

    # -- start --

    def add(self, node: LabNode) -> LabNode:
        # A unix socket path holds at most 107 bytes; the longest here is the kubelet's pod-resources socket.
        longest = self.dir / node.name / "kubelet" / "pod-resources" / "kubelet.sock"
        if len(str(longest).encode()) > 107:
            raise LabError(f"{longest} is too long for a unix socket (107 bytes at most): pick a shorter DIR")
        index = len(self.nodes)
        node.dir = str(self.dir / node.name)
        node.cgroup = f"/toposcale-lab-{self.run_id}-{index}"
        node.bridge = f"tsl{self.run_id}{index:x}"[:15]
        taken = {ipaddress.ip_network(n.subnet) for n in self.nodes.values()}
        node.subnet = str(_pick_subnet(taken, int(self.run_id, 16)))
        node.ports = {"kubelet": free_port(), "healthz": free_port()}
        self.nodes[node.name] = node
        self.save()
        return node

    def start(self, names: list[str] | None = None) -> None:
        """Start the nodes (all not yet started by default) and wait until each is Ready with its GPUs
        allocatable; a node that does not come up stops the whole lab (`down`) and raises LabError."""
        todo = [self.nodes[n] for n in (names or self.nodes)]
        self._kubelet_api_access()
        try:
            for node in todo:
                self._prepare(node)
                self._start_containerd(node)
                self._import_images(node)
                self._start_kubelet(node)
                self._start_deviceplugin(node)
            for node in todo:
                self.wait_ready(node.name)
        except BaseException:
            self.down(remove_files=False)
            raise

    def _prepare(self, node: LabNode) -> None:
        p = node.path
        for sub in ("containerd-root", "containerd-state", "cni", "device-plugins", "kubelet"):
            (p / sub).mkdir(parents=True, exist_ok=True)
        (p / "resolv.conf").write_text(Path("/etc/resolv.conf").read_text())
        (p / "topology.json").write_text(json.dumps(node.topology, indent=1) + "\n")
        for cg in _cgroup_dirs(node.cgroup):
            cg.mkdir(exist_ok=True)
            if cg.parent.name == "cpuset":  # a new v1 cpuset has no CPUs or memory nodes: the machine's
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (cg / f).write_text((cg.parent / f).read_text())
        (CGROUP_FS / "pids" / node.cgroup.lstrip("/") / "runtime").mkdir(exist_ok=True)
        # containerd: private socket, root and state; CRI with the native snapshotter and our sandbox image.
        (p / "containerd.toml").write_text(f"""version = 2
root = "{p / "containerd-root"}"
state = "{p / "containerd-state"}"
# Plugins that need what a CI machine has not (overlay mounts, btrfs, zfs, device mapper) or that reach out.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.overlayfs", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{node.containerd_socket}"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  # The kubelet asks -998 for sandboxes, which CI machines refuse to root ("nsexec: failed to update
  # /proc/self/oom_score_adj: Permission denied", then runc's "can't get final child's PID from pipe: EOF"):
  # no container gets a lower score than containerd's own.
  restrict_oom_score_adj = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{p / "cni"}"
    max_conf_num = 1
""")
        (p / "cni" / "10-toposcale-lab.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": f"toposcale-lab-{node.name}",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": node.bridge,
                            "isGateway": True,
                            "ipMasq": False,
                            "ipam": {"type": "host-local", "ranges": [[{"subnet": node.subnet}]]},
                        },
                        {"type": "loopback"},
                    ],
                },
                indent=1,
            )
            + "\n"
        )
        # the kubelet: a client certificate of the cluster CA as the Node authorizer expects it
        cluster = self.cluster
        pki = KubePki(p / "pki")
        ca_cert = x509.load_pem_x509_certificate((cluster.pki_dir / "ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((cluster.pki_dir / "ca.key").read_bytes(), None)
        pki.leaf(
            "kubelet-client",
            (ca_cert, ca_key),  # type: ignore[arg-type]
            f"system:node:{node.name}",
            orgs=("system:nodes",),
            client=True,
        )
        write_kubeconfig(
            p / "kubelet.kubeconfig",
            cluster.server,
            cluster.ca_file,
            cert=p / "pki" / "kubelet-client.crt",
            key=p / "pki" / "kubelet-client.key",
            user=f"system:node:{node.name}",
        )
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "0.0.0.0",
            "port": node.ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": node.ports["healthz"],
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(cluster.ca_file)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": node.cgroup,
            "cgroupsPerQOS": True,
            "enforceNodeAllocatable": ["pods"],
            # CI machines run cgroup v1, which the kubelet refuses by default since 1.35.
            "failCgroupV1": False,
            "failSwapOn": False,
            "registerWithTaints": node.taints,
            "clusterDomain": "cluster.local",
            # A copy: /etc/resolv.conf may point into /run, which the node's namespace covers.
            "resolvConf": str(p / "resolv.conf"),
            "serializeImagePulls": False,
            # A CI disk nearly full must not evict the pods or taint the node.
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "nodeStatusUpdateFrequency": "2s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "shutdownGracePeriod": "0s",
            "maxPods": 32,
            "podPidsLimit": 1024,
            "containerLogMaxSize": "1Mi",
            "containerLogMaxFiles": 2,
            "logging": {"format": "text"},
        }
        (p / "kubelet.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        labels = ",".join(f"{k}={v}" for k, v in sorted(node.labels.items()))
        node.argv["kubelet"] = [
            "nsenter",
            "--mount=/proc/{containerd}/ns/mnt",
            "--",
            str(self.bin_dir / "kubelet"),
            f"--config={p / 'kubelet.yaml'}",
            f"--kubeconfig={p / 'kubelet.kubeconfig'}",
            f"--root-dir={node.kubelet_root}",
            f"--cert-dir={p / 'pki' / 'kubelet-serving'}",
            f"--hostname-override={node.name}",
            *([f"--node-labels={labels}"] if labels else []),
            "--v=2",
        ]
        node.argv["deviceplugin"] = [
            str(self.deviceplugin),
            f"--topology={p / 'topology.json'}",
            f"--plugin-dir={node.plugin_dir}",
        ]
        self.save()

    def _spawn(self, node: LabNode, name: str, argv: list[str]) -> int:
        with node.log(name).open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=node.path,
            )
        node.pids[name] = proc.pid
        self.save()
        return proc.pid

    def _start_containerd(self, node: LabNode) -> None:
        p = node.path
        runtime_cg = CGROUP_FS / "pids" / node.cgroup.lstrip("/") / "runtime" / "cgroup.procs"
        # In the node's own mount namespace (see the module docstring); in its pids cgroup before exec, so
        # the shims and containers containerd starts are found there by `down`.
        script = (
            f'echo $$ > "{runtime_cg}" && '
            "mount -t tmpfs -o mode=0755 toposcale-lab /run && "
            "mount -t tmpfs -o mode=0755 toposcale-lab /var/lib && "
            "mkdir -p /var/lib/kubelet/device-plugins && "
            f'mount --bind "{node.plugin_dir}" /var/lib/kubelet/device-plugins && '
            f'exec containerd --config "{p / "containerd.toml"}"'
        )
        node.argv["containerd"] = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script]
        self._spawn(node, "containerd", node.argv["containerd"])
        deadline = time.monotonic() + 30
        last = ""
        while time.monotonic() < deadline:
            if not pid_alive(node.pids["containerd"]):
                raise LabError(
                    f"containerd of {node.name} exited during start-up:\n{node.log_tail('containerd')}"
                )
            r = subprocess.run(
                ["ctr", "-a", str(node.containerd_socket), "version"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if r.returncode == 0:
                return
            last = r.stderr.strip()
            time.sleep(0.2)
        raise LabError(
            f"containerd of {node.name} not answering after 30 s ({last}):\n{node.log_tail('containerd')}"
        )

    def _import_images(self, node: LabNode) -> None:
        for archive in self.images.values():
            _run(
                [
                    "ctr",
                    "-a",
                    str(node.containerd_socket),
                    "-n",
                    "k8s.io",
                    "images",
                    "import",
                    "--snapshotter",
                    "native",
                    archive,
                ],
                what=f"importing {archive} into {node.name}'s containerd",
            )

    def _start_kubelet(self, node: LabNode) -> None:
        argv = [a.replace("{containerd}", str(node.pids["containerd"])) for a in node.argv["kubelet"]]
        self._spawn(node, "kubelet", argv)

    def _start_deviceplugin(self, node: LabNode) -> None:
        self._spawn(node, "deviceplugin", node.argv["deviceplugin"])

    # -- readiness --

    def _api(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
        cluster = self.cluster
        ctx = cluster.admin_ssl()
        req = urllib.request.Request(
            cluster.server + path,
            method=method,
            headers={"Content-Type": ctype},
            data=None if body is None else json.dumps(body).encode(),
        )
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return json.loads(r.read() or b"{}")

    def _kubelet_api_access(self) -> None:
        """kube-apiserver's kubelet client (`kubectl logs`, `exec`) may use the kubelets' API, as kubeadm
        grants it: the ClusterRole system:kubelet-api-admin for the user of its certificate."""
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "toposcale-lab:apiserver-kubelet-client"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:kubelet-api-admin",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": "kube-apiserver-kubelet-client",
                }
            ],
        }
        try:
            self._api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)
        except urllib.error.HTTPError as e:
            if e.code != 409:  # made by an earlier lab on this control plane
                raise LabError(f"granting kube-apiserver the kubelets' API: HTTP {e.code}") from e

    def node_object(self, name: str) -> dict[str, Any] | None:
        try:
            return self._api("GET", f"/api/v1/nodes/{name}")  # type: ignore[no-any-return]
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def _ready_with_gpus(self, name: str) -> dict[str, Any] | None:
        """The Node object when it is Ready with every GPU of the node allocatable, else None."""
        obj = self.node_object(name)
        if obj is None:
            return None
        status = obj.get("status", {})
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
        gpus = status.get("allocatable", {}).get(RESOURCE)
        return obj if ready and gpus == str(len(self.nodes[name].gpu_ids)) else None

    def wait_ready(self, name: str, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        """Until the Node is Ready with every GPU allocatable (the device plugin registered), then lift the
        not-ready taint the node lifecycle controller would (see the module docstring)."""
        node = self.nodes[name]
        deadline = time.monotonic() + timeout
        last = "no Ready Node with its GPUs yet"
        while time.monotonic() < deadline:
            for comp in ("containerd", "kubelet", "deviceplugin"):
                if not pid_alive(node.pids[comp]):
                    raise LabError(f"{comp} of {name} exited:\n{node.log_tail(comp)}")
            try:
                obj = self._ready_with_gpus(name)
            except (OSError, ValueError) as e:
                obj, last = None, str(e)
            if obj is not None:
                taints = obj["spec"].get("taints") or []
                keep = [t for t in taints if t.get("key") != NOT_READY_TAINT]
                if keep != taints:
                    self._api(
                        "PATCH",
                        f"/api/v1/nodes/{name}",
                        {"spec": {"taints": keep or None}},
                        ctype="application/merge-patch+json",
                    )
                return self.node_object(name) or obj
            time.sleep(0.5)
        raise LabError(
            f"node {name} not ready after {timeout:.0f} s ({last}); kubelet log:\n"
            f"{node.log_tail('kubelet', 40)}"
        )

    # -- faults --

    def restart_kubelet(self, name: str, *, sig: int = signal.SIGKILL, down_s: float = 0.0) -> None:
        """Stop the node's kubelet (SIGKILL by default: no goodbye) and start it again, same flags, dirs and
        ports; its pods keep running in containerd meanwhile. Returns once the node is back: the new kubelet
        running, the device plugin registered with it, and the Node Ready with every GPU allocatable for
        STATUS_SETTLE_S. (Until the plugin registers again, the restarted kubelet reports the GPUs of its
        checkpoint as capacity but not allocatable, and its next status update may still say so: a Node
        read at the wrong moment says 0.)"""
        node = self.nodes[name]
        registered = self.registrations(name)
        pid = node.pids["kubelet"]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + 15
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(down_s)
        self._start_kubelet(node)
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.registrations(name) <= registered:
            if not pid_alive(node.pids["kubelet"]):
                raise LabError(f"the restarted kubelet of {name} exited:\n{node.log_tail('kubelet')}")
            if time.monotonic() > deadline:
                raise LabError(
                    f"the device plugin of {name} did not register with the restarted kubelet:\n"
                    f"{node.log_tail('deviceplugin')}"
                )
            time.sleep(0.1)
        steady_since: float | None = None
        while True:
            ok = self._ready_with_gpus(name) is not None
            now = time.monotonic()
            if ok:
                steady_since = steady_since or now
                if now - steady_since >= STATUS_SETTLE_S:
                    return
            else:
                steady_since = None
            if now > deadline:
                raise LabError(
                    f"node {name} not back after the kubelet restart; kubelet log:\n"
                    f"{node.log_tail('kubelet', 40)}"
                )
            time.sleep(0.5)

    def registrations(self, name: str) -> int:
        """How often the node's device plugin registered with a kubelet (its log's `registered` events)."""
        try:
            text = self.nodes[name].log("deviceplugin").read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if '"event":"registered"' in line)

    # -- down --

    def down(self, *, remove_files: bool = True) -> list[str]:
        """Stop every node: the kubelets and device plugins by PID, then every process of the node's cgroups
        (containerd, shims, containers) by PID; remove the cgroups, the bridges and (remove_files) DIR.
        Returns what could not be cleaned (empty when all went)."""
        problems: list[str] = []
        for node in self.nodes.values():
            for comp in ("kubelet", "deviceplugin"):
                if pid := node.pids.get(comp):
                    terminate_pid(pid, grace=5)
            if pid := node.pids.get("containerd"):
                terminate_pid(pid, grace=5)
            deadline = time.monotonic() + 15
            while (left := _cgroup_pids(node.cgroup)) and time.monotonic() < deadline:
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
            if left := _cgroup_pids(node.cgroup):
                problems.append(f"{node.name}: processes {sorted(left)} still in {node.cgroup}")
            # A cgroup whose last task just died can refuse rmdir (EBUSY) for a moment: try again.
            deadline = time.monotonic() + 10
            _remove_cgroups(node.cgroup)
            while any(d.exists() for d in _cgroup_dirs(node.cgroup)) and time.monotonic() < deadline:
                time.sleep(0.2)
                _remove_cgroups(node.cgroup)
            if any(d.exists() for d in _cgroup_dirs(node.cgroup)):
                problems.append(f"{node.name}: cgroup {node.cgroup} could not be removed")
            if node.bridge and Path(f"/sys/class/net/{node.bridge}").exists():
                r = subprocess.run(["ip", "link", "delete", node.bridge], capture_output=True, text=True)
                if r.returncode != 0:
                    problems.append(f"{node.name}: bridge {node.bridge}: {r.stderr.strip()}")
        if remove_files:
            shutil.rmtree(self.dir, ignore_errors=True)
        return problems


# --- command line (scripts/kube.sh up DIR --kubelets N, down DIR) ------------------------------------------

LAB_DIR = "kubelets"  # under the control plane's DIR
# What `kube.sh up DIR --kubelets N` runs: GPU nodes of two fixture topologies, in turn.
DEFAULT_FIXTURES = (
    ROOT / "tests" / "fixtures" / "topologies" / "a100-4gpu-bridged-pairs-two-sockets.txt",
    ROOT / "tests" / "fixtures" / "topologies" / "l40s-4gpu-two-per-socket.txt",
)


def image_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "toposcale" / "kubelet-lab"


def example_pods(lab: KubeletLab) -> list[dict[str, Any]]:
    """One exporter pod per node (pinned by nodeName), Ready through its readiness probe on /metrics."""
    return [exporter_pod(f"exporter-{n}", lab.exporter_image, node=n) for n in lab.nodes]


def exporter_pod(
    name: str, image: str, *, node: str | None = None, gpus: int = 0, extra_spec: dict[str, Any] | None = None
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "exporter",
        "image": image,
        "imagePullPolicy": "Never",  # imported into containerd by the lab; nothing is pulled
        "ports": [{"name": "metrics", "containerPort": EXPORTER_PORT}],
        "readinessProbe": {
            "httpGet": {"path": "/metrics", "port": EXPORTER_PORT},
            "periodSeconds": 1,
            "failureThreshold": 3,
        },
    }
    if gpus:
        container["resources"] = {"limits": {RESOURCE: str(gpus)}}
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [container],
        **(extra_spec or {}),
    }
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "toposcale-lab"}},
        "spec": spec,
    }


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from lab.kube.cluster import down_refusal

    ap = argparse.ArgumentParser(prog="kube.sh", allow_abbrev=False, description="real kubelets for the lab")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", allow_abbrev=False, help="start N real nodes for the control plane in DIR")
    up.add_argument("dir", type=Path)
    up.add_argument("--count", type=int, required=True)
    up.add_argument("--deviceplugin", type=Path, required=True)
    dn = sub.add_parser("down", allow_abbrev=False, help="stop the real nodes of DIR (if any), remove them")
    dn.add_argument("dir", type=Path)
    a = ap.parse_args(argv)
    d = a.dir.resolve()
    if a.cmd == "down":
        # A DIR `kube.sh down` refuses (lab.kube.cluster says why) or one without real nodes.
        if down_refusal(d) is not None or not (d / LAB_DIR / STATE).is_file():
            return 0
        problems = KubeletLab.load(d / LAB_DIR).down()
        for p in problems:
            print(f"kube.sh: down: {p}", file=sys.stderr)
        return 1 if problems else 0
    if a.count < 1:
        print("kube.sh: --kubelets needs a number >= 1", file=sys.stderr)
        return 2
    start = time.monotonic()
    try:
        lab = KubeletLab.create(
            Cluster.load(d), d / LAB_DIR, deviceplugin=a.deviceplugin.resolve(), image_cache=image_cache_dir()
        )
        for i in range(a.count):
            lab.add(
                LabNode.from_fixture(
                    f"node-{i}",
                    DEFAULT_FIXTURES[i % len(DEFAULT_FIXTURES)],
                    labels={"nvidia.com/gpu.present": "true"},
                )
            )
        lab.start()
    except (LabError, OSError, subprocess.SubprocessError) as e:
        print(f"kube.sh: {e}", file=sys.stderr)
        # start() stopped what it had started; the files go too (`kube.sh down` then removes the rest)
        shutil.rmtree(d / LAB_DIR, ignore_errors=True)
        return 1
    pods = d / LAB_DIR / "example-pods.yaml"
    pods.write_text(yaml.safe_dump_all(example_pods(lab), sort_keys=False))
    print(
        f"kube.sh: {a.count} kubelet(s) Ready in {time.monotonic() - start:.1f} s: {', '.join(lab.nodes)} "
        f"(a pod on each: kubectl --kubeconfig {d / 'admin.kubeconfig'} apply -f {pods})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
