"""deploy/examples/qwen-dra: where its claim (4 GPUs of gpu.nvidia.com, matchAttribute pcieRoot) can be met.

The claim template is taken from the built example and run through toposcale's DRA first-fit predictor
(extender/topology/dra/, equal to the real kube-scheduler's allocation on thousands of states in
tests/dra) over NVIDIA-shaped ResourceSlices of fixture machines. A GPU's `resource.kubernetes.io/pcieRoot`
is its host bridge: GPUs that `nvidia-smi topo -m` shows PIX/PXB/PHB to each other share one, NODE/SYS
means different ones. What resourceclaimtemplate.yaml says about each kind of box is checked here.
"""

from __future__ import annotations

import pytest
from toposcale.extender.agent.observe import observe_topology
from toposcale.extender.topology import dra
from toposcale.extender.topology.dra import synth
from toposcale.extender.topology.model import Topology
from toposcale.extender.topology.topo_text import parse_topo_text

from .conftest import ROOT, Build

FIXTURES = ROOT / "tests" / "fixtures"
SAME_ROOT = {"PIX", "PXB", "PHB"}
CLASSES = {dra.DRIVER: synth.gpu_device_class(extended_resource=None)}


def roots_from_levels(topo: Topology) -> list[str]:
    """One root per group of GPUs joined by PIX/PXB/PHB (union-find); the fixture must show PCIe levels."""
    n = len(topo.gpus)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(n):
        for j in range(n):
            code = topo.links[i][j]
            assert not code.startswith("NV"), "NVLink hides the PCIe level: not usable here"
            if code in SAME_ROOT:
                parent[find(i)] = find(j)
    return [f"pci0000:{find(i):02x}" for i in range(n)]


def roots_from_bus(topo: Topology) -> list[str]:
    """The root as the driver derives it from the sysfs path; in a VM every GPU is on the guest's bus 00."""
    return [f"pci{g.pci.split(':')[0]}:{g.pci.split(':')[1]}" for g in topo.gpus if g.pci]


def claim(builds: dict[str, Build], constrained: bool = True) -> tuple[list[dra.Request], list[dict]]:
    tpl = builds["examples/qwen-dra"].one("ResourceClaimTemplate", "vllm-qwen-gpus")
    reqs, constraints = dra.claim_requests(tpl["spec"]["spec"])
    assert [(r.device_class, r.count) for r in reqs] == [(dra.DRIVER, 4)]
    assert constraints == [{"requests": ["gpus"], "matchAttribute": dra.PCIE_ROOT}]
    return reqs, constraints if constrained else []


def first_fit(topo: Topology, roots: list[str], reqs: list[dra.Request], constraints: list[dict]) -> str:
    pools = dra.prepare_pools([synth.slice_from_topology(topo, "n1", pcie_roots=roots)], "n1")
    p = dra.predict(pools, set(), reqs, constraints, CLASSES)
    return p.status if not p.ok else ",".join(d[2] for d in p.devices)


@pytest.mark.parametrize(
    ("fixture", "want"),
    [
        ("pcie-8gpu-two-switch-trees", "gpu-0,gpu-1,gpu-2,gpu-3"),  # a PXB tree of 4 under each socket
        ("l40s-4gpu-two-per-socket", "unsatisfiable"),  # NODE between GPUs: one per root
        ("rtx4090-8gpu-node-per-socket", "unsatisfiable"),
        ("rtx4090-8gpu-all-sys", "unsatisfiable"),
    ],
)
def test_the_claim_fits_only_where_4_gpus_share_a_pcie_root(
    builds: dict[str, Build], fixture: str, want: str
) -> None:
    topo = parse_topo_text((FIXTURES / "topologies" / f"{fixture}.txt").read_text())
    assert first_fit(topo, roots_from_levels(topo), *claim(builds)) == want


def test_the_claim_fits_the_real_4x_h100_vm_whose_gpus_share_the_guest_root_bus(
    builds: dict[str, Build],
) -> None:
    capture = FIXTURES / "nvml" / "h100-x4-vm-nvswitch" / "nvml_capture.json"
    topo = observe_topology(capture=str(capture)).topology
    roots = roots_from_bus(topo)
    assert roots == ["pci0000:00"] * 4  # 0000:00:06.0 .. 0000:00:09.0, as NVML reported them
    assert first_fit(topo, roots, *claim(builds)) == "gpu-0,gpu-1,gpu-2,gpu-3"


@pytest.mark.parametrize("per_root", [1, 2])
def test_on_an_nvswitch_board_with_few_gpus_per_root_only_the_unconstrained_claim_fits(
    builds: dict[str, Build], per_root: int
) -> None:
    # The PCIe side of an 8-GPU NVSwitch board is not in its `topo -m` (NV18 everywhere): one or two GPUs
    # per root is the layout the template's comment warns about; removing the constraint is its remedy.
    topo = parse_topo_text((FIXTURES / "topologies" / "hgx-h100-nvswitch-8gpu.txt").read_text())
    roots = [f"pci0000:{i // per_root:02x}" for i in range(len(topo.gpus))]
    assert first_fit(topo, roots, *claim(builds)) == "unsatisfiable"
    assert first_fit(topo, roots, *claim(builds, constrained=False)) == "gpu-0,gpu-1,gpu-2,gpu-3"


def test_a_gpu_without_the_attribute_never_matches(builds: dict[str, Build]) -> None:
    topo = parse_topo_text((FIXTURES / "topologies" / "pcie-8gpu-two-switch-trees.txt").read_text())
    roots: list[str | None] = list(roots_from_levels(topo))
    roots[1] = None  # the driver did not know gpu-1's root
    pools = dra.prepare_pools([synth.slice_from_topology(topo, "n1", pcie_roots=roots)], "n1")
    p = dra.predict(pools, set(), *claim(builds), CLASSES)
    assert [d[2] for d in p.devices] == ["gpu-4", "gpu-5", "gpu-6", "gpu-7"]


def test_the_example_is_the_qwen_deployment_with_claims_instead_of_the_extended_resource(
    builds: dict[str, Build],
) -> None:
    plain = builds["examples/qwen"].one("Deployment", "vllm-qwen")["spec"]["template"]["spec"]
    pod = builds["examples/qwen-dra"].one("Deployment", "vllm-qwen")["spec"]["template"]["spec"]
    assert pod["resourceClaims"] == [{"name": "gpus", "resourceClaimTemplateName": "vllm-qwen-gpus"}]
    res = pod["containers"][0]["resources"]
    assert res["claims"] == [{"name": "gpus"}]
    assert "nvidia.com/gpu" not in res["requests"] and "nvidia.com/gpu" not in res["limits"]
    assert pod["schedulerName"] == plain["schedulerName"] == "toposcale-scheduler"
    # everything else as in the plain example (the HPA, PVC, Service and PodMonitors come from it too)
    other = {o["kind"] for o in builds["examples/qwen-dra"].objects} - {"ResourceClaimTemplate"}
    assert other == {o["kind"] for o in builds["examples/qwen"].objects}


