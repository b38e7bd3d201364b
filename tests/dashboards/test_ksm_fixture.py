"""The kube-state-metrics text the dashboard tests scrape is what it prints for the example HPA.

tests/fixtures/metrics/kube-state-metrics-hpa.txt stands in for kube-state-metrics (no cluster here). Its
`kube_horizontalpodautoscaler_spec_target_metric` series must be the ones kube-state-metrics derives from
deploy/examples/qwen/hpa.yaml (internal/store/horizontalpodautoscaler.go): one series per target of each
spec.metrics entry, labels namespace, horizontalpodautoscaler, metric_name, metric_target_type
(value|utilization|average), the Quantity as a float: MilliValue()/1000, MilliValue rounding up to whole
milli-units. So editing the example HPA without the fixture (or the reverse) fails here, and the dashboards'
threshold lines are tested against the targets users actually deploy.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
HPA = ROOT / "deploy" / "examples" / "qwen" / "hpa.yaml"
KSM = ROOT / "tests" / "fixtures" / "metrics" / "kube-state-metrics-hpa.txt"
TARGET_METRIC = "kube_horizontalpodautoscaler_spec_target_metric"

_SUFFIX = {"": 0, "n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_QUANTITY = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)")


def ksm_value(quantity: str | int | float) -> float:
    """float64(q.MilliValue()) / 1000 for a Kubernetes Quantity string (apimachinery's format)."""
    m = _QUANTITY.fullmatch(str(quantity).strip())
    assert m, f"not a Quantity: {quantity!r}"
    number, exponent, suffix = m.groups()
    value = Decimal(number)
    if exponent:
        value = value.scaleb(int(exponent[1:]))
    elif suffix in _BINARY:
        value *= 1024 ** _BINARY[suffix]
    else:
        value = value.scaleb(_SUFFIX[suffix or ""])
    return math.ceil(value * 1000) / 1000  # MilliValue rounds up to the next whole milli-unit


def expected_series(hpa: dict) -> list[tuple[dict[str, str], float]]:
    """What kube-state-metrics exports for `hpa`, in its order: spec.metrics order, then value, utilization,
    average within one metric."""
    out = []
    base = {"namespace": hpa["metadata"]["namespace"], "horizontalpodautoscaler": hpa["metadata"]["name"]}
    for spec in hpa["spec"]["metrics"]:
        source = spec[spec["type"][0].lower() + spec["type"][1:]]  # External -> external, ...
        name = source["metric"]["name"] if "metric" in source else source["name"]
        target = source["target"]
        for kind, field in (("value", "value"), ("utilization", "averageUtilization"),
                            ("average", "averageValue")):
            if field in target:
                value = float(target[field]) if kind == "utilization" else ksm_value(target[field])
                out.append((base | {"metric_name": name, "metric_target_type": kind}, value))
    return out


def test_quantity_conversion_follows_milli_value() -> None:
    assert ksm_value("750m") == 0.75
    assert ksm_value("4") == 4.0
    assert ksm_value(4) == 4.0
    assert ksm_value("1.5") == 1.5
    assert ksm_value("2k") == 2000.0
    assert ksm_value("1Ki") == 1024.0
    assert ksm_value("5e-1") == 0.5
    assert ksm_value("1u") == 0.001  # below one milli-unit: MilliValue rounds up


def test_fixture_carries_the_example_hpas_targets_as_kube_state_metrics_prints_them() -> None:
    hpa = yaml.safe_load(HPA.read_text())
    want = expected_series(hpa)
    # the KV-cache target is the fractional one (750m): it must be there, as 0.75
    assert ({"namespace": "llm", "horizontalpodautoscaler": "vllm-qwen", "metric_name": "vllm_kv_cache_usage",
             "metric_target_type": "value"}, 0.75) in want
    [family] = [f for f in text_string_to_metric_families(KSM.read_text()) if f.name == TARGET_METRIC]
    assert family.type == "gauge"
    assert [(s.labels, s.value) for s in family.samples] == want
    # label order as kube-state-metrics writes it: the HPA's keys first, then metric_name, metric_target_type
    lines = [line for line in KSM.read_text().splitlines() if line.startswith(TARGET_METRIC + "{")]
    layout = re.compile(r'\S+\{namespace="[^"]*",horizontalpodautoscaler="[^"]*",metric_name="[^"]*",'
                        r'metric_target_type="[^"]*"\} \S+$')
    assert lines and all(layout.match(line) for line in lines), lines


def test_fixture_replicas_are_within_the_example_hpas_bounds() -> None:
    hpa = yaml.safe_load(HPA.read_text())
    values = {f.name: f.samples[0].value for f in text_string_to_metric_families(KSM.read_text())
              if f.samples and len(f.samples) == 1}
    assert values["kube_horizontalpodautoscaler_spec_min_replicas"] == hpa["spec"]["minReplicas"]
    assert values["kube_horizontalpodautoscaler_spec_max_replicas"] == hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["minReplicas"] <= values["kube_horizontalpodautoscaler_status_current_replicas"] \
        <= hpa["spec"]["maxReplicas"]
