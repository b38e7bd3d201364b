"""The DRA predictor (extender/topology/dra/): order, backtracking, CEL subset, joins and scoring.

Answers worked out by hand from the structured allocator's incubating variant; a brute-force model (the first
combination, in device order, that satisfies selectors and matchAttribute) cross-checks random states.
The real kube-scheduler checks the same predictor in tests/dra/.
"""

from __future__ import annotations

import random
from fractions import Fraction
from itertools import combinations
from pathlib import Path

import pytest
from toposcale.extender.topology import dra
from toposcale.extender.topology.allocator import mask_of
from toposcale.extender.topology.dra import synth
from toposcale.extender.topology.model import Tier
from toposcale.extender.topology.topo_text import parse_topo_text

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "topologies"
CLASSES = {"gpu.nvidia.com": synth.gpu_device_class()}


def topo(name: str):
    return parse_topo_text((FIXTURES / f"{name}.txt").read_text())


def req(count: int = 4, *selectors: str, name: str = "gpu", all_devices: bool = False) -> dra.Request:
    return dra.Request(name, "gpu.nvidia.com", count, all_devices, list(selectors))


def names(p: dra.Prediction) -> list[str]:
    return [d[2] for d in p.devices]


def node_slice(n: int = 8, node: str = "n1", order=None, roots=None, **kw) -> dict:
    t = topo("dgx-a100-nvswitch-8gpu") if n == 8 else topo("a100-4gpu-bridged-pairs-two-sockets")
    return synth.slice_from_topology(t, node, order=order, pcie_roots=roots, **kw)


def run(slices, allocated=(), requests=None, constraints=(), node="n1", classes=CLASSES) -> dra.Prediction:
    pools = dra.prepare_pools(slices, node)
    used = {("gpu.nvidia.com", node, f"gpu-{i}") for i in allocated}
    return dra.predict(pools, used, requests or [req()], list(constraints), classes)


PCIE = [{"matchAttribute": dra.PCIE_ROOT}]


# --- order ----------------------------------------------------------------------------------------------


def test_first_free_devices_in_slice_order():
    p = run([node_slice()], allocated=[1, 4])
    assert p.ok and names(p) == ["gpu-0", "gpu-2", "gpu-3", "gpu-5"]
    assert p.requests == ("gpu",) * 4


def test_slice_order_not_device_names():
    order = [5, 3, 7, 1, 0, 2, 4, 6]
    p = run([node_slice(order=order)], allocated=[3])
    assert names(p) == ["gpu-5", "gpu-7", "gpu-1", "gpu-0"]


def test_slices_by_name_pools_by_name():
    t = topo("dgx-a100-nvswitch-8gpu")
    a = synth.slice_from_topology(t, "n1", order=[4, 5, 6, 7], name="z-slice")
    b = synth.slice_from_topology(t, "n1", order=[0, 1, 2, 3], name="a-slice")
    for s in (a, b):
        s["spec"]["pool"]["resourceSliceCount"] = 2
    assert names(run([a, b], allocated=[0])) == ["gpu-1", "gpu-2", "gpu-3", "gpu-4"]
    # Two pools: "n1-b" sorts after "n1-a" whatever the listing order.
    pa = synth.slice_from_topology(t, "n1", order=[6, 7], name="x")
    pb = synth.slice_from_topology(t, "n1", order=[0, 1, 2, 3], name="y")
    pa["spec"]["pool"]["name"], pb["spec"]["pool"]["name"] = "n1-a", "n1-b"
    p = run([pb, pa])
    assert p.devices[:2] == (("gpu.nvidia.com", "n1-a", "gpu-6"), ("gpu.nvidia.com", "n1-a", "gpu-7"))
    assert names(p) == ["gpu-6", "gpu-7", "gpu-0", "gpu-1"]


