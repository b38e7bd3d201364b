"""Benchmark: the metrics adapter's read path against the same query sent straight to Prometheus.

    .venv/bin/python benchmarks/bench_adapter.py [--duration 3] [--clients 1,10,100] [--pods 8] \
        [--baseline-tree DIR] [--custom]

Set-up, all real parts on loopback: `--pods` in-test vLLM exporters (2 engines each) and one DCGM exporter,
served from their own process; the Debian Prometheus scraping them every second; two `toposcale adapter`
processes (`--prometheus-url`), one with the cache off (`--cache-ttl 0`) and one with it on, each pinned to
one core (taskset) while the load generator and Prometheus run on the others.

Rows, for each number of concurrent clients:
- `prometheus`: the adapter's own PromQL for `vllm_kv_cache_usage` (value + staleness in one query), sent to
  Prometheus' /api/v1/query directly: the floor.
- `adapter uncached`: the metric through the adapter, every request a distinct selector (`!bench<N>`) so
  neither the cache nor request coalescing helps; the same distinct selectors go to Prometheus directly.
- `adapter cached`: one selector, cache TTL 60 s: what many HPAs asking the same thing cost.
- `baseline uncached` (with `--baseline-tree DIR`): as `adapter uncached`, with `toposcale.adapter` from
  `DIR/adapter` (an older commit), same run.
- with `--custom`, custom.metrics.k8s.io/v1beta2 per-pod rows (`pods/*/vllm_requests_waiting?labelSelector=`,
  one item per pod) against the same Prometheus: `prometheus-adapter` (the real one, v0.12.0, built by
  scripts/prometheus-adapter.sh, with a rule equivalent to toposcale's: the pods' `vllm:num_requests_waiting`
  summed per pod), `toposcale uncached` and `toposcale cached`. Both servers over HTTPS on loopback,
  anonymous (toposcale `--insecure-allow-anonymous`; prometheus-adapter `--authentication-skip-lookup`, with
  RBAC letting system:anonymous read the group: its cached SubjectAccessReview answer), pinned to the
  adapters' core. prometheus-adapter resolves a label selector by listing the pods from the Kubernetes API
  on every request, so these rows start the real control plane (scripts/kube.sh up) with the pods as
  objects (Running, Ready); its kube-apiserver and etcd share the load generator's cores.
The table prints requests/s, p50 and p99 latency, and for uncached reads the p50/p99 overhead over the
Prometheus row with the same number of clients, measured in the same run. Targets (issue 2): uncached
overhead under 2 ms over Prometheus; cached over 2,000 requests/s on one core. Custom rows print their
req/s as a ratio to prometheus-adapter's and their p50/p99 minus its, same clients, same run. Targets
(issue 16): toposcale cached >= prometheus-adapter's req/s, uncached p50 within 1 ms of it.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # `python benchmarks/bench_x.py`: the same as `python -m`
    import _script

    _script.as_module(__file__)

import argparse
import asyncio
import itertools
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from toposcale.core.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
METRIC = "vllm_kv_cache_usage"
NAMESPACE = "ml"


def run_exporters(ports: list[int], dcgm_port: int) -> None:
    from lab.peers.exporters import DcgmExporter, Gpu, VllmExporter

    async def main() -> None:
        for i, port in enumerate(ports):
            e = VllmExporter(engines=2, waiting=[i, i + 1], kv_cache=[0.1 * (i % 10), 0.5], port=port)
            await e.start()
        gpus = [Gpu(g, NAMESPACE, f"vllm-{g // 4}", util=50 + g % 50) for g in range(4 * len(ports))]
        await DcgmExporter(gpus, port=dcgm_port).start()
        await asyncio.Event().wait()

    asyncio.run(main())


# Runs `toposcale adapter` with `toposcale.adapter` imported from another tree's adapter/ folder (the baseline
# row), e.g. `git archive <rev> adapter | tar -x -C /tmp/base`; the rest of toposcale stays this checkout's.
_FROM_TREE = """
import importlib.util, sys
folder = sys.argv.pop(1) + "/adapter"
spec = importlib.util.spec_from_file_location(
    "toposcale.adapter", folder + "/__init__.py", submodule_search_locations=[folder])
