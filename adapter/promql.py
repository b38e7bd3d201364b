"""PromQL for a rule: the value and the age of its newest sample, in one query (pure string building).

The two parts come back as two series told apart by the `toposcale_part` label, so staleness costs no second
round trip. Generations (`series` with several names) use `or`, which keeps a pod's newer series and adds the
older name only for pods that lack it (set operators match label sets without the metric name).
Where the selected pods' scrape health can be read (a workload rule without `prometheus_query`: the selector
and namespace apply to the `up` series of the pods' targets, as to their samples), three more parts say which
pods are expected (one `target` series per pod with an `up` series, kept to the pods kube-state-metrics lists
when it lists any in the namespace) and which are missing: a target down (`up == 0`) with no series of the
rule left (Prometheus marked them stale when the scrape failed), or a target up that exposes none of them;
a fourth names the pods exposing one of the rule's series below 0 (a broken exporter, issue 28).
"""

from __future__ import annotations

from .model import value_series
from .rules import Rule
from .selectors import Selector, _promql_string

PART_LABEL = "toposcale_part"


def matchers(rule: Rule, namespace: str, selector: Selector) -> str:
    return ",".join([f"{rule.namespace_label}={_promql_string(namespace)}", *selector.promql_matchers()])


def _owned(
    rule: Rule, names: list[str], namespace: str, selector: Selector, *, timestamps: bool
) -> list[str]:
    """GPU series carry the owning pod in labels; keep those whose owner is a selected workload pod."""
    g = rule.gpu_owner
    assert g is not None
    owner = f"{g.owner_series}{{{matchers(rule, namespace, selector)}}}"
    on = f"on({rule.namespace_label}, {rule.pod_label})"
    parts = []
    for n in names:
        gpu = f"{n}{{{g.namespace_label}={_promql_string(namespace)}}}"
        if timestamps:
            gpu = f"timestamp({gpu})"
        for ours, theirs in ((rule.namespace_label, g.namespace_label), (rule.pod_label, g.pod_label)):
            if ours != theirs:
                gpu = f'label_replace({gpu}, "{ours}", "$1", "{theirs}", "(.*)")'
        parts.append(f"({gpu} and {on} {owner})")
    return parts


def _series(rule: Rule, names: list[str], namespace: str, selector: Selector) -> str:
    if rule.gpu_owner is not None:
        parts = _owned(rule, names, namespace, selector, timestamps=False)
    else:
        m = matchers(rule, namespace, selector)
        parts = [f"{n}{{{m}}}" for n in names]
    return parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"


def value_query(rule: Rule, namespace: str, selector: Selector) -> str:
    if rule.prometheus_query is not None:
        return rule.prometheus_query.replace("{matchers}", matchers(rule, namespace, selector)).replace(
            "{window}", f"{rule.window_seconds or 300}s"
        )
    if rule.aggregation == "histogram_quantile":
        m = matchers(rule, namespace, selector)
        return (
            f"histogram_quantile({rule.quantile}, sum by (le) "
            f"(rate({rule.series[0]}_bucket{{{m}}}[{rule.window_seconds}s])))"
        )
    if rule.aggregation == "ratio":
        num = _series(rule, rule.series, namespace, selector)
        den = " + ".join(f"sum({_series(rule, [d], namespace, selector)})" for d in rule.denominator)
        return f"sum({num}) / ({den})"
    inner = _series(rule, rule.series, namespace, selector)
    if rule.per_pod == "none" or (
        rule.per_pod == rule.aggregation and rule.aggregation in ("sum", "max", "min")
    ):
        return f"{rule.aggregation}({inner})"
    return f"{rule.aggregation}({rule.per_pod} by ({rule.namespace_label}, {rule.pod_label}) ({inner}))"


def age_query(rule: Rule, namespace: str, selector: Selector) -> str:
    # timestamp() gives a sample's own time only when applied straight to a selector, so it goes innermost.
    names = [rule.series[0] + "_bucket"] if rule.aggregation == "histogram_quantile" else rule.series
    m = matchers(rule, namespace, selector)
    if rule.gpu_owner is not None:
        parts = _owned(rule, names, namespace, selector, timestamps=True)
    else:
        parts = [f"timestamp({n}{{{m}}})" for n in names]
    inner = " or ".join(parts)
    # The newest sample's age: the smallest (now - last sample time) over the series.
    return f"min(time() - ({inner}))"