def test_generation_and_completeness():
    old = node_slice(order=[7, 6, 5, 4, 3, 2, 1, 0], name="old")
    new = node_slice(name="new", generation=2)
    assert names(run([old, new])) == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    half = node_slice(order=[0, 1, 2, 3])
    half["spec"]["pool"]["resourceSliceCount"] = 2
    pools = dra.prepare_pools([half], "n1")
    assert pools.incomplete == ["gpu.nvidia.com/n1"] and not pools.devices
    assert run([half]).status == "unsatisfiable"


def test_other_nodes_slices_ignored_and_duplicates_invalid():
    mine, other = node_slice(), node_slice(node="n2")
    assert run([other, mine]).ok
    dup = node_slice(order=[0, 1, 2, 3, 3])
    p = run([dup])
    assert p.status == "error" and "invalid" in p.reason


def test_too_few_free():
    p = run([node_slice(n=4)], allocated=[2])
    assert p.status == "unsatisfiable" and not p.devices


# --- matchAttribute ---------------------------------------------------------------------------------------


def test_match_attribute_backtracks_to_next_group():
    roots = ["pci0000:00"] * 4 + ["pci0000:80"] * 4
    p = run([node_slice(roots=roots)], allocated=[1], constraints=PCIE)
    assert names(p) == ["gpu-4", "gpu-5", "gpu-6", "gpu-7"]


def test_match_attribute_interleaved_order():
    roots = ["A", "B", "A", "B", "A", "B", "A", "B"]  # by GPU index
    order = [0, 1, 2, 3, 4, 5, 6, 7]
    p = run([node_slice(order=order, roots=roots)], allocated=[0], constraints=PCIE)
    assert names(p) == ["gpu-1", "gpu-3", "gpu-5", "gpu-7"]
    p = run([node_slice(order=order, roots=roots)], constraints=PCIE)
    assert names(p) == ["gpu-0", "gpu-2", "gpu-4", "gpu-6"]


def test_match_attribute_missing_attribute_skips_device():
    roots = [None, "A", "A", "A", "A", "B", "B", "B"]
    p = run([node_slice(roots=roots)], constraints=PCIE)
    assert names(p) == ["gpu-1", "gpu-2", "gpu-3", "gpu-4"]
    roots = [None] * 8
    assert run([node_slice(roots=roots)], constraints=PCIE).status == "unsatisfiable"


def test_match_attribute_driver_domain_and_request_filter():
    # "gpu.nvidia.com/productName" finds the bare "productName" the driver publishes.
    p = run([node_slice()], constraints=[{"matchAttribute": "gpu.nvidia.com/productName"}])
    assert p.ok
    p = run([node_slice()], constraints=[{"matchAttribute": "other.example.com/productName"}])
    assert p.status == "unsatisfiable"
    # Constraint limited to request "b": request "a" is free of it.
    roots = ["A", "B", "A", "B", "A", "B", "A", "B"]
    reqs = [req(2, name="a"), req(2, name="b")]
    p = run(
        [node_slice(roots=roots)],
        requests=reqs,
        constraints=[{"matchAttribute": dra.PCIE_ROOT, "requests": ["b"]}],
    )
    assert names(p) == ["gpu-0", "gpu-1", "gpu-2", "gpu-4"]
    assert p.requests == ("a", "a", "b", "b")


def test_requests_restart_from_first_device():
    reqs = [req(1, "device.attributes['gpu.nvidia.com'].uuid.startsWith('GPU')", name="a"), req(2, name="b")]
    p = run([node_slice(order=[3, 2, 1, 0, 4, 5, 6, 7])], requests=reqs)
    assert names(p) == ["gpu-3", "gpu-2", "gpu-1"]


def test_all_mode():
    p = run([node_slice(n=4)], requests=[req(0, all_devices=True)])
    assert names(p) == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    assert (
        run([node_slice(n=4)], allocated=[1], requests=[req(0, all_devices=True)]).status == "unsatisfiable"
    )
    roots = ["A", "A", "B", "B"]
    p = run([node_slice(n=4, roots=roots)], requests=[req(0, all_devices=True)], constraints=PCIE)
    assert p.status == "error"


