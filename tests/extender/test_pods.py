"""GPU count and required scope of a pod, as the scheduler counts them (k8s.io/component-helpers
resource.PodRequests: containers summed, max with init containers, restartable init containers added)."""

from __future__ import annotations

import pytest
from toposcale.extender.pods import PodError, gpu_request, required_scope


def c(gpus: int | str | None, *, part: str = "both", restart: str | None = None) -> dict:
    res: dict = {}
    if gpus is not None:
        if part in ("both", "requests"):
            res["requests"] = {"nvidia.com/gpu": gpus, "cpu": "4"}
        if part in ("both", "limits"):
            res["limits"] = {"nvidia.com/gpu": gpus}
    out = {"name": "c", "resources": res}
    if restart:
        out["restartPolicy"] = restart
    return out


def pod(containers: list, init: list | None = None, annotations: dict | None = None) -> dict:
    spec: dict = {"containers": containers}
    if init is not None:
        spec["initContainers"] = init
    return {"metadata": {"name": "p", "namespace": "ns", "annotations": annotations or {}}, "spec": spec}


@pytest.mark.parametrize(
    ("p", "want"),
    [
        (pod([c("4")]), 4),
        (pod([c("2"), c("2"), c(None)]), 4),  # summed over containers
        (pod([c(4, part="limits")]), 4),  # limits only: requests default to them
        (pod([c("1")], init=[c("4")]), 4),  # an init container needing more raises the count
        (pod([c("4")], init=[c("2")]), 4),
        (pod([c("2")], init=[c("1", restart="Always"), c("2")]), 3),  # sidecar runs alongside everything
        (pod([c(None)]), 0),
        ({"metadata": {}, "spec": {}}, 0),
    ],
)
def test_gpu_count(p: dict, want: int) -> None:
    assert gpu_request(p) == want


def test_other_resource_name() -> None:
    p = pod([{"name": "c", "resources": {"limits": {"nvidia.com/gpu.shared": "2"}}}])
    assert gpu_request(p) == 0
    assert gpu_request(p, "nvidia.com/gpu.shared") == 2


@pytest.mark.parametrize("bad", ["1.5", "two", "-1", True])
def test_bad_quantities_are_pod_errors(bad) -> None:
    with pytest.raises(PodError, match=r"containers\[0\]"):
        gpu_request(pod([c(bad)]))


def test_required_scope() -> None:
    assert required_scope(pod([])) == "any"
    assert required_scope(pod([], annotations={"toposcale.io/required-scope": " NVLink "})) == "nvlink"
    with pytest.raises(PodError, match="'socket' is not one of nvlink, pcie-switch, host-bridge, numa, any"):
        required_scope(pod([], annotations={"toposcale.io/required-scope": "socket"}))
