"""The real kube-scheduler calling the real extender: the harness of tests/scheduler (and tests/kubelet).

What runs, all on loopback against the session's control plane (lab/kube/cluster.py) with deploy/
applied (lab/peers/deployed.py):

- a fleet of fake GPU nodes (`fleet`, one per test package run): Node objects as deploy/ expects them (the
  `nvidia.com/gpu` NoSchedule taint, `nvidia.com/gpu.present=true`, GPU capacity), Ready, served by the
  in-test kubelet of lab/kube/gpu_kubelet.py, which gives each bound pod the GPUs the **real**
  go-gpuallocator best-effort policy picks from the node's free GPUs in a shuffled order and reports them over
  the kubelet pod-resources gRPC API;
- one real `toposcale agent` per node (its own ServiceAccount token), reading its hardware from a fixture
  (`--from-topo-file` or `--from-capture`) and the allocation from that pod-resources API, publishing both
  annotations: nothing in these tests writes them;
- per test, a kube-scheduler of its own (the binary the session built) running the shipped
  deploy/extender/scheduler-config.yaml changed only in `ALLOWED_CHANGES` (asserted every time it is
  written), authenticated as the shipped `toposcale-scheduler` ServiceAccount (deploy/extender/
  scheduler-rbac.yaml), and `toposcale extender` with its own ServiceAccount (watch mode) or `--standalone`
  (the `nodeCacheCapable: false` run).

Pods are the vLLM example's pod (deploy/examples/qwen/deployment.yaml: `schedulerName: toposcale-scheduler`,
the GPU toleration, cpu/memory in the example's proportion) plus a nodeSelector on the fleet's label, so that
Nodes other tests leave behind never enter a placement. They are created with a scheduling gate, so that the
extender's `/explain` can be read "at that moment" (every earlier pod placed, its GPUs published by the agent
and seen by the extender) before the gate is lifted and the scheduler takes the pod.

The scheduler runs with `--vmodule=schedule_one=10`: its own log then names every plugin's and the
extender's score per node (`Plugin scored node for pod`, `Extender scored node for pod`, `Calculated node's
final score for pod`), which the tests read to show what decided each placement.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from toposcale.extender.topology.allocator import candidates, indices_of, mask_of

from lab.kube.client import Api, ApiError
from lab.kube.cluster import free_port, write_kubeconfig
from lab.kube.gpu_kubelet import FIXTURES, RESOURCE, GpuKubelet, GpuNode
from lab.peers.deployed import TOPOSCALE, Deployed, sa_token
from lab.procs import Child

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = ROOT / "deploy" / "extender" / "scheduler-config.yaml"
SCHEDULER_NAME = "toposcale-scheduler"
FLEET_LABEL = {"toposcale.test/fleet": "scheduler-e2e"}
EXTENDER_WEIGHT_FACTOR = 10  # kube-scheduler: score * weight * (MaxNodeScore 100 / MaxExtenderPriority 10)
TOPO = FIXTURES / "topologies"
# Mixed, from the real fixtures: NVSwitch 8-GPU, NVLink-bridged pairs (8 and 4 GPUs, pairs on two sockets),
# PCIe only with two GPUs per socket, and a 4x H100 NVSwitch VM replayed from its NVML capture.
FLEET = (
    ("e2e-hgx", TOPO / "hgx-h100-nvswitch-8gpu.txt"),
    ("e2e-a6000", TOPO / "a6000-8gpu-nvlink-bridge-pairs.txt"),
    ("e2e-a100", TOPO / "a100-4gpu-bridged-pairs-two-sockets.txt"),
    ("e2e-l40s", TOPO / "l40s-4gpu-two-per-socket.txt"),
    ("e2e-h100vm", FIXTURES / "nvml" / "h100-x4-vm-nvswitch" / "nvml_capture.json"),
)


# --- the shipped scheduler configuration, changed only where a test must -----------------------------------

# (path in the document) -> why a test changes it. Nothing else may differ from the shipped file.
ALLOWED_CHANGES = {
    ("extenders", 0, "urlPrefix"): "the extender listens on loopback, not behind its Service",
    ("leaderElection", "leaderElect"): "one scheduler per test, no Lease to wait for",
    ("clientConnection", "kubeconfig"): "no in-cluster service account: the ServiceAccount's token file",
    ("extenders", 0, "nodeCacheCapable"): "only in the nodeCacheCapable: false run (full Node objects)",
}


_MISSING = object()


def config_diff(a: Any, b: Any, path: tuple[Any, ...] = ()) -> set[tuple[Any, ...]]:
    """Paths to the leaves (keys and list indices) where two YAML documents differ, a key only one of them
    has included (a mapping only one side has counts by its leaves)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[tuple[Any, ...]] = set()
        for key in set(a) | set(b):
            x, y = a.get(key, _MISSING), b.get(key, _MISSING)
            if x is _MISSING and isinstance(y, dict):
                x = {}
            if y is _MISSING and isinstance(x, dict):
                y = {}
            out |= config_diff(x, y, (*path, key))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = set()
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out |= config_diff(x, y, (*path, i))
        return out
    return set() if a == b else {path}