# --- CEL ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "want"),
    [
        ('device.driver == "gpu.nvidia.com"', True),
        ("device.driver != 'gpu.nvidia.com'", False),
        ('device.attributes["gpu.nvidia.com"].type == "gpu"', True),
        ('device.attributes["gpu.nvidia.com"]["productName"] == "NVIDIA H100 80GB HBM3"', True),
        ('device.attributes["resource.kubernetes.io"].pcieRoot == "pci0000:00"', True),
        ('device.capacity["gpu.nvidia.com"].memory.compareTo(quantity("80Gi")) >= 0', False),
        ('device.capacity["gpu.nvidia.com"].memory.compareTo(quantity("79Gi")) >= 0', True),
        ('device.capacity["gpu.nvidia.com"].memory.isGreaterThan(quantity("40Gi"))', True),
        ('device.capacity["gpu.nvidia.com"].memory.isLessThan(quantity("40Gi"))', False),
        ('"uuid" in device.attributes["gpu.nvidia.com"]', True),
        ('"nvlinkDomain" in device.attributes["gpu.nvidia.com"]', False),
        (
            'device.attributes["gpu.nvidia.com"].productName.startsWith("NVIDIA H100") && '
            '!(device.attributes["gpu.nvidia.com"].brand == "Tesla")',
            True,
        ),
        ('device.attributes["gpu.nvidia.com"].type == "mig" || device.driver == "gpu.nvidia.com"', True),
        # A missing attribute is an error, but && / || absorb it when the other side decides.
        (
            'device.attributes["gpu.nvidia.com"].type == "mig" && '
            'device.attributes["gpu.nvidia.com"].nope == 1',
            False,
        ),
        ('device.attributes["other.example.com"].x == 1 || true', True),
    ],
)
def test_cel_supported_forms(expr, want):
    d = dra.prepare_pools([node_slice(roots=["pci0000:00"] * 8)], "n1").devices[0]
    assert dra.compile_selector(expr)(d) is want


@pytest.mark.parametrize(
    "expr",
    [
        'device.attributes["gpu.nvidia.com"].driverVersion.isGreaterThan(semver("550.0.0"))',
        'device.attributes["gpu.nvidia.com"].driverVersion == "560.35.3"',  # a version attribute
        'device.attributes["gpu.nvidia.com"].type == 1',  # type mismatch
        'device.attributes["gpu.nvidia.com"].productName.matches("H1.0")',
        "size(device.attributes) > 0",
        "device.allowMultipleAllocations == false",
        'device.capacity["gpu.nvidia.com"].memory == quantity("81559Mi")',
    ],
)
def test_cel_other_forms_are_unknown(expr):
    p = run([node_slice()], requests=[req(4, expr)])
    assert p.status == "unknown", p


def test_cel_missing_attribute_is_the_schedulers_error():
    p = run([node_slice()], requests=[req(4, 'device.attributes["gpu.nvidia.com"].nvlinkDomain == "x"')])
    assert p.status == "error" and "no such key" in p.reason
    # A missing domain is an empty map: "in" works, selection errors.
    p = run([node_slice()], requests=[req(4, '"x" in device.attributes["nope.example.com"]')])
    assert p.status == "unsatisfiable"


def test_class_and_request_selectors():
    mig_class = {
        "metadata": {"name": "mig"},
        "spec": {"selectors": [{"cel": {"expression": 'device.attributes["gpu.nvidia.com"].type == "mig"'}}]},
    }
    p = run([node_slice()], requests=[dra.Request("r", "mig", 1)], classes={**CLASSES, "mig": mig_class})
    assert p.status == "unsatisfiable"
    p = run([node_slice()], requests=[dra.Request("r", "missing", 1)])
    assert p.status == "error"
    sel = f'device.attributes["gpu.nvidia.com"].uuid != "{synth.fake_uuid("n1", 0)}"'
    t = topo("dgx-a100-nvswitch-8gpu")
    assert t.gpus[0].uuid is None  # the fixture has no UUIDs: the slice gets made-up ones
    assert names(run([node_slice()], requests=[req(2, sel)])) == ["gpu-1", "gpu-2"]


