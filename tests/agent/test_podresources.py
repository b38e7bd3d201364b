"""The kubelet pod-resources client against a real gRPC server on a unix socket serving the kubelet proto, for
what a real kubelet does not do on demand (lab/kube/podresources.py says which); allocated and
allocatable from a real kubelet: tests/kubelet/test_real_kubelet.py."""

from __future__ import annotations

from toposcale.extender.agent.podresources.client import PodResourcesClient

from lab.kube.podresources import PodResourcesStandIn

from .conftest import X4_UUIDS


async def test_resource_name_is_configurable(kubelet: PodResourcesStandIn) -> None:
    kubelet.pods = [
        ("a", "p", "c", "nvidia.com/gpu", ["0"]),
        ("a", "q", "c", "nvidia.com/mig-1g.10gb", ["MIG-1"]),
    ]
    client = PodResourcesClient(kubelet.socket)
    try:
        snap = await client.snapshot("nvidia.com/mig-1g.10gb")
    finally:
        await client.close()
    assert snap.allocated == {"MIG-1"}


async def test_missing_socket_is_allocation_unknown_and_backs_off(tmp_path) -> None:
    client = PodResourcesClient(str(tmp_path / "kubelet.sock"), backoff_initial=30.0)
    first = await client.snapshot("nvidia.com/gpu")
    assert first.error is not None and "does not exist" in first.error
    assert first.allocated is None  # unknown, never "nothing held"
    assert client.backing_off
    second = await client.snapshot("nvidia.com/gpu")
    assert second.allocated is None and "retrying in" in (second.error or "")


async def test_slow_kubelet_times_out_as_allocation_unknown(kubelet: PodResourcesStandIn) -> None:
    kubelet.delay = 1.0
    client = PodResourcesClient(kubelet.socket, timeout=0.2)
    try:
        snap = await client.snapshot("nvidia.com/gpu")
    finally:
        await client.close()
    assert snap.allocated is None
    assert "timed out" in (snap.error or "")


async def test_kubelet_back_after_a_failure_is_used_again(kubelet: PodResourcesStandIn) -> None:
    kubelet.pods = [("a", "p", "c", "nvidia.com/gpu", [X4_UUIDS[0]])]
    kubelet.delay = 1.0
    client = PodResourcesClient(kubelet.socket, timeout=0.2, backoff_initial=0.0)
    try:
        assert (await client.snapshot("nvidia.com/gpu")).error
        kubelet.delay = 0.0
        snap = await client.snapshot("nvidia.com/gpu")
    finally:
        await client.close()
    assert snap.error is None and snap.allocated == {X4_UUIDS[0]}


async def test_old_kubelet_without_get_allocatable_still_gives_allocation(
    kubelet: PodResourcesStandIn,
) -> None:
    kubelet.allocatable_unimplemented = True
    kubelet.pods = [("a", "p", "c", "nvidia.com/gpu", [X4_UUIDS[1]])]
    client = PodResourcesClient(kubelet.socket)
    try:
        snap = await client.snapshot("nvidia.com/gpu")
        again = await client.snapshot("nvidia.com/gpu")
    finally:
        await client.close()
    assert snap.error is None and snap.allocatable is None and snap.allocated == {X4_UUIDS[1]}
    assert again.allocated == {X4_UUIDS[1]}
    assert kubelet.calls["GetAllocatableResources"] == 1  # not asked again once it said UNIMPLEMENTED


async def test_a_socket_that_is_not_a_kubelet_is_allocation_unknown(tmp_path) -> None:
    target = tmp_path / "k.sock"
    target.write_text("")  # a plain file where the socket should be
    path = str(target)
    client = PodResourcesClient(path, timeout=0.5)
    try:
        snap = await client.snapshot("nvidia.com/gpu")
    finally:
        await client.close()
    assert snap.allocated is None and snap.error
    assert target.exists()
