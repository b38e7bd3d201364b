"""Benchmark: the real kube-scheduler placing 4-GPU pods on 1,000 and 5,000 fake GPU nodes, with and without
the extender, in the same run.

    .venv/bin/python benchmarks/bench_scheduler.py [--nodes 1000,5000] [--pods 100] [--seed 1]

A control plane of its own (tests/harness/kube_cluster.py: etcd, kube-apiserver, kube-controller-manager;
the binaries `scripts/kube.sh bin-dir` builds) and, per node count, a fleet of Node objects drawn in turn
from the real topologies in tests/fixtures/topologies, 30% of GPUs taken at random: the taken ones are
listed in the node's `toposcale.io/gpu-allocation` (as the agent would publish them) and left out of its
`nvidia.com/gpu` allocatable, so the scheduler's own count agrees without a pod per taken GPU.

Three rows per node count, each a fresh kube-scheduler process on the shipped
deploy/extender/scheduler-config.yaml (leader election off, the kubeconfig, the extender URL on loopback):

- (a) the shipped profile without the `extenders` stanza: kube-scheduler alone;
- (b) with the extender, `nodeCacheCapable: true` (shipped): `toposcale extender` watching this API server;
- (c) with `nodeCacheCapable: false`: every call carries every candidate Node, to `--standalone`.

For a row, `--pods` 4-GPU pods (the vLLM example's pod) are created first, then the scheduler is started,
and the rate is taken between its first and last "Successfully bound pod" log lines (microsecond
timestamps), so pod creation and the scheduler's start are not in it. p50/p99 are of the scheduler's own
`scheduler_scheduling_attempt_duration_seconds{result="scheduled"}` histogram (its /metrics, quantiles
interpolated within its power-of-two buckets, as histogram_quantile does); `ext share` is the extender's
own decision time (`toposcale_extender_decision_seconds`, filter + prioritize, server side) over the sum of
the scheduler's attempt durations; `ext errors` counts the scheduler's "Skipping extender as it returned
error" lines (calls that failed and were ignored: such a row did not measure the extender). Then the pods
are deleted (grace 0) before the next row. `cost` is
1 - pods/s of the row / pods/s of (a) at the same node count; the issue's target: at most 15% for (b) at
5,000 nodes.

Everything shares the machine: etcd, kube-apiserver, the scheduler and the extender. On two cores the
apiserver's binding writes compete with the scheduler, so pods/s is a whole-control-plane figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.kube_cluster import Cluster, free_port  # noqa: E402
from tests.harness.kubelet import ApiSession  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "topologies"
SHIPPED = ROOT / "deploy" / "extender" / "scheduler-config.yaml"
TOPOSCALE = Path(sys.executable).parent / "toposcale"
PROFILE = "toposcale-scheduler"
BOUND = re.compile(r"^I(\d{4}) (\d\d:\d\d:\d\d\.\d+) .*\"Successfully bound pod to node\"")


def bin_dir() -> Path:
    env = os.environ.get("TOPOSCALE_KUBE_BIN_DIR")
    if env and (Path(env) / "kube-apiserver").is_file():
        return Path(env)
    r = subprocess.run([str(ROOT / "scripts" / "kube.sh"), "bin-dir"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench_scheduler: scripts/kube.sh bin-dir failed:\n{r.stderr}")
    return Path(r.stdout.strip().splitlines()[-1])


def fleet(size: int, seed: int) -> list[dict[str, Any]]:
    from toposcale.extender.topology.annotations import (
        ALLOCATION_ANNOTATION,
        TOPOLOGY_ANNOTATION,
        Allocation,
        allocation_to_doc,
        dumps,
        now_rfc3339,
        topology_to_doc,
    )
    from toposcale.extender.topology.topo_text import parse_topo_text

    rng = random.Random(seed)
    texts = [p.read_text() for p in sorted(FIXTURES.glob("*.txt")) if "1gpu" not in p.name]
    nodes = []
    for i in range(size):
        name = f"bench-{i:05d}"
        text = texts[i % len(texts)]
        n = len(parse_topo_text(text))
        topo = parse_topo_text(text, ids=[f"GPU-{name}-{j}" for j in range(n)])
        held = frozenset(g.id for g in topo.gpus if rng.random() < 0.3)
        alloc = Allocation(held, frozenset(), now_rfc3339())
        free = n - len(held)
        nodes.append({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
                "annotations": {
                    TOPOLOGY_ANNOTATION: dumps(topology_to_doc(topo)),
                    ALLOCATION_ANNOTATION: dumps(allocation_to_doc(alloc)),
                },
            },
            "spec": {},
            "status": {
                "capacity": {"cpu": "96", "memory": "1024Gi", "pods": "110", "nvidia.com/gpu": str(n)},
                "allocatable": {"cpu": "96", "memory": "1024Gi", "pods": "110", "nvidia.com/gpu": str(free)},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "lastHeartbeatTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()}],
            },
        })
    return nodes


def pod(i: int) -> dict[str, Any]:
    res = {"requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "4"},
           "limits": {"memory": "64Gi", "nvidia.com/gpu": "4"}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"vllm-{i:04d}", "labels": {"app": "vllm"}},
        "spec": {
            "schedulerName": PROFILE,
            "terminationGracePeriodSeconds": 0,
            # kube-apiserver taints new Nodes not-ready; no node lifecycle controller runs here to lift it
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}],
            "containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.10.1.1", "resources": res}],
        },
    }


async def create_all(cluster: Cluster, path: str, objs: list[dict[str, Any]], parallel: int = 24) -> None:
    sem = asyncio.Semaphore(parallel)
    async with ApiSession(cluster) as api:

        async def one(o: dict[str, Any]) -> None:
            async with sem:
                await api.create(path, o)

        await asyncio.gather(*(one(o) for o in objs))


async def bound_count(cluster: Cluster, ns: str) -> int:
    async with ApiSession(cluster) as api:
        got = await api.get(f"/api/v1/namespaces/{ns}/pods", params={"fieldSelector": "spec.nodeName!="})
    return len(got["items"])


def scheduler_config(path: Path, kubeconfig: Path, mode: str, ext_url: str) -> None:
    doc = yaml.safe_load(SHIPPED.read_text())
    doc["leaderElection"]["leaderElect"] = False
    doc["clientConnection"] = {"kubeconfig": str(kubeconfig)}
    if mode == "a":
        del doc["extenders"]
    else:
        doc["extenders"][0]["urlPrefix"] = ext_url
        doc["extenders"][0]["nodeCacheCapable"] = mode == "b"
    path.write_text(yaml.safe_dump(doc))


def metrics_text(url: str, ctx: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, context=ctx, timeout=30) as r:
        return r.read().decode()


def histogram(text: str, name: str, labels: dict[str, str]) -> tuple[list[tuple[float, float]], float, float]:
    """(cumulative buckets (le, count), sum, count) of one histogram series in an exposition."""
    def match(line: str) -> bool:
        return all(f'{k}="{v}"' in line for k, v in labels.items())

    buckets, total, count = [], 0.0, 0.0
    for line in text.splitlines():
        if line.startswith(name + "_bucket{") and match(line):
            le = re.search(r'[{,]le="([^"]+)"', line)[1]  # type: ignore[index]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(name + "_sum") and match(line):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(name + "_count") and match(line):
            count += float(line.rsplit(" ", 1)[1])
    return sorted(buckets), total, count


def quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """histogram_quantile: linear within the bucket the rank falls in."""
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lo_le, lo_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lo_le
            return lo_le + (le - lo_le) * (rank - lo_count) / max(count - lo_count, 1e-9)
        lo_le, lo_count = le, count
    return buckets[-1][0]


def bind_rate(log: str) -> tuple[int, float]:
    stamps = []
    for line in log.splitlines():
        m = BOUND.match(line)
        if m:
            t = datetime.strptime(m[2], "%H:%M:%S.%f")
            stamps.append(t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6)
    if len(stamps) < 2:
        return len(stamps), float("nan")
    return len(stamps), (len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-6)


def wait_http(url: str, timeout: float, ctx: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


def run_row(cluster: Cluster, work: Path, mode: str, pods: int, nodes: int) -> dict[str, Any]:
    ns = f"bench-{mode}-{nodes}"
    asyncio.run(create_all(cluster, "/api/v1/namespaces",
                           [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}]))
    asyncio.run(create_all(cluster, f"/api/v1/namespaces/{ns}/pods", [pod(i) for i in range(pods)]))
    ext_port, sch_port = free_port(), free_port()
    ext = None
    ext_log = work / f"extender-{mode}-{nodes}.log"
    if mode != "a":
        argv = [str(TOPOSCALE), "extender", "--host", "127.0.0.1", "--port", str(ext_port), "--log-level",
                "warning"]
        argv += ["--kubeconfig", str(cluster.admin_kubeconfig)] if mode == "b" else ["--standalone"]
        if mode == "c":
            argv += ["--max-body-mb", "256"]
        with ext_log.open("wb") as out:
            ext = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{ext_port}/readyz", 120)
    cfg = work / f"scheduler-{mode}-{nodes}.yaml"
    scheduler_config(cfg, cluster.dir / "scheduler.kubeconfig", mode, f"http://127.0.0.1:{ext_port}")
    p = cluster.pki_dir
    kc = cluster.dir / "scheduler.kubeconfig"
    log = work / f"kube-scheduler-{mode}-{nodes}.log"
    with log.open("wb") as out:
        sched = subprocess.Popen([
            str(cluster.bin_dir / "kube-scheduler"), f"--config={cfg}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}", f"--secure-port={sch_port}", "--bind-address=127.0.0.1",
            f"--tls-cert-file={p / 'scheduler-serving.crt'}",
            f"--tls-private-key-file={p / 'scheduler-serving.key'}",
            f"--client-ca-file={p / 'ca.crt'}", "--v=2",
        ], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60 + pods * (2.0 if mode == "c" else 0.5) * max(1, nodes // 1000)
        while asyncio.run(bound_count(cluster, ns)) < pods:
            if sched.poll() is not None:
                raise RuntimeError(f"kube-scheduler exited:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"row ({mode}) at {nodes} nodes: not every pod bound in time")
            time.sleep(0.5)
        ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
        ctx.load_cert_chain(str(p / "admin.crt"), str(p / "admin.key"))
        text = metrics_text(f"https://127.0.0.1:{sch_port}/metrics", ctx)
        buckets, att_sum, att_count = histogram(
            text, "scheduler_scheduling_attempt_duration_seconds", {"result": "scheduled", "profile": PROFILE}
        )
        ext_s = float("nan")
        if ext is not None:
            et = metrics_text(f"http://127.0.0.1:{ext_port}/metrics")
            (work / f"extender-{mode}-{nodes}.metrics").write_text(et)
            ext_s = sum(histogram(et, "toposcale_extender_decision_seconds", {"verb": v})[1]
                        for v in ("filter", "prioritize"))
        sched_log = log.read_text()
        n_bound, rate = bind_rate(sched_log)
        skipped = sched_log.count("Skipping extender as it returned error")
        return {
            "mode": mode, "nodes": nodes, "pods": n_bound, "pods_per_s": rate,
            "p50_ms": 1000 * quantile(0.5, buckets), "p99_ms": 1000 * quantile(0.99, buckets),
            "mean_ms": 1000 * att_sum / att_count if att_count else float("nan"),
            "ext_share": ext_s / att_sum if att_sum else float("nan"),
            "ext_errors": skipped,
        }
    finally:
        sched.terminate()
        sched.wait(15)
        if ext is not None:
            ext.terminate()
            ext.wait(15)
        kubectl = [str(TOPOSCALE.parent / "kubectl"), "--kubeconfig", str(cluster.admin_kubeconfig)]
        subprocess.run([*kubectl, "delete", "namespace", ns, "--grace-period=0", "--force", "--wait=false"],
                       capture_output=True, timeout=120)
        # pods bound to nodes without a kubelet: deleted at once so the next row finds the same free GPUs
        subprocess.run([*kubectl, "delete", "pods", "--all", "-n", ns, "--grace-period=0", "--force"],
                       capture_output=True, timeout=300)


LABEL = {"a": "(a) no extender", "b": "(b) extender, nodeCacheCapable: true",
         "c": "(c) extender, nodeCacheCapable: false"}


def table(rows: list[dict[str, Any]]) -> str:
    base = {r["nodes"]: r["pods_per_s"] for r in rows if r["mode"] == "a"}
    out = [
        "| nodes | row | pods | pods/s | attempt p50 ms | attempt p99 ms | mean ms | ext share | ext errors "
        "| cost |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cost = 1 - r["pods_per_s"] / base[r["nodes"]] if r["mode"] != "a" and base.get(r["nodes"]) else None
        share = "" if r["mode"] == "a" else f"{100 * r['ext_share']:.0f}%"
        errors = "" if r["mode"] == "a" else r["ext_errors"]
        cost_s = "" if cost is None else f"{100 * cost:.0f}%"
        out.append(
            f"| {r['nodes']:,} | {LABEL[r['mode']]} | {r['pods']} | {r['pods_per_s']:.1f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_ms']:.1f} | {share} | {errors} | {cost_s} |"
        )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--nodes", default="1000,5000", help="comma-separated fleet sizes (default 1000,5000)")
    ap.add_argument("--pods", type=int, default=100, help="4-GPU pods per row (default 100)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the taken GPUs (default 1)")
    ap.add_argument("--json", action="store_true", help="also print the rows as one JSON line")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, metrics) and print it")
    a = ap.parse_args()
    sizes = [int(x) for x in a.nodes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-scheduler-"))
    cluster = Cluster(dir=work / "cluster", bin_dir=bin_dir())
    rows = []
    try:
        t0 = time.monotonic()
        cluster.start(with_scheduler=False)
        print(f"control plane up in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        have = 0
        for size in sorted(sizes):
            t0 = time.monotonic()
            asyncio.run(create_all(cluster, "/api/v1/nodes", fleet(size, a.seed)[have:]))
            have = size
            print(f"{size} nodes in the API in {time.monotonic() - t0:.1f} s", file=sys.stderr)
            for mode in ("a", "b", "c"):
                t0 = time.monotonic()
                rows.append(run_row(cluster, work, mode, a.pods, size))
                print(f"  row ({mode}) at {size} nodes: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    finally:
        cluster.stop()
        if a.keep:
            print(f"work folder: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    if a.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