def test_quantities():
    assert dra.parse_quantity("81559Mi") == 81559 * 2**20
    assert dra.parse_quantity("1.5G") == 1_500_000_000
    assert dra.parse_quantity("100m") == Fraction(1, 10)
    assert dra.parse_quantity("2e3") == 2000
    with pytest.raises(dra.DraUnknown):
        dra.parse_quantity("12 GB")


# --- requests and classes -------------------------------------------------------------------------------


def test_extended_resource_requests_as_the_scheduler_names_them():
    pod = {
        "spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "1"}}},
                {
                    "name": "b",
                    "resources": {"requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "4"}},
                },
            ]
        }
    }
    (r,) = dra.extended_resource_requests(pod, "nvidia.com/gpu", "gpu.nvidia.com")
    assert (r.name, r.count, r.device_class) == ("container-1-request-2", 4, "gpu.nvidia.com")


def test_class_for_extended_resource():
    a = {
        "metadata": {"name": "b-class", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"extendedResourceName": "nvidia.com/gpu"},
    }
    b = {
        "metadata": {"name": "a-class", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"extendedResourceName": "nvidia.com/gpu"},
    }
    c = {
        "metadata": {"name": "z-class", "creationTimestamp": "2026-02-01T00:00:00Z"},
        "spec": {"extendedResourceName": "nvidia.com/gpu"},
    }
    assert dra.class_for_extended_resource([a, b], "nvidia.com/gpu")["metadata"]["name"] == "a-class"
    assert dra.class_for_extended_resource([a, b, c], "nvidia.com/gpu")["metadata"]["name"] == "z-class"
    assert dra.class_for_extended_resource([a], "example.com/fpga") is None
    implicit = dra.class_for_extended_resource([a], "deviceclass.resource.kubernetes.io/b-class")
    assert implicit is a


def test_claim_requests_from_a_template_spec():
    spec = {
        "devices": {
            "requests": [{"name": "gpus", "exactly": {"deviceClassName": "gpu.nvidia.com", "count": 4}}],
            "constraints": [{"matchAttribute": dra.PCIE_ROOT}],
        }
    }
    reqs, cons = dra.claim_requests(spec)
    assert reqs[0].count == 4 and cons == [{"matchAttribute": dra.PCIE_ROOT}]
    with pytest.raises(dra.DraUnknown):
        dra.claim_requests({"devices": {"requests": [{"name": "g", "firstAvailable": [{}]}]}})
    with pytest.raises(dra.DraUnknown):
        dra.claim_requests({"devices": {"requests": [], "constraints": [{"distinctAttribute": "x"}]}})


def test_unmodelled_slice_features_are_unknown():
    s = node_slice()
    s["spec"]["devices"][0]["consumesCounters"] = [{"counterSet": "x", "counters": {}}]
    with pytest.raises(dra.DraUnknown):
        dra.prepare_pools([s], "n1")


def test_allocated_devices_from_claims():
    claims = [
        {
            "status": {
                "allocation": {
                    "devices": {
                        "results": [
                            {"request": "r", "driver": "gpu.nvidia.com", "pool": "n1", "device": "gpu-3"}
                        ]
                    }
                }
            }
        },
        {"status": {}},
    ]
    assert dra.allocated_devices(claims) == {("gpu.nvidia.com", "n1", "gpu-3")}


# --- join and score -------------------------------------------------------------------------------------


def test_join_by_uuid_then_pci():
    t = topo("dgx-a100-nvswitch-8gpu")
    pools = dra.prepare_pools([synth.slice_from_topology(t, "n1", order=[2, 0])], "n1")
    assert dra.join_topology(t, pools.devices) == [None, None]  # fixture GPUs carry neither uuid nor pci
    from dataclasses import replace

    gpus = [replace(g, uuid=synth.fake_uuid("n1", g.index)) for g in t.gpus]
    gpus[0] = replace(gpus[0], uuid=None, pci="00000000:10:00.0")  # nvidia-smi's 8-digit domain
    t2 = type(t)(gpus=gpus, links=t.links)
    assert dra.join_topology(t2, pools.devices) == [2, 0]
    assert dra.predicted_mask(t2, pools, [d.id for d in pools.devices]) == 0b101


