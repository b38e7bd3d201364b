"""The demo's services: the node exporters, the adapter and the extender as real processes (Supervisor),
the adapter's scrape targets and Prometheus' file_sd, and the configuration files they read."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

from toposcale.core.ports import free_port

from .scheduler import SchedulerClient
from .vllm_sim import NodeExporter, _Endpoint

if TYPE_CHECKING:
    from .runner import DemoConfig

logger = logging.getLogger("toposcale.demo")

# Labels and the HPA selector, as in deploy/examples/qwen/hpa.yaml.
APP_LABELS = {"app": "vllm", "model": "qwen2.5-7b-instruct"}
SELECTOR = "app=vllm"


class Services:
    """Starts the services and keeps the adapter's targets in step with the ready replicas (a mixin of
    runner.Demo)."""

    async def start_services(self) -> None:
        for node in self.nodes:
            exp = NodeExporter(node)
            await exp.start()
            self.exporters[node.name] = exp
        if self.cfg.file_sd is not None:
            self.kube_state = _Endpoint(lambda: self.kube_state_text().encode())
            await self.kube_state.start()
        self.write_targets()
        aport, eport = free_port(), free_port()
        if self.cfg.prometheus_url:
            source = ["--prometheus-url", self.cfg.prometheus_url]
        else:
            source = ["--scrape-targets", str(self.targets_path)]
        adapter_args = ["adapter", *source, "--port", str(aport)]
        if self.cfg.autoscaler == "toposcale":
            rules_path = self.cfg.workdir / "rules.yaml"
            atomic_write(rules_path, desired_rules_yaml(self.cfg, self.profile))
            adapter_args += ["--rules", str(rules_path)]
        # The adapter's value cache is meant in real seconds; compressed time shrinks it alike.
        ttl = f"{max(0.05, 2.0 / self.cfg.speed):.3g}"
        # Loopback only. --insecure-allow-anonymous serves plain HTTP without authentication, "for local runs
        # and the demo"; its warning at start is expected and is not counted as an error.
        adapter_args += ["--bind-address", "127.0.0.1", "--insecure-allow-anonymous", "--cache-ttl", ttl]
        self.adapter = self.sup.add("adapter", adapter_args, aport)
        extender_args = ["extender", "--standalone", "--host", "127.0.0.1", "--port", str(eport)]
        self.extender = self.sup.add("extender", extender_args, eport)
        if self.cfg.prometheus_url and self.cfg.file_sd is not None:
            self.say(f"adapter source: Prometheus at {self.cfg.prometheus_url}; its scrape job for the demo:")
            self.say(prometheus_job(self.cfg.file_sd, self.cfg.speed))
        for svc in self.sup.services:
            await self.sup.start_healthy(svc, self.cfg.service_start_timeout_s)
            assert svc.proc is not None
            self.say(f"started {svc.name}: pid {svc.proc.pid}, {svc.base_url} (log {svc.log_path})")
        self.sched = SchedulerClient(self.extender.base_url, self.cfg.extender_weight, self.sched_rng)

    def write_targets(self) -> None:
        """The adapter's static target list: ready replicas and every node's DCGM exporter."""
        doc: list[dict[str, Any]] = []
        for r in self.replicas.values():
            if r.phase == "Ready" and r.server is not None:
                doc.append(
                    {
                        "url": r.server.url,
                        "labels": {"namespace": self.cfg.namespace, "pod": r.pod, **APP_LABELS},
                    }
                )
        for name, exp in self.exporters.items():
            doc.append(
                {
                    "url": exp.url,
                    "labels": {
                        "namespace": "gpu-operator",
                        "pod": f"dcgm-exporter-{name}",
                        "app.kubernetes.io/name": "dcgm-exporter",
                    },
                }
            )
        atomic_write(self.targets_path, yaml.safe_dump(doc, sort_keys=False))  # the adapter never reads half
        if self.cfg.file_sd is not None:
            if self.kube_state is not None:  # what a cluster's Prometheus scrapes beside the pods
                labels = {
                    "namespace": "kube-system",
                    "pod": "kube-state-metrics",
                    "app.kubernetes.io/name": "kube-state-metrics",
                }
                doc = [*doc, {"url": self.kube_state.url, "labels": labels}]
            atomic_write(self.cfg.file_sd, json.dumps(file_sd_groups(doc), indent=1))

    def kube_state_text(self) -> str:
        """kube-state-metrics' view of the demo's pods: `kube_pod_info` for every pod that exists, and
        `kube_pod_deletion_timestamp` for those being deleted. The adapter in Prometheus mode expects only
        these pods: a scaled-in replica's `up == 0` outlives it in Prometheus by two scrape intervals."""
        ns = self.cfg.namespace
        lines = ["# TYPE kube_pod_info gauge"]
        lines += [
            f'kube_pod_info{{namespace="{ns}",pod="{r.pod}",node="{r.node.name if r.node else ""}"}} 1'
            for r in self.replicas.values()
        ]
        lines.append("# TYPE kube_pod_deletion_timestamp gauge")
        now = int(time.time())  # kube-state-metrics: the deletion's unix time; only presence is read
        lines += [
            f'kube_pod_deletion_timestamp{{namespace="{ns}",pod="{r.pod}"}} {now}'
            for r in self.replicas.values()
            if r.phase == "Terminating"
        ]
        return "\n".join(lines) + "\n"