def health_applies(rule: Rule) -> bool:
    """The pods' `up` series tell which selected pods could not be scraped: workload rules with generated
    queries only. A GPU rule's series come from exporters whose `up` names the exporter pod, not the pods
    holding the GPUs; a `prometheus_query` may read anything."""
    return rule.gpu_owner is None and rule.prometheus_query is None


def health_queries(rule: Rule, namespace: str, selector: Selector) -> tuple[str, str, str]:
    """(targets, missing, lacking): one series per selected pod with an `up` series (its `up`), one per pod
    whose scrape fails (`up == 0`) and that has none of the rule's series, one per pod scraped (`up == 1`)
    that exposes none of them.

    A pod the ReplicaSet deleted keeps its `up == 0` until Prometheus writes staleness markers, two scrape
    intervals after the target left service discovery: counted, a 6 -> 2 scale-in read as "2 of 6 answered".
    So where kube-state-metrics lists pods of the namespace (`kube_pod_info`, labels as the rule's; a deleted
    pod is stale at its next scrape), only the pods it lists and does not show being deleted are targets;
    where it lists none, every `up` is. (The Kubernetes API, when the adapter has it, narrows them further.)
    """
    m = matchers(rule, namespace, selector)
    by = f"({rule.namespace_label}, {rule.pod_label})"
    own = " or ".join(f"{n}{{{m}}}" for n in value_series(rule))
    ns = f"{rule.namespace_label}={_promql_string(namespace)}"
    up = f"max by {by} (up{{{m}}})"
    exists = f"(kube_pod_info{{{ns}}} unless on{by} kube_pod_deletion_timestamp{{{ns}}})"
    targets = f"(({up} and on{by} {exists}) or ({up} unless on() kube_pod_info{{{ns}}}))"
    missing = f"(max by {by} (up{{{m}}} == 0) unless on{by} ({own}))"
    lacking = f"(max by {by} (up{{{m}}} == 1) unless on{by} ({own}))"
    return targets, missing, lacking


def negative_query(rule: Rule, namespace: str, selector: Selector) -> str:
    """One series per selected pod exposing one of the rule's series below 0 (its lowest): a queue length,
    running count, usage or cumulative bucket count never is, so such a pod is broken (as in scrape mode)."""
    m = matchers(rule, namespace, selector)
    own = " or ".join(f"{n}{{{m}}}" for n in value_series(rule))
    return f"(min by ({rule.namespace_label}, {rule.pod_label}) (({own}) < 0))"


def combined_query(rule: Rule, namespace: str, selector: Selector) -> str:
    value = value_query(rule, namespace, selector)
    age = age_query(rule, namespace, selector)
    parts = [(value, "value"), (age, "age")]
    if health_applies(rule):
        targets, missing, lacking = health_queries(rule, namespace, selector)
        parts += [(targets, "target"), (missing, "missing"), (lacking, "lacking")]
        parts.append((negative_query(rule, namespace, selector), "negative"))
    return " or ".join(f'label_replace({q}, "{PART_LABEL}", "{name}", "", "")' for q, name in parts)


def per_pod_query(rule: Rule, namespace: str, selector: Selector, *, pod: str | None = None) -> str:
    """custom.metrics.k8s.io: one series per selected pod (its own series combined with `per_pod`), plus how
    many selected pods have an `up` series and how many of those are up, to tell "all failed" from "none"."""
    m = matchers(rule, namespace, selector)
    if pod is not None:
        m += f",{rule.pod_label}={_promql_string(pod)}"
    by = f"({rule.namespace_label}, {rule.pod_label})"
    how = rule.aggregation if rule.per_pod == "none" else rule.per_pod
    names = rule.series
    parts = [f"{n}{{{m}}}" for n in names]
    inner = parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"
    value = f"{how} by {by} ({inner})"
    expected = f"count(count by {by} (up{{{m}}}))"
    answered = f"count(count by {by} (up{{{m}}} == 1))"
    parts = [(value, "value"), (expected, "expected"), (answered, "answered")]
    return " or ".join(f'label_replace({q}, "{PART_LABEL}", "{name}", "", "")' for q, name in parts)