module = importlib.util.module_from_spec(spec)
sys.modules["toposcale.adapter"] = module
spec.loader.exec_module(module)
from toposcale.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_adapter(
    prom_url: str, port: int, ttl: float, cpu: int | None, tree: str | None = None,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).parent / "toposcale"
    launcher = [sys.executable, "-c", _FROM_TREE, str(Path(tree).resolve())] if tree else [str(exe)]
    cmd = [*launcher, "adapter", "--prometheus-url", prom_url, "--port", str(port), "--bind-address",
           "127.0.0.1", "--cache-ttl", str(ttl), "--log-level", "warning", "--max-inflight", "4096",
           "--insecure-allow-anonymous", "--max-requests-inflight", "4096", *extra]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def status_of(url: str) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(url, ssl=False) as r:
        return r.status


async def wait_http(url: str, deadline_s: float = 30, need_items: bool = True) -> None:
    import aiohttp

    deadline = time.monotonic() + deadline_s
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(url, ssl=False) as r:
                    if r.status == 200:
                        if not need_items:
                            return
                        body = await r.json()
                        if body.get("items"):
                            return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not answer with a value in {deadline_s}s")


async def load(make_url, clients: int, duration: float) -> tuple[int, list[float], int]:
    """`clients` loops issuing GETs for `duration` seconds; returns (ok count, latencies, errors)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    counter = itertools.count()
    stop_at = time.perf_counter() + duration
    conn = aiohttp.TCPConnector(limit=clients, force_close=False)
    # uncompressed, as the adapter asks Prometheus: the floor row must not pay for gzip the adapter skips
    headers = {"Accept-Encoding": "identity"}
    async with aiohttp.ClientSession(connector=conn, headers=headers) as s:

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                url = make_url(next(counter))
                t0 = time.perf_counter()
                async with s.get(url, ssl=False) as r:  # https rows: loopback, test certificate
                    await r.read()
                    ok = r.status == 200
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies), latencies, errors


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (Linux /proc), to report adapter CPU per request."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


# --- custom.metrics.k8s.io rows (--custom) ------------------------------------------------------------------

CUSTOM_METRIC = "vllm_requests_waiting"
CUSTOM_PATH = (f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/pods/*/{CUSTOM_METRIC}"
               "?labelSelector=")
# prometheus-adapter's rule for what toposcale's vllm_requests_waiting rule gives per pod: the series of the
# pods in the namespace, summed over the engines of each pod (adapter/rules/*.yaml; docs of the rule format:
# prometheus-adapter docs/config.md).
PA_RULES = """
rules:
  - seriesQuery: 'vllm:num_requests_waiting{namespace!="",pod!=""}'
    resources:
      overrides:
        namespace: {resource: namespace}
        pod: {resource: pod}
    name:
      matches: "^vllm:num_requests_waiting$"
      as: "vllm_requests_waiting"
    metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)'