def desired_rules_yaml(cfg: DemoConfig, profile: Any) -> str:
    """The adapter's rules for the toposcale autoscaler: the default rules with `vllm_desired_replicas` set
    for the demo's replicas and clock.

    The adapter measures in real seconds while the demo's clock runs `speed` times faster, so everything the
    algorithm counts per second or in seconds of the demo's clock is converted: the prior capacity (tokens per
    demo second) times speed, the cold start, the scale-down window and the rate window divided by it. The
    latency targets stay: the histograms hold demo seconds."""
    from importlib import resources

    from toposcale.autoscale.desired import Capacity

    base = yaml.safe_load(
        resources.files("toposcale.adapter").joinpath("rules", "default.yaml").read_text(encoding="utf-8")
    )
    cap = Capacity.from_profile(profile, cfg.tpot_slo_s)
    s = cfg.speed
    base["rules"] = [r for r in base["rules"] if r.get("name") != "vllm_desired_replicas"]
    base["rules"].append(
        {
            "name": "vllm_desired_replicas",
            "aggregation": "vllm_desired_replicas",
            "window_seconds": max(1, round(60 / s)),
            "desired": {
                "algorithm": {
                    "prior": {
                        "prompt_tokens_s": cap.prompt_tokens_s * s,
                        "generation_tokens_s": cap.generation_tokens_s * s,
                        "prompt_context_s": cap.prompt_context_s / s,
                    },
                    "ttft_slo_s": cfg.ttft_slo_s,
                    "tpot_slo_s": cfg.tpot_slo_s,
                    "cold_start_s": cfg.startup_s / s,
                    "scale_down_window_s": cfg.scale_down_window_s / s,
                }
            },
        }
    )
    head = f"# toposcale demo: the default rules and vllm_desired_replicas (demo clock: x{s:g})\n"
    return head + yaml.safe_dump(base, sort_keys=False)


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _prom_label(name: str) -> str:
    """A Kubernetes label key as Prometheus' Kubernetes discovery exposes it (app.kubernetes.io/name ->
    app_kubernetes_io_name)."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def file_sd_groups(targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scrape targets as a Prometheus `file_sd_configs` file: one group per target."""
    out = []
    for t in targets:
        url = urlsplit(t["url"])
        labels = {_prom_label(k): v for k, v in t["labels"].items()}
        out.append(
            {"targets": [url.netloc], "labels": {**labels, "__metrics_path__": url.path or "/metrics"}}
        )
    return out


def prometheus_job(file_sd: Path, speed: float) -> str:
    """The scrape job a user's Prometheus needs for `--prometheus-url`."""
    interval = f"{max(1, round(15 / speed))}s"  # 15 s, compressed like everything else
    return (
        "scrape_configs:\n"
        "  - job_name: toposcale-demo\n"
        f"    scrape_interval: {interval}\n"
        "    honor_labels: true  # dcgm-exporter series name the pod that holds the GPU\n"
        f"    file_sd_configs: [{{files: ['{file_sd}'], refresh_interval: 1s}}]"
    )
