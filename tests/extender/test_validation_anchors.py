"""Every validation in the extender and the agent matches the whole text: a pattern anchored `^...$` and
applied with `re.match` also takes a trailing newline, and `\\d` / `str.isdigit` take non-ASCII
digits (Arabic-Indic three, superscript two) that int() then reads or refuses (issue 19, item 4)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from toposcale.extender.agent.cpuset import parse_cpuset
from toposcale.extender.cli import add_arguments
from toposcale.extender.pods import PodError, gpu_request
from toposcale.extender.topology.annotations import (
    AnnotationError,
    allocation_from_doc,
    dumps,
    parse_observed,
    topology_from_doc,
)
from toposcale.extender.topology.model import is_valid_link, link_tier, nvlink_count
from toposcale.extender.topology.topo_text import parse_topo_text


def two_gpus(link: str = "NV4", cpus: str | None = None) -> dict[str, Any]:
    gpus: list[dict[str, Any]] = [{"id": "GPU-a", "index": 0}, {"id": "GPU-b", "index": 1}]
    if cpus is not None:
        gpus[0]["cpus"] = cpus
    return {"version": 1, "resource": "nvidia.com/gpu", "gpus": gpus, "links": [["X", link], [link, "X"]]}


@pytest.mark.parametrize("code", ["NV4\n", "SYS\n", "X\n", "\nNV4"])
def test_link_codes_with_a_newline_are_invalid(code: str) -> None:
    assert not is_valid_link(code) and nvlink_count(code) == 0
    with pytest.raises(AnnotationError):
        topology_from_doc(dumps(two_gpus(code)))
    assert link_tier("NV4") != link_tier("NV4\n")


@pytest.mark.parametrize("cpus", ["0-3\n", "0-3\n4", "\u0660-\u0663"])
def test_cpusets_with_a_newline_or_other_digits_are_invalid(cpus: str) -> None:
    with pytest.raises(AnnotationError):
        topology_from_doc(dumps(two_gpus(cpus=cpus)))


@pytest.mark.parametrize("observed", ["2026-11-26T10:00:00Z\n", "\u0662\u0660\u0662\u0666-11-26T10:00:00Z"])
def test_observed_with_a_newline_or_other_digits_is_invalid(observed: str) -> None:
    with pytest.raises(ValueError):
        parse_observed(observed)
    with pytest.raises(AnnotationError):
        allocation_from_doc(dumps({"version": 1, "allocated": [], "unhealthy": [], "observed": observed}))


def test_the_schema_patterns_still_accept_what_they_should() -> None:
    assert topology_from_doc(dumps(two_gpus("NV18", cpus="0-3,8"))).links[0][1] == "NV18"


def _pod(count: Any) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": count}}}]}}


@pytest.mark.parametrize("count", ["4\n", "4\nx", "4\n4", "\u0664"])
def test_gpu_counts_are_matched_whole(count: str) -> None:
    with pytest.raises(PodError, match="not a Kubernetes quantity"):
        gpu_request(_pod(count))
    assert gpu_request(_pod("4")) == 4


@pytest.mark.parametrize("prefix", ["/toposcale\n", "/a\n/b", "\n"])
def test_url_prefix_with_a_newline_is_a_usage_error(capsys, prefix: str) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)  # the parser only: a prefix taken by mistake must not start a server here
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--standalone", "--url-prefix", prefix])
    assert exit_.value.code == 2
    assert "argument --url-prefix" in capsys.readouterr().err


def test_topo_text_gpu_names_take_ascii_digits_only() -> None:
    one = "\u0661"  # Arabic-Indic digit one
    text = (f"\tGPU0\tGPU{one}\tCPU Affinity\tNUMA Affinity\n"
            f"GPU0\t X \tNV4\t0-3\t0\nGPU{one}\tNV4\t X \t0-3\t0\n")
    # that column is no GPU column (it was GPU 1: int() reads the digit), its row then no GPU row either
    assert len(parse_topo_text(text)) == 1
    assert len(parse_topo_text(text.replace(one, "1"))) == 2


def test_topo_text_numa_and_cpus_take_ascii_digits_only() -> None:
    text = ("\tGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\n"
            "GPU0\t X \tNV4\t0-3\t\u00b2\nGPU1\tNV4\t X \t\u0660-\u0663\t0\n")
    topo = parse_topo_text(text)
    assert topo.gpus[0].numa == -1 and topo.gpus[1].cpus is None


@pytest.mark.parametrize("text", ["\u00b2", "0-\u00b2", "\u0660-\u0663"])
def test_cpusets_take_ascii_digits_only(text: str) -> None:
    with pytest.raises(ValueError, match="not a cpuset"):
        parse_cpuset(text)
