"""`toposcale agent --once`: what a person runs on a GPU box to see what the scheduler will see."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from toposcale.extender.topology.annotations import (
    ALLOCATION_ANNOTATION,
    TOPOLOGY_ANNOTATION,
    allocation_from_doc,
    topology_from_doc,
)

from lab.kube.podresources import PodResourcesStandIn
from toposcale.cli import main

from .conftest import TOPOLOGIES, X4, X4_UUIDS

TOPOSCALE = str(Path(sys.executable).parent / "toposcale")
TOPO_FILES = [*sorted(TOPOLOGIES.glob("*.txt")), X4 / "topo_m.txt"]


def _once(capsys, *argv: str) -> tuple[int, dict, str]:
    rc = main(["agent", "--once", "--output", "-", *argv])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else {}), err


@pytest.mark.parametrize(
    "path", TOPO_FILES, ids=lambda p: p.parent.name if p.name == "topo_m.txt" else p.stem
)
def test_from_topo_file_prints_both_documents_as_objects(capsys, path: Path) -> None:
    rc, out, _ = _once(capsys, "--from-topo-file", str(path))
    assert rc == 0
    assert set(out) == {TOPOLOGY_ANNOTATION, ALLOCATION_ANNOTATION}
    topo_doc, alloc_doc = out[TOPOLOGY_ANNOTATION], out[ALLOCATION_ANNOTATION]
    assert isinstance(topo_doc, dict) and isinstance(alloc_doc, dict)
    topo = topology_from_doc(topo_doc)
    assert [g.id for g in topo.gpus] == [f"GPU{g.index}" for g in topo.gpus]
    alloc = allocation_from_doc(alloc_doc)
    assert alloc.allocated == frozenset() and alloc_doc["allocated"] == []


def test_from_topo_file_with_index_ids(capsys) -> None:
    rc, out, _ = _once(capsys, "--from-topo-file", str(X4 / "topo_m.txt"), "--device-id-strategy", "index")
    assert rc == 0
    assert [g["id"] for g in out[TOPOLOGY_ANNOTATION]["gpus"]] == ["0", "1", "2", "3"]


def test_from_capture_without_kubelet_prints_allocation_unknown(capsys, tmp_path) -> None:
    rc, out, err = _once(
        capsys,
        "--from-capture",
        str(X4 / "nvml_capture.json"),
        "--pod-resources-socket",
        str(tmp_path / "kubelet.sock"),
    )
    assert rc == 0
    assert out[ALLOCATION_ANNOTATION]["allocated"] is None
    assert [g["id"] for g in out[TOPOLOGY_ANNOTATION]["gpus"]] == X4_UUIDS
    assert out[TOPOLOGY_ANNOTATION]["links"][0] == ["X", "NV18", "NV18", "NV18"]
    assert "allocation unknown" in err


def test_output_to_a_file(capsys, tmp_path) -> None:
    target = tmp_path / "docs.json"
    rc = main(["agent", "--once", "--output", str(target), "--from-topo-file", str(X4 / "topo_m.txt")])
    assert rc == 0
    assert set(json.loads(target.read_text())) == {TOPOLOGY_ANNOTATION, ALLOCATION_ANNOTATION}


@pytest.mark.parametrize(
    ("content", "message"),
    [("hello world\n", "no header row"), ("\tGPU0\tGPU1\nGPU0\t X \tNV4\nGPU1\tNV2\t X \n", "not symmetric")],
)
def test_bad_topo_file_is_a_clear_error(capsys, tmp_path, content: str, message: str) -> None:
    bad = tmp_path / "topo.txt"
    bad.write_text(content)
    rc, _, err = _once(capsys, "--from-topo-file", str(bad))
    assert rc == 1
    assert message in err and "topology discovery failed" in err


def test_missing_topo_file_is_a_clear_error(capsys, tmp_path) -> None:
    rc, _, err = _once(capsys, "--from-topo-file", str(tmp_path / "nope.txt"))
    assert rc == 1 and "No such file" in err


def test_huge_topo_file_is_refused(capsys, tmp_path) -> None:
    big = tmp_path / "big.txt"
    big.write_text("GPU0\n" * 300_000)
    rc, _, err = _once(capsys, "--from-topo-file", str(big))
    assert rc == 1 and "larger than" in err


def test_service_mode_needs_a_node_name(capsys, monkeypatch) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    assert main(["agent", "--from-topo-file", str(X4 / "topo_m.txt")]) == 2
    assert "NODE_NAME" in capsys.readouterr().err


def test_service_without_kubernetes_credentials_is_a_clear_error(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    rc = main(["agent", "--node-name", "gpu-1", "--kubeconfig", str(tmp_path / "missing"), "--port", "0",
               "--host", "127.0.0.1", "--from-topo-file", str(X4 / "topo_m.txt")])
    assert rc == 1
    assert "no Kubernetes credentials" in capsys.readouterr().err


def test_an_unwritable_output_is_refused_before_discovery(capsys, tmp_path) -> None:
    out = tmp_path / "no" / "such" / "docs.json"
    # The capture would be read first otherwise; a path that does not exist proves it never was.
    rc = main(["agent", "--once", "--output", str(out), "--from-capture", str(tmp_path / "absent.json")])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"toposcale agent: cannot write {out} (--output)" in err and "is not a folder" in err


def test_kubeconfig_help_says_every_place_it_is_read_from() -> None:
    # toposcale.core.kube.api_client: in a pod the service account, else --kubeconfig, $KUBECONFIG,
    # ~/.kube/config.
    from toposcale.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["agent"]
    help_text = next(a.help for a in sub._actions if "--kubeconfig" in a.option_strings)
    assert "in-cluster service account" in help_text and "$KUBECONFIG" in help_text
    assert "~/.kube/config" in help_text


async def _published(kube, name: str, proc: asyncio.subprocess.Process) -> dict[str, str]:
    """The Node's toposcale annotations once the agent process has published both (or its exit)."""
    for _ in range(600):
        ann = kube.get("Node", name)["metadata"].get("annotations") or {}
        if TOPOLOGY_ANNOTATION in ann and ALLOCATION_ANNOTATION in ann:
            return ann
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.1)
    proc.kill()
    _, err = await proc.communicate()
    raise AssertionError(f"nothing published on {name}; agent said:\n{err.decode()[-2000:]}")


