"""Hostile ResourceClaims and ResourceSlices for DRA first-fit (issue 28): CEL selectors nested past any
real use, integer literals past int64, quantities with enormous exponents or mantissas, over-long
expressions. Each is `DraUnknown` (the node's DRA prediction unknown, a neutral score with the reason), never
a RecursionError, a stray ValueError or a computation that holds the extender."""

from __future__ import annotations

import pytest
from toposcale.extender import draview
from toposcale.extender.topology import dra
from toposcale.extender.topology.dra import synth

from .test_dra import node_slice, topo

GPU_ATTR = 'device.attributes["gpu.nvidia.com"]'
MEMORY = 'device.capacity["gpu.nvidia.com"].memory'


@pytest.mark.parametrize(
    "expr",
    [
        "(" * 200 + "true" + ")" * 200,  # RecursionError before
        "!" * 2000 + "true",  # RecursionError before
        f"{GPU_ATTR}.index == " + "9" * 5000,  # ValueError (int string conversion limit) before
        f"{GPU_ATTR}.index == 99999999999999999999",  # past int64: a CEL parse error; compiled before
        f'{MEMORY}.compareTo(quantity("1e400")) >= 0',  # 10^400 bytes: nothing real; computed before
        f'{MEMORY}.compareTo(quantity("1{"0" * 5000}")) >= 0',  # ValueError before
        " && ".join(["true"] * 3000),  # 17 KB: the API server refuses CEL selectors over 10 KiB
    ],
    ids=["parens", "nots", "long-int", "int64", "qty-exponent", "qty-digits", "too-long"],
)
def test_hostile_selectors_are_unknown(expr: str) -> None:
    with pytest.raises(dra.DraUnknown):
        dra.compile_selector(expr)


def test_moderate_nesting_still_compiles() -> None:
    dra.compile_selector("(" * 20 + f'{GPU_ATTR}.productName == "H100"' + ")" * 20)
    dra.compile_selector("!" * 20 + "true")
    dra.compile_selector(f"{GPU_ATTR}.index == -9223372036854775808")


@pytest.mark.parametrize("value", ["1e99999999", "1" + "0" * 5000, "1e-400"])
def test_a_slice_capacity_out_of_range_is_unknown(value: str) -> None:
    s = node_slice()
    s["spec"]["devices"][0]["capacity"] = {"memory": {"value": value}}
    with pytest.raises(dra.DraUnknown):
        dra.prepare_pools([s], "n1")


def test_a_claim_with_a_hostile_selector_gives_a_reason() -> None:
    claim = {
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": "gpus",
                        "exactly": {
                            "deviceClassName": "gpu.nvidia.com",
                            "count": 2,
                            "selectors": [{"cel": {"expression": "(" * 500 + "true" + ")" * 500}}],
                        },
                    }
                ]
            }
        }
    }
    refs = [{"name": "g", "resourceClaimName": "c"}]
    pod = {"metadata": {"namespace": "ml"}, "spec": {"resourceClaims": refs}}
    classes = {"gpu.nvidia.com": synth.gpu_device_class()}
    ask = draview.claim_ask(pod, {}, {"ml/c": claim}, classes)
    assert isinstance(ask, draview.ClaimAsk)
    node = draview.dra_node("gpu.nvidia.com", [node_slice()], "n1", set(), classes)
    reason = draview.dra_decision(topo("dgx-a100-nvswitch-8gpu"), node, ask.k, None, ask)
    # before: RecursionError out of the extender's filter/prioritize
    assert isinstance(reason, str) and "DRA prediction unknown" in reason and "nested deeper" in reason
    assert len(reason) < 400, len(reason)


def test_a_huge_node_search_is_unknown_within_a_bounded_number_of_devices_examined() -> None:
    # 2,048 GPU devices (16 slices of 128, the API's most per slice) in pcieRoot groups of 3, a claim of 4
    # sharing a root: no solution, and ~17 M devices to look at before saying so (16.9 s; 8 requests: 81 s)
    slices = [
        {
            "metadata": {"name": f"g-{i}"},
            "spec": {
                "driver": "gpu.nvidia.com",
                "nodeName": "n1",
                "pool": {"name": "big", "generation": 1, "resourceSliceCount": 16},
                "devices": [
                    {
                        "name": f"gpu-{i}-{j}",
                        "attributes": {
                            "type": {"string": "gpu"},
                            dra.PCIE_ROOT: {"string": f"r{(i * 128 + j) // 3}"},
                        },
                    }
                    for j in range(128)
                ],
            },
        }
        for i in range(16)
    ]
    pools = dra.prepare_pools(slices, "n1")
    ask = dra.Request("gpu", "gpu.nvidia.com", 4, False, [])
    classes = {"gpu.nvidia.com": synth.gpu_device_class()}
    p = dra.predict(pools, set(), [ask], [{"matchAttribute": dra.PCIE_ROOT}], classes)
    assert (p.status, p.reason) == ("unknown", "search beyond 200000 devices examined")  # before: 16.9 s
