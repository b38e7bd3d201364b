"""The real Prometheus (Debian package, /usr/bin/prometheus) on a free loopback port, scraping given targets.

Stable API (the dashboards colleague and the demo reuse it):

    job = ScrapeJob("vllm", ["127.0.0.1:8000"], labels={"namespace": "ml", "pod": "vllm-0"})
    prom = PrometheusServer([job], scrape_interval="1s")
    prom.start()                      # generated config, temp storage dir; waits until ready
    prom.wait_scraped(["vllm"])       # until every target of those jobs has been scraped and is up
    prom.query("up")                  # instant query -> list of {"metric": {...}, "value": [ts, "v"]}
    prom.url                          # "http://127.0.0.1:<port>"
    prom.stop()                       # SIGTERM, wait; the temp dir is removed
    with PrometheusServer(jobs) as prom: ...   # start + stop

A job scrapes `targets` ("host:port") at `metrics_path` (every `scrape_interval` if set); `labels` are
attached to every target of the job (the way Kubernetes service discovery attaches namespace/pod);
`honor_labels=True` keeps the exporter's own namespace/pod labels (as DCGM exporter setups do).
Blocking calls: use `asyncio.to_thread` from async tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from toposcale.core.ports import free_port

PROMETHEUS = os.environ.get("TOPOSCALE_PROMETHEUS", "/usr/bin/prometheus")


@dataclass
class ScrapeJob:
    name: str
    targets: list[str]
    labels: dict[str, str] = field(default_factory=dict)
    metrics_path: str = "/metrics"
    honor_labels: bool = False
    scrape_interval: str | None = None  # default: the server's


class PrometheusServer:
    def __init__(self, jobs: list[ScrapeJob], *, scrape_interval: str = "1s", port: int | None = None,
                 binary: str = PROMETHEUS) -> None:
        self.jobs = jobs
        self.scrape_interval = scrape_interval
        self.port = port or free_port()
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "scrape_configs": [
                {
                    "job_name": j.name,
                    "metrics_path": j.metrics_path,
                    "honor_labels": j.honor_labels,
                    "static_configs": [{"targets": j.targets, "labels": j.labels}],
                    **({"scrape_interval": j.scrape_interval, "scrape_timeout": self.scrape_interval}
                       if j.scrape_interval else {}),
                }
                for j in self.jobs
            ],
        }

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"{self.binary} not found: install the Debian 'prometheus' package")
        self._dir = Path(tempfile.mkdtemp(prefix="toposcale-prom-"))
        cfg = self._dir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(self.config()))
        self._log = open(self._dir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={cfg}", f"--storage.tsdb.path={self._dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus not ready after {timeout}s")

    def log_tail(self) -> str:
        if self._dir is None:
            return ""
        try:
            return (self._dir / "prometheus.log").read_text()[-2000:]
        except OSError:
            return ""

    def api(self, path: str, **params: str) -> Any:
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{q}", timeout=5) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        return self.api("query", query=promql)["result"]

    def wait_scraped(self, jobs: list[str] | None = None, timeout: float = 30.0) -> None:
        """Until each target of `jobs` (default all) is up and has been scraped at least twice."""
        want = set(jobs or [j.name for j in self.jobs])
        expected = sum(len(j.targets) for j in self.jobs if j.name in want)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active = self.api("targets", state="active")["activeTargets"]
            ready = [t for t in active if t["labels"].get("job") in want and t["health"] == "up"]
            if len(ready) >= expected:
                # a second scrape makes rate() and staleness checks meaningful
                sel = "|".join(want)
                res = self.query(f'count_over_time(up{{job=~"{sel}"}}[5m]) >= 2')
                if len(res) >= expected:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"prometheus did not scrape {sorted(want)} within {timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