async def test_from_topo_file_with_a_node_name_publishes_as_the_daemonset_would(
    kube, deployed, kubelet: PodResourcesStandIn
) -> None:
    # A box whose NVML cannot be reached: its `nvidia-smi topo -m` text, its kubelet (the device plugin
    # with deviceIDStrategy index: a text file has no UUIDs), the agent's own RBAC, the real API server.
    from .conftest import node

    kube.add(node("lab-1"))
    kubelet.allocatable = {"nvidia.com/gpu": ["0", "1", "2", "3"]}
    kubelet.pods = [("llm", "vllm-0", "vllm", "nvidia.com/gpu", ["1", "2"])]
    proc = await asyncio.create_subprocess_exec(
        TOPOSCALE, "agent", "--from-topo-file", str(X4 / "topo_m.txt"), "--node-name", "lab-1",
        "--device-id-strategy", "index", "--pod-resources-socket", kubelet.socket,
        "--kubeconfig", str(deployed.kubeconfigs["toposcale-agent"]), "--host", "127.0.0.1", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        ann = await _published(kube, "lab-1", proc)
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()  # SIGTERM: a clean stop, as in the DaemonSet
    topo = topology_from_doc(json.loads(ann[TOPOLOGY_ANNOTATION]))
    assert [g.id for g in topo.gpus] == ["0", "1", "2", "3"] and topo.links[0][1] == "NV18"
    alloc = allocation_from_doc(json.loads(ann[ALLOCATION_ANNOTATION]))
    assert alloc.allocated == frozenset({"1", "2"})
