"""The adapter re-reads its `--scrape-targets` file when it changes: the demo adds and removes replicas while
the adapter runs (a small change the demo made to adapter/sources/pods.py, `TargetsFile`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml
from toposcale.adapter.rules import RulesError
from toposcale.adapter.selectors import parse_selector
from toposcale.adapter.sources.pods import TargetsFile


def write(path: Path, pods: list[str]) -> None:
    doc = [
        {
            "url": f"http://127.0.0.1:{9000 + i}/metrics",
            "labels": {"namespace": "demo", "pod": p, "app": "vllm"},
        }
        for i, p in enumerate(pods)
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, path)


async def pods(finder: TargetsFile) -> list[str]:
    return [t.pod for t in await finder.workload(None, "demo", parse_selector("app=vllm"))]  # type: ignore[arg-type]


async def test_targets_come_and_go_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    write(path, ["vllm-0"])
    finder = TargetsFile(path)
    assert await pods(finder) == ["vllm-0"]
    write(path, ["vllm-0", "vllm-1", "vllm-2"])
    assert await pods(finder) == ["vllm-0", "vllm-1", "vllm-2"]
    write(path, ["vllm-2"])
    assert await pods(finder) == ["vllm-2"]
    assert await finder.namespace_exists("demo")
    write(path, [])
    assert await pods(finder) == []


async def test_a_broken_file_keeps_the_last_good_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "targets.yaml"
    write(path, ["vllm-0"])
    finder = TargetsFile(path)
    path.write_text("- url: not a url\n  labels: {}\n")
    with caplog.at_level(logging.ERROR):
        assert await pods(finder) == ["vllm-0"]
        assert await pods(finder) == ["vllm-0"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # once per change, not once per request
    path.unlink()
    assert await pods(finder) == ["vllm-0"]  # a vanished file is no reason to forget the pods either
    write(path, ["vllm-1"])
    assert await pods(finder) == ["vllm-1"]


def test_a_bad_file_at_start_still_fails_the_start(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text("{not: a list}")
    with pytest.raises(RulesError):
        TargetsFile(path)


async def test_prometheus_mode_lists_the_pods_that_exist_as_kube_state_metrics(tmp_path: Path) -> None:
    # With --prometheus-url the demo's Prometheus also scrapes kube-state-metrics' pod series, as a cluster's
    # does: the adapter expects only pods that exist (a scaled-in replica's `up == 0` outlives it by two
    # scrape intervals, and read "only 2 of 6 targets answered" after a 6 -> 2 scale-in).
    import asyncio
    import io
    import json

    import aiohttp

    from toposcale.demo.runner import Demo, DemoConfig, Replica

    sd = tmp_path / "sd.json"
    cfg = DemoConfig(workdir=tmp_path, prometheus_url="http://127.0.0.1:9", file_sd=sd)
    demo = Demo(cfg, io.StringIO(), asyncio.Event())
    try:
        from toposcale.demo.vllm_sim import _Endpoint

        demo.kube_state = _Endpoint(lambda: demo.kube_state_text().encode())
        await demo.kube_state.start()
        demo.replicas = {p: Replica(p, 0.0, phase=ph) for p, ph in
                         (("vllm-0", "Ready"), ("vllm-1", "Terminating"), ("vllm-2", "Pending"))}
        demo.write_targets()
        groups = json.loads(sd.read_text())
        ksm = [g for g in groups if g["labels"].get("app_kubernetes_io_name") == "kube-state-metrics"]
        assert len(ksm) == 1 and ksm[0]["targets"] == [demo.kube_state.url.split("/")[2]]
        async with aiohttp.ClientSession() as s, s.get(demo.kube_state.url) as r:
            text = await r.text()
        lines = text.splitlines()
        info = {ln.split('pod="')[1].split('"')[0] for ln in lines if ln.startswith("kube_pod_info")}
        deleting = [ln for ln in text.splitlines() if ln.startswith("kube_pod_deletion_timestamp")]
        assert info == {"vllm-0", "vllm-1", "vllm-2"}
        assert len(deleting) == 1 and 'pod="vllm-1"' in deleting[0]
        del demo.replicas["vllm-1"]  # gone: no longer listed at the next scrape
        async with aiohttp.ClientSession() as s, s.get(demo.kube_state.url) as r:
            assert 'pod="vllm-1"' not in await r.text()
    finally:
        await demo.close()