def scheduler_config(
    extender_url: str, kubeconfig: Path, *, node_cache_capable: bool = True
) -> dict[str, Any]:
    doc = yaml.safe_load(SHIPPED_CONFIG.read_text())
    doc["extenders"][0]["urlPrefix"] = extender_url
    doc["leaderElection"]["leaderElect"] = False
    doc.setdefault("clientConnection", {})["kubeconfig"] = str(kubeconfig)
    if not node_cache_capable:
        doc["extenders"][0]["nodeCacheCapable"] = False
    return doc


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            got = check()
        except (ApiError, OSError, ValueError) as exc:
            got, last = None, exc
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last})")


# --- processes ---------------------------------------------------------------------------------------------


def service(name: str, argv: list[str], log: Path) -> Child:
    """A toposcale command or peer as a child process, appending to `log` (unbuffered Python output)."""
    return Child(
        argv, log, name=name, extra_env={"PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL, log_mode="ab"
    )


def http_get(url: str, *, ctx: ssl.SSLContext | None = None, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def http_post(url: str, body: Any, timeout: float = 10) -> tuple[int, str]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


class Extender:
    """`toposcale extender` on loopback: watch mode with its ServiceAccount, or --standalone."""

    def __init__(
        self,
        deployed: Deployed,
        work: Path,
        *,
        standalone: bool = False,
        port: int | None = None,
        kubeconfig: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.standalone = standalone
        argv = [str(TOPOSCALE), "extender", "--host", "127.0.0.1", "--port", str(self.port)]
        if standalone:
            argv.append("--standalone")
        else:
            argv += ["--kubeconfig", str(kubeconfig or deployed.kubeconfigs["toposcale-extender"])]
        self.proc = service("extender", argv, work / f"extender-{self.port}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait_ready: bool = True) -> Extender:
        self.proc.start()
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            assert self.proc.alive, f"the extender exited:\n{self.proc.tail()}"
            try:
                return http_get(self.url + "/readyz")[0] == 200
            except OSError:
                return False

        wait_for(ready, timeout, "the extender's /readyz")

    def readyz(self) -> tuple[int, str]:
        return http_get(self.url + "/readyz")

    def explain(self, ns: str, pod: str) -> dict[str, Any]:
        status, text = http_get(self.url + "/explain?" + urllib.parse.urlencode({"pod": f"{ns}/{pod}"}))
        assert status == 200, f"GET /explain: {status} {text}"
        return json.loads(text)  # type: ignore[no-any-return]

    def explain_nodes(self, pod: dict[str, Any], nodes: list[dict[str, Any]]) -> dict[str, Any]:
        """POST /explain with full Node objects: what a nodeCacheCapable: false scheduler sends."""
        status, text = http_post(
            self.url + "/explain", {"Pod": pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": None}
        )
        assert status == 200, f"POST /explain: {status} {text}"
        return json.loads(text)  # type: ignore[no-any-return]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.proc.stop(sig)


_SCORE_LINE = re.compile(
    r'"(?P<what>Plugin scored node for pod|Extender scored node for pod'
    r"|Calculated node's final score for pod)"
    '"'
    r'.*?pod="(?P<pod>[^"]+)"(?:.*?plugin="(?P<plugin>[^"]+)")?(?:.*?extender="(?P<ext>[^"]*)")?'
    r'.*?node="(?P<node>[^"]+)".*?score=(?P<score>-?\d+)'
)


@dataclass
class Attempt:
    """One scheduling attempt's scores, from the scheduler's own log (schedule_one.go at V(10))."""

    plugins: dict[str, dict[str, int]] = field(default_factory=dict)  # node -> plugin -> score
    extender: dict[str, int] = field(default_factory=dict)  # node -> the extender's 0..10
    final: dict[str, int] = field(default_factory=dict)  # node -> total


class Scheduler:
    """A kube-scheduler of the test's own, on the shipped configuration (see ALLOWED_CHANGES)."""

    def __init__(
        self, deployed: Deployed, work: Path, extender_url: str, *, node_cache_capable: bool = True
    ) -> None:
        cluster = deployed.cluster
        self.cluster = cluster
        self.port = free_port()
        token = sa_token(cluster, "toposcale", "toposcale-scheduler")
        kc = write_kubeconfig(
            work / "toposcale-scheduler.kubeconfig",
            cluster.server,
            cluster.ca_file,
            token=token,
            user="toposcale-scheduler",
        )
        self.config = scheduler_config(extender_url, kc, node_cache_capable=node_cache_capable)
        self.diff = config_diff(yaml.safe_load(SHIPPED_CONFIG.read_text()), self.config)
        assert self.diff <= set(ALLOWED_CHANGES), f"config changes beyond the allowed keys: {self.diff}"
        self.config_path = work / f"scheduler-config-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        p = cluster.pki_dir
        argv = [
            str(cluster.bin_dir / "kube-scheduler"),
            f"--config={self.config_path}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            f"--secure-port={self.port}",
            "--bind-address=127.0.0.1",
            f"--tls-cert-file={p / 'scheduler-serving.crt'}",
            f"--tls-private-key-file={p / 'scheduler-serving.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            "--profiling=false",
            "--v=2",  # as deploy/extender/scheduler-deployment.yaml runs it
            "--vmodule=schedule_one=10",  # the scores of every attempt (schedule_one.go)
        ]
        self.proc = service("kube-scheduler", argv, work / f"kube-scheduler-{self.port}.log")

    def start(self) -> Scheduler:
        self.proc.start()
        ctx = ssl.create_default_context(cafile=str(self.cluster.ca_file))

        def ready() -> bool:
            assert self.proc.alive, f"kube-scheduler exited:\n{self.proc.tail()}"
            try:
                return http_get(f"https://127.0.0.1:{self.port}/readyz", ctx=ctx)[0] == 200
            except OSError:
                return False

        wait_for(ready, 60, "kube-scheduler's /readyz")
        return self

    def stop(self) -> None:
        self.proc.stop()

    def feasible(self, ns: str, pod: str) -> int | None:
        """feasibleNodes of the pod's successful binding, from the scheduler's log."""
        m = None
        for m in re.finditer(  # noqa: B007 -- the last match
            rf'"Successfully bound pod to node" pod="{re.escape(ns)}/{re.escape(pod)}"'
            r".*?feasibleNodes=(\d+)",
            self.proc.text(),
        ):
            pass
        return int(m[1]) if m else None

    def attempts(self, ns: str, pod: str) -> list[Attempt]:
        """The scored attempts of one pod, oldest first."""
        key = f"{ns}/{pod}"
        out: list[Attempt] = []
        current: Attempt | None = None
        for line in self.proc.text().splitlines():
            if '"Attempting to schedule pod"' in line and f'pod="{key}"' in line:
                current = Attempt()
                out.append(current)
                continue
            m = _SCORE_LINE.search(line)
            if m is None or m["pod"] != key or current is None:
                continue
            node, score = m["node"], int(m["score"])
            if m["what"].startswith("Plugin"):
                current.plugins.setdefault(node, {})[m["plugin"]] = score
            elif m["what"].startswith("Extender"):
                current.extender[node] = score
            else:
                current.final[node] = score
        return [a for a in out if a.final]


# --- the fleet ---------------------------------------------------------------------------------------------


@dataclass
class Fleet:
    api: Api
    kubelet: GpuKubelet
    nodes: dict[str, GpuNode]
    agents: dict[str, Child]
    work: Path

    def allocation(self, node: str) -> set[str] | None:
        ann = self.api.node(node)["metadata"].get("annotations", {}).get("toposcale.io/gpu-allocation")
        if not ann:
            return None
        got = json.loads(ann)["allocated"]
        return None if got is None else set(got)

    def published(self) -> bool:
        """Every node's published allocation is what its kubelet holds."""
        return all(self.allocation(n) == self.kubelet.held(n) for n in self.nodes)

    def wait_published(self, timeout: float = 30) -> None:
        wait_for(self.published, timeout, "the agents to publish what the kubelet holds")

    def node_objects(self) -> list[dict[str, Any]]:
        return [self.api.node(n) for n in self.nodes]

    def free_mask(self, node: str) -> int:
        n = self.nodes[node]
        free = self.kubelet.free(node)
        return mask_of(i for i, g in enumerate(n.topo.gpus) if g.id in free)

    def ids(self, node: str, mask: int) -> set[str]:
        gpus = self.nodes[node].topo.gpus
        return {gpus[i].id for i in indices_of(mask)}

    def device_plugin_may_return(self, node: str, free_mask: int, k: int) -> list[set[str]]:
        return [self.ids(node, m) for m in candidates(self.nodes[node].topo, free_mask, k)]

    def check_agents(self) -> None:
        for name, a in self.agents.items():
            assert a.alive, f"agent of {name} exited:\n{a.tail()}"


@contextlib.contextmanager
def start_fleet(deployed: Deployed, work: Path) -> Iterator[Fleet]:
    """FLEET's GPU nodes, served by the GPU kubelet (the real go-gpuallocator), one real agent each, every
    agent's first publish awaited (the `fleet` fixture of tests/scheduler)."""
    from lab.peers.gpuallocator import go_binary

    cluster = deployed.cluster
    nodes = [GpuNode(name, src) for name, src in FLEET]
    kubelet = GpuKubelet(cluster, nodes, go_binary(), labels=FLEET_LABEL, seed=14).start()
    agents: dict[str, Child] = {}
    fleet = Fleet(Api(cluster), kubelet, {n.name: n for n in nodes}, agents, work)
    try:
        for n in nodes:
            agents[n.name] = service(
                f"agent-{n.name}",
                [
                    str(TOPOSCALE),
                    "agent",
                    "--node-name",
                    n.name,
                    *n.agent_source,
                    "--pod-resources-socket",
                    n.standin.socket,
                    "--kubeconfig",
                    str(deployed.kubeconfigs["toposcale-agent"]),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(free_port()),
                    "--interval",
                    "0.5",
                    "--min-publish-interval",
                    "0.5",
                ],
                work / f"agent-{n.name}.log",
            ).start()
        wait_for(lambda: (fleet.check_agents(), fleet.published())[1], 90, "every agent's first publish")
        yield fleet
    finally:
        for a in agents.values():
            a.stop()
        kubelet.stop()
        if kubelet.warnings:
            print("\n[gpu kubelet]", *kubelet.warnings, sep="\n  ")


@contextlib.contextmanager
def fleet_namespace(fleet: Fleet, test_name: str, nodeid: str) -> Iterator[str]:
    """A namespace of the test's own; its pods are deleted afterwards and the fleet left idle again."""
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")
    name = f"e2e-{slug[5:35].strip('-')}-{zlib.crc32(nodeid.encode()):08x}"
    api = fleet.api
    api.delete(f"/api/v1/namespaces/{name}")
    wait_for(
        lambda: api.get(f"/api/v1/namespaces/{name}", ok=(200, 404)).get("kind") != "Namespace",
        60,
        f"namespace {name} from an earlier run to go",
    )
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    try:
        yield name
    finally:
        for p in api.get(f"/api/v1/namespaces/{name}/pods")["items"]:
            api.delete(
                f"/api/v1/namespaces/{name}/pods/{p['metadata']['name']}", params={"gracePeriodSeconds": "0"}
            )
        wait_for(
            lambda: not [k for k in fleet.kubelet.assigned if k.startswith(name + "/")],
            30,
            "the kubelet to release the test's GPUs",
        )
        fleet.wait_published()
        api.delete(f"/api/v1/namespaces/{name}")


# --- pods --------------------------------------------------------------------------------------------------

GATE = "toposcale.io/e2e-explain-first"


def gpu_pod(
    name: str, gpus: int, *, scope: str | None = None, gated: bool = True, node: str | None = None
) -> dict[str, Any]:
    """The vLLM example's pod (deploy/examples/qwen/deployment.yaml), sized to `gpus` (cpu and memory in the
    example's proportion, 2 cpu and 16Gi per GPU, so NodeResourcesBalancedAllocation scores nodes alike)."""
    meta: dict[str, Any] = {"name": name, "labels": {"app": "vllm", "e2e-gpus": str(gpus)}}
    if scope:
        meta["annotations"] = {"toposcale.io/required-scope": scope}
    selector = dict(FLEET_LABEL)
    if node:
        selector["kubernetes.io/hostname"] = node
    spec: dict[str, Any] = {
        "schedulerName": SCHEDULER_NAME,
        "terminationGracePeriodSeconds": 0,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": selector,
        "containers": [
            {
                "name": "vllm",
                "image": "vllm/vllm-openai:v0.10.1.1",
                "resources": {
                    "requests": {"cpu": str(2 * gpus), "memory": f"{16 * gpus}Gi", RESOURCE: str(gpus)},
                    "limits": {"memory": f"{16 * gpus}Gi", RESOURCE: str(gpus)},
                },
            }
        ],
    }
    if gated:
        spec["schedulingGates"] = [{"name": GATE}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


@dataclass
class Placed:
    """One pod through the real scheduler and kubelet, with what the extender said just before."""

    name: str
    gpus: int
    explain: dict[str, Any]  # /explain at the moment the gate was lifted
    free_before: dict[str, int]  # node -> free-GPU mask (the kubelet's truth) then
    node: str = ""
    assigned: set[str] = field(default_factory=set)  # what go-gpuallocator gave it
    row: dict[str, Any] = field(default_factory=dict)  # /explain's row of the node it landed on

    def rows(self) -> dict[str, dict[str, Any]]:
        return {r["node"]: r for r in self.explain["nodes"]}

    def free_ids(self, fleet: Fleet, node: str) -> set[str]:
        return fleet.ids(node, self.free_before[node])


class Stream:
    """Pods one at a time: create gated, let the extender settle, read /explain, lift the gate, follow the
    pod to Running and its GPUs, wait until the agent published them."""

    def __init__(self, fleet: Fleet, ns: str, extender: Extender | None) -> None:
        self.fleet, self.ns, self.extender = fleet, ns, extender
        self.api = fleet.api
        self.placed: list[Placed] = []

    def create(self, name: str, gpus: int, **kw: Any) -> dict[str, Any]:
        return self.api.create(f"/api/v1/namespaces/{self.ns}/pods", gpu_pod(name, gpus, **kw))  # type: ignore[no-any-return]

    def explain_now(self, name: str) -> dict[str, Any]:
        """/explain for the pod once the extender's view is the kubelet's truth (watch mode: its cache,
        assumptions included, answers as a full-Node request over the published annotations does)."""
        assert self.extender is not None
        pod = self.api.pod(self.ns, name)
        self.fleet.wait_published()

        def fleet_rows(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
            return sorted(
                (r["node"], r["outcome"], r["score"], tuple(r.get("gpus") or ()))
                for r in doc["nodes"]
                if r["node"] in self.fleet.nodes
            )

        if self.extender.standalone:
            return self.extender.explain_nodes(pod, self.fleet.node_objects())
        last: list[Any] = []

        def settled() -> dict[str, Any] | None:
            doc = self.extender.explain(self.ns, name)  # type: ignore[union-attr]
            truth = self.extender.explain_nodes(pod, self.fleet.node_objects())  # type: ignore[union-attr]
            last[:] = [fleet_rows(doc), fleet_rows(truth)]
            return doc if last[0] == last[1] else None

        try:
            return wait_for(settled, 30, f"the extender's cache to show the published allocations ({name})")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ncache: {last[0]}\nannotations: {last[1]}") from None

    def ungate(self, name: str) -> None:
        self.api.patch(
            f"/api/v1/namespaces/{self.ns}/pods/{name}",
            {"spec": {"schedulingGates": None}},
            ctype="application/strategic-merge-patch+json",
        )

    def wait_running(self, name: str, timeout: float = 30) -> str:
        def running() -> str | None:
            p = self.api.pod(self.ns, name)
            node = p["spec"].get("nodeName")
            if node and p["status"].get("phase") == "Running":
                return node  # type: ignore[no-any-return]
            return None

        return wait_for(running, timeout, f"pod {name} bound and Running")

    def place(self, name: str, gpus: int, **kw: Any) -> Placed:
        self.create(name, gpus, **kw)
        doc = self.explain_now(name) if self.extender is not None else {"nodes": []}
        p = Placed(name, gpus, doc, {n: self.fleet.free_mask(n) for n in self.fleet.nodes})
        self.ungate(name)
        p.node = self.wait_running(name)
        a = wait_for(lambda: self.fleet.kubelet.assignment(f"{self.ns}/{name}"), 30, f"GPUs for {name}")
        assert a.node == p.node
        p.assigned = set(a.gpus)
        p.row = p.rows().get(p.node, {})
        self.fleet.wait_published()
        self.placed.append(p)
        return p


def most_allocated(fleet: Fleet, node: str, free_mask: int, k: int, *, as_empty: bool = False) -> int:
    """NodeResourcesFit MostAllocated on nvidia.com/gpu (weight 1), as the shipped profile configures it:
    (requested + pod) * 100 // allocatable (kubernetes pkg/scheduler/framework/plugins/noderesources).

    `as_empty`: what kube-scheduler v1.37.2 scores after a `nodeCacheCapable: false` extender's filter: it
    wraps each Node the extender returns in a new NodeInfo without its pods (pkg/scheduler/extender.go,
    HTTPExtender.Filter), so the score plugins see every such node idle (kubernetes/kubernetes#141781, fix
    proposed in #141919)."""
    total = fleet.nodes[node].gpus
    used = 0 if as_empty else total - bin(free_mask).count("1")
    return (used + k) * 100 // total


def expected_best(
    fleet: Fleet, p: Placed, weight: int, *, full_nodes: bool = False
) -> tuple[set[str], dict[str, int]]:
    """The nodes the shipped profile ranks highest from /explain's scores: the extender's score x weight x 10
    plus MostAllocated, over the nodes the scheduler's own filters pass (enough free GPUs) and the extender
    passes. Returns (best nodes, node -> total). `full_nodes`: the nodeCacheCapable: false run, where the
    scheduler scores MostAllocated as if the nodes were empty (see `most_allocated`)."""
    rows = p.rows()
    totals: dict[str, int] = {}
    for node in fleet.nodes:
        free = p.free_before[node]
        if bin(free).count("1") < p.gpus:
            continue  # NodeResourcesFit: Insufficient nvidia.com/gpu
        r = rows.get(node)
        assert r is not None, f"/explain has no row for {node}"
        if r["outcome"] in ("fails-now", "never-fits"):
            continue
        totals[node] = r["score"] * weight * EXTENDER_WEIGHT_FACTOR + most_allocated(
            fleet, node, free, p.gpus, as_empty=full_nodes
        )
    top = max(totals.values(), default=None)
    return {n for n, t in totals.items() if t == top}, totals


def shipped_weight() -> int:
    return int(yaml.safe_load(SHIPPED_CONFIG.read_text())["extenders"][0]["weight"])


@contextlib.contextmanager
def running(*procs: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for p in reversed(procs):
            p.stop()


def failed_scheduling(api: Api, ns: str, pod: str) -> list[str]:
    """The messages of the pod's FailedScheduling events, oldest first."""
    return [
        e.get("message") or e.get("note") or ""
        for e in api.events(ns, pod)
        if e.get("reason") == "FailedScheduling"
    ]


class TcpGate:
    """A TCP relay to the API server that holds new connections while closed (TLS passes through untouched:
    the client still verifies kube-apiserver's certificate, which names 127.0.0.1). Lets a test keep a
    restarted extender from listing, so its not-yet-synced state can be seen."""

    def __init__(self, upstream_port: int) -> None:
        import socket
        import threading

        self.upstream = ("127.0.0.1", upstream_port)
        self.open = threading.Event()
        self.open.set()
        self.held = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._conns: list[Any] = []
        t = threading.Thread(target=self._accept, name="tcp-gate", daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        import threading

        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Any) -> None:
        import socket
        import threading

        if not self.open.is_set():
            self.held += 1
            self.open.wait()
        if self._stop:
            conn.close()
            return
        try:
            up = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            conn.close()
            return
        up.settimeout(None)
        self._conns.append(up)

        def pipe(src: Any, dst: Any) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pipe, args=(up, conn), daemon=True).start()
        pipe(conn, up)

    def close(self) -> None:
        self._stop = True
        self.open.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()

    def kubeconfig(self, source: Path, dest: Path) -> Path:
        """`source` (a kubeconfig) pointed at the gate."""
        doc = yaml.safe_load(source.read_text())
        for c in doc["clusters"]:
            c["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        dest.write_text(yaml.safe_dump(doc))
        dest.chmod(0o600)
        return dest