def test_score_prediction_dgx_cross_socket_vs_one_socket():
    t = topo("dgx-a100-nvswitch-8gpu")
    full = 0xFF
    one = dra.score_prediction(t, full, mask_of([0, 1, 2, 3]), 4, names=[f"gpu-{i}" for i in range(8)])
    two = dra.score_prediction(t, full, mask_of([0, 1, 4, 5]), 4)
    assert one.fits and one.tier == Tier.NVLINK and one.span == 1
    assert one.reason.startswith("DRA first-fit would give gpu-0,gpu-1,gpu-2,gpu-3: nvlink, 1 socket")
    assert two.span == 2 and two.score < one.score
    assert not dra.score_prediction(t, 0x0F, 0, 4).fits
    bad = dra.score_prediction(t, full, mask_of([0, 1, 2, 3]), 4, scope="numa")
    assert bad.fits
    bad = dra.score_prediction(
        topo("rtx4090-8gpu-node-per-socket"), full, mask_of([0, 1, 4, 5]), 4, scope="numa"
    )
    assert not bad.fits and "required-scope numa" in bad.reason


def test_neutral():
    d = dra.neutral("DRA prediction unknown: x")
    assert d.fits and d.score == 5


# --- brute force ----------------------------------------------------------------------------------------


def _brute(order: list[int], roots, free: set[int], k: int, match: bool) -> list[str] | None:
    cand = [i for i in order if i in free]
    for combo in combinations(cand, k):  # combinations keep slice order: the allocator's search order
        if match and (any(roots[i] is None for i in combo) or len({roots[i] for i in combo}) != 1):
            continue
        return [f"gpu-{i}" for i in combo]
    return None


@pytest.mark.parametrize("seed", range(6))
def test_random_states_against_brute_force(seed):
    rng = random.Random(seed)
    for _ in range(300):
        n = rng.choice([4, 8])
        order = list(range(n))
        rng.shuffle(order)
        roots = [rng.choice(["A", "B", "C", None]) for _ in range(n)]
        taken = set(rng.sample(range(n), rng.randrange(n)))
        k = rng.randint(1, 4)
        match = rng.random() < 0.5
        p = run(
            [node_slice(n=n, order=order, roots=roots)],
            allocated=taken,
            requests=[req(k)],
            constraints=PCIE if match else (),
        )
        want = _brute(order, roots, set(range(n)) - taken, k, match)
        assert (names(p) if p.ok else None) == want, (order, roots, taken, k, match, p)


# --- bad input ------------------------------------------------------------------------------------------


def test_bad_input_is_unknown_or_none_never_a_crash():
    s = node_slice()
    s["spec"]["devices"][0]["attributes"]["weird"] = {"float": 1.5}
    with pytest.raises(dra.DraUnknown):
        dra.prepare_pools([s], "n1")
    s = node_slice()
    s["spec"]["devices"][0]["capacity"]["memory"] = {"value": "lots"}
    with pytest.raises(dra.DraUnknown):
        dra.prepare_pools([s], "n1")
    # A device the topology annotation does not list: no mask, the caller scores neutral.
    t = topo("dgx-a100-nvswitch-8gpu")
    pools = dra.prepare_pools([node_slice()], "n1")
    p = dra.predict(pools, set(), [req()], [], CLASSES)
    assert dra.predicted_mask(t, pools, p.devices) is None
    # Garbage CEL never raises out of predict.
    for expr in ("device.", "))", "device.attributes[1].x == 2", "'unterminated"):
        assert dra.predict(pools, set(), [req(1, expr)], [], CLASSES).status == "unknown"