"""


def build_binary(script: str, arg: str) -> str:
    """scripts/<script> <arg>: cached after the first build; its progress lines go to stderr as they come."""
    r = subprocess.run([str(ROOT / "scripts" / script), arg], stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench_adapter: scripts/{script} {arg} failed (see above)")
    return r.stdout.strip().splitlines()[-1]


def control_plane(work: Path, pods: int):  # -> lab.kube.cluster.Cluster
    """The real control plane (scripts/kube.sh up) with `pods` vLLM pods as API objects, Running and Ready,
    named and labelled as the Prometheus scrape jobs label their series."""
    from lab.kube.cluster import Cluster

    env = {**os.environ, "TOPOSCALE_KUBE_BIN_DIR": build_binary("kube.sh", "bin-dir")}
    subprocess.run([str(ROOT / "scripts" / "kube.sh"), "up", str(work)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    cluster = Cluster.load(work)
    kubectl = [str(Path(sys.executable).parent / "kubectl"), "--kubeconfig", str(cluster.admin_kubeconfig)]
    objs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
    objs += [{"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": f"vllm-{i}", "namespace": NAMESPACE, "labels": {"app": "vllm"}},
              "spec": {"nodeName": "bench-node", "containers": [{"name": "vllm", "image": "vllm"}]}}
             for i in range(pods)]
    # prometheus-adapter authorizes resource requests by SubjectAccessReview (its always-allow paths are for
    # non-resource URLs only): anonymous may read the group, and the answer stays in its authorizer's cache
    # (10 s), so the rows do not pay a review per request
    objs += [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "bench-custom-metrics"},
         "rules": [{"apiGroups": ["custom.metrics.k8s.io"], "resources": ["*"], "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "bench-custom-metrics"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "bench-custom-metrics"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}]},
    ]
    subprocess.run([*kubectl, "apply", "-f", "-"], check=True, stdout=subprocess.DEVNULL,
                   input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}), text=True)
    kinds = ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    ready = [{"type": t, "status": "True"} for t in kinds]
    for i in range(pods):
        status = {"status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                             "conditions": ready}}
        subprocess.run([*kubectl, "patch", "pod", "-n", NAMESPACE, f"vllm-{i}", "--subresource=status",
                        "--type=merge", "-p", json.dumps(status)], check=True, stdout=subprocess.DEVNULL)
    return cluster


def serving_cert(work: Path) -> tuple[Path, Path]:
    from lab.pki import KubePki

    pki = KubePki(work)
    pki.leaf("serving", pki.ca("ca", "bench CA"), "127.0.0.1", hosts=("127.0.0.1", "localhost"), server=True)
    return work / "serving.crt", work / "serving.key"


def start_prometheus_adapter(binary: str, prom_url: str, cluster, port: int, cert: tuple[Path, Path],
                             work: Path, cpu: int | None) -> subprocess.Popen[bytes]:
    (work / "prometheus-adapter.yaml").write_text(PA_RULES)
    kc = str(cluster.admin_kubeconfig)
    cmd = [binary, f"--prometheus-url={prom_url}", f"--config={work / 'prometheus-adapter.yaml'}",
           "--bind-address=127.0.0.1", f"--secure-port={port}", f"--cert-dir={work}",
           f"--tls-cert-file={cert[0]}", f"--tls-private-key-file={cert[1]}",
           f"--lister-kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
           f"--authorization-kubeconfig={kc}",
           # anonymous, as toposcale's rows (--insecure-allow-anonymous): no TokenReview per request
           "--authentication-skip-lookup",
           # its Kubernetes client allows 5 requests/s by default (burst 10), and every selector costs one pod
           # LIST: with the defaults it serves 5 requests/s (measured). Unthrottled here, to measure it.
           "--client-qps=100000", "--client-burst=100000",
           "--metrics-relist-interval=1m", "--v=0"]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    log = (work / "prometheus-adapter.log").open("wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


async def bench(args: argparse.Namespace) -> None:
    from toposcale.adapter.promql import combined_query
    from toposcale.adapter.rules import load_rules
    from toposcale.adapter.selectors import parse_selector

    from lab.peers.prometheus import PrometheusServer, ScrapeJob

    ports = [free_port() for _ in range(args.pods)]
    dcgm_port = free_port()
    exporters = mp.get_context("spawn").Process(target=run_exporters, args=(ports, dcgm_port), daemon=True)
    exporters.start()
    jobs = [ScrapeJob(f"vllm-{i}", [f"127.0.0.1:{p}"], {"namespace": NAMESPACE, "pod": f"vllm-{i}",
                                                        "app": "vllm"}) for i, p in enumerate(ports)]
    jobs.append(ScrapeJob("dcgm", [f"127.0.0.1:{dcgm_port}"], {"namespace": "gpu-operator"},
                          honor_labels=True))
    prom = PrometheusServer(jobs, scrape_interval="1s")
    ncpu = os.cpu_count() or 1
    adapter_cpu = 0 if ncpu > 1 else None
    if ncpu > 1:
        os.sched_setaffinity(0, set(range(1, ncpu)))  # the load generator stays off the adapters' core
    procs: list[subprocess.Popen[bytes]] = []
    work = Path(tempfile.mkdtemp(prefix="toposcale-bench-adapter-"))
    cluster = None
    try:
        await asyncio.to_thread(prom.start)
        if ncpu > 1 and shutil.which("taskset") and prom.proc is not None:
            # Prometheus (all its threads) shares the load generator's cores, not the adapters' core
            pin = await asyncio.create_subprocess_exec(
                "taskset", "-a", "-cp", f"1-{ncpu - 1}", str(prom.proc.pid), stdout=subprocess.DEVNULL
            )
            await pin.wait()
        await asyncio.to_thread(prom.wait_scraped)
        uncached_port, cached_port = free_port(), free_port()
        procs.append(start_adapter(prom.url, uncached_port, 0.0, adapter_cpu))
        procs.append(start_adapter(prom.url, cached_port, 60.0, adapter_cpu))
        ports = [uncached_port, cached_port]
        if args.baseline_tree:
            baseline_port = free_port()
            procs.append(start_adapter(prom.url, baseline_port, 0.0, adapter_cpu, args.baseline_tree))
            ports.append(baseline_port)
        path = f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/{METRIC}?labelSelector="
        for port in ports:
            await wait_http(f"http://127.0.0.1:{port}{path}{quote('app=vllm')}")

        rule = load_rules().by_name()[METRIC]

        def prom_url(i: int) -> str:
            q = combined_query(rule, NAMESPACE, parse_selector(f"app=vllm,!bench{i}"))
            return f"{prom.url}/api/v1/query?query={quote(q)}"

        def uncached_url(i: int) -> str:
            return f"http://127.0.0.1:{uncached_port}{path}{quote(f'app=vllm,!bench{i}')}"

        def cached_url(i: int) -> str:
            return f"http://127.0.0.1:{cached_port}{path}{quote('app=vllm')}"

        def baseline_url(i: int) -> str:
            return f"http://127.0.0.1:{baseline_port}{path}{quote(f'app=vllm,!bench{i}')}"

        rows = []
        for clients in args.clients:
            floor = None
            modes = [("prometheus", prom_url, prom.proc), ("adapter uncached", uncached_url, procs[0]),
                     ("adapter cached", cached_url, procs[1])]
            if args.baseline_tree:
                modes.insert(1, ("baseline uncached", baseline_url, procs[2]))
            for name, make, proc in modes:
                await load(make, clients, min(0.5, args.duration))  # warm-up
                cpu0 = cpu_seconds(proc.pid)  # type: ignore[union-attr]
                n, lat, errors = await load(make, clients, args.duration)
                cpu = (cpu_seconds(proc.pid) - cpu0) / max(n, 1) * 1e3  # type: ignore[union-attr]
                p50, p99 = pct(lat, 50) * 1e3, pct(lat, 99) * 1e3
                if name == "prometheus":
                    floor = (p50, p99)
                over = ""
                if name.endswith("uncached") and floor is not None:
                    over = f"{p50 - floor[0]:+.2f} / {p99 - floor[1]:+.2f}"
                rows.append((name, clients, n, n / args.duration, p50, p99, over, cpu, errors))
                print(f"  {name:<17} clients={clients:<4} {n / args.duration:>9.0f} req/s", file=sys.stderr)

        print()
        print(f"adapter read path, metric {METRIC}, {args.pods} vLLM pods x 2 engines, Prometheus {prom.url}")
        print(f"adapters pinned to CPU {adapter_cpu}; load generator and Prometheus on CPUs 1..{ncpu - 1}; "
              f"{args.duration:g}s per row; machine: {ncpu} CPUs")
        header = ("source", "clients", "requests", "req/s", "p50 ms", "p99 ms", "overhead p50/p99 ms",
                  "server CPU ms/req", "errors")
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for name, clients, n, rps, p50, p99, over, cpu, errors in rows:
            print(f"| {name} | {clients} | {n} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {over or '-'} "
                  f"| {cpu:.2f} | {errors} |")
        print()
        print("overhead: adapter uncached minus prometheus, same clients, same run (target < 2 ms);"
              " cached target: > 2,000 req/s on one core")
        print("server CPU ms/req: CPU time of the serving process (Prometheus, or the adapter alone; the"
              " adapter uncached row excludes Prometheus' share) per request; 1000 / it = req/s one core can"
              " serve")
        if args.custom:
            cluster = await custom_rows(args, prom, work, procs, adapter_cpu, ncpu)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        if cluster is not None:
            await asyncio.to_thread(subprocess.run, [str(ROOT / "scripts" / "kube.sh"), "down",
                                    str(cluster.dir)], stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
        await asyncio.to_thread(prom.stop)
        exporters.terminate()
        exporters.join(timeout=5)


async def custom_rows(args: argparse.Namespace, prom, work: Path, procs: list[subprocess.Popen[bytes]],
                      adapter_cpu: int | None, ncpu: int):  # -> the Cluster, stopped by the caller
    """The custom.metrics.k8s.io rows: prometheus-adapter and toposcale (uncached, cached) over HTTPS,
    same Prometheus, same run; prints their table."""
    pa_bin = build_binary("prometheus-adapter.sh", "bin")
    cluster = await asyncio.to_thread(control_plane, work / "kube", args.pods)
    if ncpu > 1 and shutil.which("taskset"):
        for pid in cluster.pids.values():  # kube-apiserver, etcd, ...: off the adapters' core
            await asyncio.to_thread(subprocess.run, ["taskset", "-a", "-cp", f"1-{ncpu - 1}", str(pid)],
                                    stdout=subprocess.DEVNULL)
    cert = serving_cert(work / "pki")
    tls = ("--tls-cert-file", str(cert[0]), "--tls-private-key-file", str(cert[1]))
    uncached_port, cached_port, pa_port = free_port(), free_port(), free_port()
    uncached = start_adapter(prom.url, uncached_port, 0.0, adapter_cpu, extra=tls)
    cached = start_adapter(prom.url, cached_port, 60.0, adapter_cpu, extra=tls)
    pa = start_prometheus_adapter(pa_bin, prom.url, cluster, pa_port, cert, work, adapter_cpu)
    procs += [uncached, cached, pa]
    await wait_http(f"https://127.0.0.1:{uncached_port}/healthz", 30, need_items=False)
    served = await status_of(f"https://127.0.0.1:{uncached_port}{CUSTOM_PATH}{quote('app=vllm')}") != 404
    if not served:
        print("bench_adapter: this tree's toposcale adapter does not serve custom.metrics.k8s.io (HTTP 404): "
              "its rows are left out, prometheus-adapter's measured alone", file=sys.stderr)
    for port in (pa_port, uncached_port, cached_port) if served else (pa_port,):
        try:
            await wait_http(f"https://127.0.0.1:{port}{CUSTOM_PATH}{quote('app=vllm')}", 60)
        except RuntimeError:
            log = work / "prometheus-adapter.log"
            tail = log.read_text(errors="replace")[-3000:] if port == pa_port and log.exists() else ""
            raise RuntimeError(f"custom metrics on port {port} never answered with items\n{tail}") from None

    def url(port: int, distinct: bool):
        def make(i: int) -> str:
            sel = f"app=vllm,!bench{i}" if distinct else "app=vllm"
            return f"https://127.0.0.1:{port}{CUSTOM_PATH}{quote(sel)}"
        return make

    modes = [("prometheus-adapter", url(pa_port, True), pa)]
    if served:
        modes += [("toposcale uncached", url(uncached_port, True), uncached),
                  ("toposcale cached", url(cached_port, False), cached)]
    rows = []
    for clients in args.clients:
        base = None
        for name, make, proc in modes:
            await load(make, clients, min(0.5, args.duration))  # warm-up
            cpu0 = cpu_seconds(proc.pid)
            n, lat, errors = await load(make, clients, args.duration)
            cpu = (cpu_seconds(proc.pid) - cpu0) / max(n, 1) * 1e3
            rps, p50, p99 = n / args.duration, pct(lat, 50) * 1e3, pct(lat, 99) * 1e3
            if base is None:
                base = (rps, p50, p99)
            rows.append((name, clients, n, rps, rps / base[0], p50, p99, p50 - base[1], p99 - base[2], cpu,
                         errors))
            print(f"  {name:<19} clients={clients:<4} {rps:>9.0f} req/s", file=sys.stderr)
    print()
    print(f"custom.metrics.k8s.io/v1beta2 pods/*/{CUSTOM_METRIC}?labelSelector=app=vllm: {args.pods} pods "
          f"(one item each), HTTPS; servers pinned to CPU {adapter_cpu}; {args.duration:g}s per row")
    header = ("server", "clients", "requests", "req/s", "req/s vs prometheus-adapter", "p50 ms", "p99 ms",
              "p50 / p99 minus prometheus-adapter ms", "server CPU ms/req", "errors")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for name, clients, n, rps, ratio, p50, p99, d50, d99, cpu, errors in rows:
        print(f"| {name} | {clients} | {n} | {rps:.0f} | {ratio:.2f}x | {p50:.2f} | {p99:.2f} "
              f"| {d50:+.2f} / {d99:+.2f} | {cpu:.2f} | {errors} |")
    print()
    print("targets (issue 16): toposcale cached req/s >= prometheus-adapter's; toposcale uncached p50 within"
          " 1 ms of prometheus-adapter's (same clients, same run)")
    return cluster


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per row")
    ap.add_argument("--clients", default="1,10,100", help="concurrent clients, comma-separated")
    ap.add_argument("--pods", type=int, default=8, help="vLLM exporters behind Prometheus")
    ap.add_argument("--baseline-tree", default="",
                    help="also run an uncached adapter from this tree's adapter/ folder (e.g. an older "
                         "commit: git archive <rev> adapter | tar -x -C DIR), same run: 'baseline uncached'")
    ap.add_argument("--custom", action="store_true",
                    help="also the custom.metrics.k8s.io per-pod rows: toposcale against the real "
                         "prometheus-adapter (built by scripts/prometheus-adapter.sh) with the real control "
                         "plane (scripts/kube.sh) for its pod lookups")
    args = ap.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
