"""`toposcale demo --prometheus-url`: the adapter reads a real Prometheus (the Debian package, started by
the test harness) that discovers the demo's replicas and dcgm-exporters through the demo's file_sd list."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.peers.prometheus import PrometheusServer

pytestmark = pytest.mark.slow


class FileSdPrometheus(PrometheusServer):
    """The harness' Prometheus with the one job the demo prints for users (file_sd, honor_labels)."""

    def __init__(self, file_sd: Path) -> None:
        super().__init__([], scrape_interval="500ms")
        self.file_sd = file_sd

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["scrape_configs"] = [
            {
                "job_name": "toposcale-demo",
                "honor_labels": True,
                "file_sd_configs": [{"files": [str(self.file_sd)], "refresh_interval": "1s"}],
            }
        ]
        return cfg


def test_demo_through_a_real_prometheus(tmp_path: Path) -> None:
    file_sd = tmp_path / "sd.json"
    summary = tmp_path / "summary.json"
    with FileSdPrometheus(file_sd) as prom:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "toposcale.cli",
                "demo",
                "--duration",
                "15",
                "--speed",
                "20",
                "--seed",
                "3",
                "--prometheus-url",
                prom.url,
                "--prometheus-file-sd",
                str(file_sd),
                "--summary-json",
                str(summary),
                "--workdir",
                str(tmp_path / "work"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        # Prometheus really scraped the replicas, with the labels the adapter selects on
        # replicas that left are stale now; every one that was ever ready is inside the window
        vllm = 'vllm:num_requests_waiting{namespace="demo", app="vllm"}'
        series = prom.query(f"count by (pod) (last_over_time({vllm}[10m]))")
        gpu = prom.query('count by (pod) (last_over_time(DCGM_FI_DEV_GPU_UTIL{namespace="demo"}[10m]))')
    s = json.loads(summary.read_text())
    story = proc.stdout[-3000:]  # the demo's placements and replica counts, for a failure's message
    scraped = {r["metric"]["pod"] for r in series}
    on_gpus = {g["metric"]["pod"] for g in gpu}
    placed = {p["pod"] for p in s["placements"]}
    assert len(scraped) >= 3, story  # one per replica that was ever ready
    # honor_labels kept the exporters' pod label: each replica Prometheus scraped is named on the GPUs it held
    # (without it the label is the target's, dcgm-exporter-<node>). Not the other way round: a replica holds
    # its GPUs from placement on, so one removed or still loading before it was ready is on GPU series only.
    assert scraped <= on_gpus, story
    assert on_gpus <= placed, story  # and every pod a GPU series names is one the demo placed there
    assert s["peak_replicas"] >= 3 and s["hpa_errors"] == [] and s["problems"] == []
    assert all(x["kv"] is not None for x in s["samples"])
    adapter_log = Path(s["services"]["adapter"]["log"]).read_text()
    assert '"source": "prometheus"' in adapter_log
    groups = json.loads(file_sd.read_text())  # what is left at the end: the exporters, the last replicas
    assert all(g["targets"][0].startswith("127.0.0.1:") and "__metrics_path__" in g["labels"] for g in groups)
    assert any(g["labels"].get("app_kubernetes_io_name") == "dcgm-exporter" for g in groups)
