"""What the real scheduler run (test_stream) showed first, pinned without a cluster: a bound pod's GPUs were
counted twice when the agent published its allocation within `reflect_grace_s` (2 s) of the pod's
`status.startTime`.

The extender assumes a just-bound pod's GPUs taken until the node's allocation was observed `reflect_grace_s`
after the kubelet admitted the pod. The agent re-publishes only when the content changes (or every
`--refresh-interval`, 300 s), so an allocation observed within that grace stayed the last word on the node:
the pod was counted once in the annotation and once more as assumed, until `--assume-ttl` (120 s). The node
looked full (a 4-GPU pod on an 8-GPU box left "0 free": `insufficient-free-gpus`, score 0) and the next
pod's predicted set was wrong. Now an annotation observed no earlier than a pod's admission that lists at
least as many held GPUs as the node's bound pods ask ends the assumption too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from toposcale.extender.state import ClusterState

from lab.objects import gpu_node, make_pod


def stamp(delta_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


def bound(name: str, gpus: int, node: str, started: str | None) -> dict:
    pod = make_pod(name, gpus, node=node, phase="Running" if started else "Pending")
    pod["metadata"]["uid"] = f"uid-{name}"
    if started:
        pod["status"]["startTime"] = started
    return pod


def test_allocation_published_within_the_grace_is_not_counted_twice() -> None:
    st = ClusterState("nvidia.com/gpu", reflect_grace_s=2.0)
    st.nodes_relisted([gpu_node("hgx", "hgx-h100-nvswitch-8gpu", observed=stamp(-60))], "1")
    st.pods_relisted([], "1")
    start = stamp()
    st.pod_event("ADDED", bound("vllm-0", 4, "hgx", None))  # bound: assumed
    assert st.view("hgx").free_mask.bit_count() == 4
    st.pod_event("MODIFIED", bound("vllm-0", 4, "hgx", start))  # the kubelet admitted it
    # the agent saw it within a second and published: observed == startTime (both whole seconds)
    st.node_event("MODIFIED", gpu_node("hgx", "hgx-h100-nvswitch-8gpu", used=[4, 5, 6, 7], observed=start))
    assert st.view("hgx").free_mask == 0b00001111  # 4 free, not 0


def test_an_observation_short_of_the_bound_pods_keeps_the_assumption() -> None:
    st = ClusterState("nvidia.com/gpu", reflect_grace_s=2.0)
    start = stamp()
    st.nodes_relisted([gpu_node("hgx", "hgx-h100-nvswitch-8gpu", used=[0, 1], observed=start)], "1")
    # vllm-0 (2 GPUs) is in the annotation; vllm-1 (4 GPUs) was admitted the same second, not yet in it
    st.pods_relisted([bound("vllm-0", 2, "hgx", stamp(-30)), bound("vllm-1", 4, "hgx", start)], "1")
    assert st.view("hgx").free_mask.bit_count() == 2  # 8 - 2 published - 4 assumed
    # an observation from before the admission never ends it, whatever it lists
    st.node_event(
        "MODIFIED", gpu_node("hgx", "hgx-h100-nvswitch-8gpu", used=[0, 1, 2, 3, 4, 5], observed=stamp(-5))
    )
    assert st.view("hgx").free_mask.bit_count() == 0
    # the agent's next one lists all six: the assumption ends
    st.node_event(
        "MODIFIED", gpu_node("hgx", "hgx-h100-nvswitch-8gpu", used=[0, 1, 2, 3, 4, 5], observed=start)
    )
    assert st.view("hgx").free_mask == 0b11000000
