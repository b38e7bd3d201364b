"""The demo's HPA loop: the HPA's metrics read from the adapter's external.metrics.k8s.io over HTTP,
HPAController's decision applied to spec.replicas."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp

from .external_metrics import read_external_metric
from .hpa import MetricError
from .services import SELECTOR, prometheus_job

logger = logging.getLogger("toposcale.demo")


class HPALoop:
    """The HorizontalPodAutoscaler (a mixin of runner.Demo)."""

    async def read_metric(
        self, http: aiohttp.ClientSession, name: str, selector: str
    ) -> list[int] | Exception:
        return await read_external_metric(http, self.adapter.base_url, self.cfg.namespace, name, selector)

    async def hpa_sync(self, http: aiohttp.ClientSession, now: float) -> None:
        readings: dict[str, list[int] | Exception] = {}
        for m in self.hpa.spec.metrics:
            readings[m.name] = await self.read_metric(http, m.name, m.selector)
        if "vllm_kv_cache_usage" not in readings:  # shown in the status line whatever the HPA scales on
            readings_kv = await self.read_metric(http, "vllm_kv_cache_usage", SELECTOR)
        else:
            readings_kv = readings["vllm_kv_cache_usage"]
        kv = readings_kv
        self.last_kv = sum(kv) / 1000 / len(kv) if isinstance(kv, list) and kv else None
        gpu = await self.read_metric(http, "gpu_utilization", SELECTOR)
        self.last_gpu = sum(gpu) / 1000 / len(gpu) if isinstance(gpu, list) and gpu else None
        decision = self.hpa.reconcile(
            now,
            self.spec_replicas,
            len(self.ready()),
            readings,
            status_replicas=len(self.active()),  # Deployment status.replicas: pods not terminating
            pods=len(self.replicas),  # what the HPA's pod lister finds by selector, terminating ones too
        )
        errs = [f"{k}: {v}" for k, v in decision.proposals.items() if isinstance(v, str)]
        if errs:  # the HPA would show them in its conditions (ScalingActive / FailedGetExternalMetric)
            self.story.hpa_errors.append((now, "; ".join(errs)))
            logger.warning("HPA could not read a metric", extra={"errors": errs})
        if decision.reason == "FailedGetExternalMetric":
            self.hpa_note = "keeps replicas: " + (errs[0][:70] if errs else "metric error")
        else:
            short = {
                "vllm_kv_cache_usage": "kv",
                "vllm_requests_waiting": "queue",
                "vllm_desired_replicas": "desired",
            }
            props = " ".join(
                f"{short.get(k, k)}:{'error' if isinstance(v, str) else v}"
                for k, v in decision.proposals.items()
            )
            self.hpa_note = f"{props} -> {decision.desired} {decision.reason}"
        self.spec_replicas = decision.desired
        self.reconcile_replicaset(now)

    async def wait_for_prometheus(self, http: aiohttp.ClientSession) -> None:
        """Until the adapter answers from Prometheus for the first replica (Prometheus has scraped it)."""
        assert self.cfg.file_sd is not None
        self.say(f"waiting for {self.cfg.prometheus_url} to scrape the first replica ...")
        deadline = time.monotonic() + self.cfg.prometheus_wait_s
        last: list[int] | Exception = MetricError("no answer yet")
        while time.monotonic() < deadline and not self.stop.is_set():
            last = await self.read_metric(http, "vllm_requests_waiting", SELECTOR)
            if isinstance(last, list) and last:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.5)
        if self.stop.is_set():
            return
        raise RuntimeError(
            f"Prometheus at {self.cfg.prometheus_url} has not scraped the demo's replicas within "
            f"{self.cfg.prometheus_wait_s:g}s (adapter: {last}). Add this job to its configuration and "
            f"reload it:\n{prometheus_job(self.cfg.file_sd, self.cfg.speed)}"
        )
