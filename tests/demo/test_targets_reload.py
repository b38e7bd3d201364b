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
