"""Metric rules: which external metrics exist and how each is computed (pydantic-validated YAML).

One rule describes a metric once; both sources (Prometheus and direct scrape) derive their work from it, so
the
two modes answer the same question. A bad file fails at start with the file, the field and why.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from toposcale.yamltext import load_yaml

from .selectors import SelectorError, parse_selector

# Always fullmatch: `re.match` with "^...$" would take a trailing newline ("$" matches before one).
_METRIC_NAME = re.compile(r"[a-z0-9]([-a-z0-9_.]*[a-z0-9])?")
_SERIES_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
DEFAULT_RULES = "default.yaml"


class RulesError(ValueError):
    """The rules file cannot be used; the message names the file, the field and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScrapeSpec(_Strict):
    """How direct scraping reaches a pod's metrics when pods come from Kubernetes (not a targets file)."""

    port: int = Field(8000, ge=1, le=65535)
    path: str = "/metrics"
    scheme: Literal["http", "https"] = "http"


class GpuOwner(_Strict):
    """The series are per GPU, published by an exporter (DCGM) with the owning pod in labels.

    Scrape mode: the exporters are the targets/pods matching `exporters`; a GPU counts when its
    `namespace_label`/`pod_label` name a selected pod. Prometheus mode: the GPU series are joined
    `and on(<rule namespace_label>, <rule pod_label>)` with `owner_series`, a series every selected workload
    pod exposes. When Prometheus scraped the exporter without `honor_labels`, the owner is in
    `exported_namespace`/`exported_pod`: set those here and the join renames them with label_replace.
    """

    exporters: str = "app.kubernetes.io/name=dcgm-exporter"
    owner_series: str = "vllm:num_requests_running"
    namespace_label: str = "namespace"
    pod_label: str = "pod"
    port: int = Field(9400, ge=1, le=65535)
    path: str = "/metrics"

    @field_validator("namespace_label", "pod_label")
    @classmethod
    def _label(cls, v: str) -> str:
        if not _LABEL_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a Prometheus label name")
        return v

    @field_validator("owner_series")
    @classmethod
    def _owner(cls, v: str) -> str:
        if not _SERIES_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a Prometheus metric name")
        return v

    @field_validator("exporters")
    @classmethod
    def _selector(cls, v: str) -> str:
        try:
            parse_selector(v)
        except SelectorError as exc:
            raise ValueError(str(exc)) from exc
        return v


class FrontDoor(_Strict):
    """Where demand is read when no vLLM pod runs (scale from zero): the gateway's or router's pending
    requests for this workload. Prometheus mode: `prometheus_query` ({namespace} substituted), one series.
    Scrape mode: `url` scraped, the samples of `series` whose labels include `labels` summed."""

    prometheus_query: str | None = None
    url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/\S*)?$")
    series: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one(self) -> FrontDoor:
        if (self.url is None) != (self.series is None):
            raise ValueError("a scrape-mode front door needs both 'url' and 'series'")
        if self.prometheus_query is None and self.url is None:
            raise ValueError("needs 'prometheus_query' (Prometheus mode) or 'url' and 'series' (scrape mode)")
        if self.series is not None and not _SERIES_NAME.fullmatch(self.series):
            raise ValueError(f"{self.series!r} is not a Prometheus metric name")
        return self


class DesiredSpec(_Strict):
    """A `vllm_desired_replicas` rule's settings (adapter/desired.py computes it; README section
    "vllm_desired_replicas")."""

    algorithm: dict[str, Any] = Field(
        default_factory=dict,
        description="fields of toposcale.autoscale.desired.DesiredConfig (SLO targets, cold start, profile "
        "prior, windows), checked at load",
    )
    front_door: FrontDoor | None = None
    max_selectors: int = Field(
        1000, ge=1, le=100_000, description="selectors whose state is kept; the least recently asked goes"
    )
    idle_seconds: float = Field(
        900, gt=0, le=86_400, description="a selector not asked for this long forgets its state"
    )
    provisioning_allowance: int = Field(
        1, ge=0, le=1000,
        description="with --extender-url: replicas allowed beyond ready + starting + placeable (left Pending "
        "for a node autoscaler; adapter/placement.py)",
    )

    @field_validator("algorithm")
    @classmethod
    def _algorithm(cls, v: dict[str, Any]) -> dict[str, Any]:
        from .desired_config import check_algorithm  # the algorithm's own checks, named by field

        check_algorithm(v)
        return v


class Rule(_Strict):
    name: str = Field(description="external metric name, as the HPA asks for it")
    help: str = ""
    series: list[str] = Field(
        default_factory=list,
        description="source series; later names are older generations, used for a pod only when it lacks "
        "the earlier ones (vllm:kv_cache_usage_perc, then vllm:gpu_cache_usage_perc); not for "
        "vllm_desired_replicas, which reads the vLLM series it needs (adapter/desired.py)",
    )
    aggregation: Literal["sum", "avg", "max", "min", "ratio", "histogram_quantile", "vllm_desired_replicas"]
    desired: DesiredSpec | None = Field(
        None, description="vllm_desired_replicas: its settings (defaults when absent)"
    )
    per_pod: Literal["sum", "avg", "max", "none"] = Field(
        "sum", description="how one pod's several series (vLLM engines) combine before aggregating pods"
    )
    denominator: list[str] = Field(default_factory=list, description="ratio: summed series under the line")
    quantile: float | None = Field(None, gt=0, lt=1)
    window_seconds: int | None = Field(None, ge=1, le=3600)
    namespace_label: str = "namespace"
    pod_label: str = "pod"
    max_staleness_seconds: float = Field(60, gt=0, le=3600)
    gpu_owner: GpuOwner | None = None
    scrape: ScrapeSpec = ScrapeSpec()
    prometheus_query: str | None = Field(
        None, description="PromQL replacing the generated one; {matchers} and {window} are substituted"
    )
    on_missing: Literal["extrapolate", "error"] = Field(
        "extrapolate",
        description="an expected target (pod, GPU exporter) whose metrics could not be read: 'extrapolate' "
        "serves the aggregate over the targets that answered (a sum scaled to the expected targets; avg, "
        "max, min, ratio and quantiles as they are), 'error' answers 503 naming it",
    )
    min_answered_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="below this share of expected targets answering the answer is a 503 naming the failed "
        "ones; unset: the adapter's --min-answered-share (default 0.5)",
    )
    per_pod_metric: bool | None = Field(
        None,
        description="also offered in custom.metrics.k8s.io/v1beta2 per pod (the pod's own series combined "
        "with `per_pod`) and for Deployments (the rule's aggregation over its pods); unset: yes for workload "
        "rules (no gpu_owner, no prometheus_query) aggregating sum/avg/max/min",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _METRIC_NAME.fullmatch(v) or len(v) > 253:
            raise ValueError("must be lowercase [a-z0-9_.-], start and end alphanumeric (a URL path segment)")
        return v

    @field_validator("series", "denominator")
    @classmethod
    def _series(cls, v: list[str]) -> list[str]:
        for s in v:
            if not _SERIES_NAME.fullmatch(s):
                raise ValueError(f"{s!r} is not a Prometheus metric name")
        return v

    @field_validator("namespace_label", "pod_label")
    @classmethod
    def _label(cls, v: str) -> str:
        if not _LABEL_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a Prometheus label name")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if self.aggregation == "vllm_desired_replicas":
            if self.series or self.denominator or self.quantile is not None or self.gpu_owner is not None:
                raise ValueError(
                    "aggregation 'vllm_desired_replicas' reads its own vLLM series: no series, denominator, "
                    "quantile or gpu_owner"
                )
            if self.prometheus_query is not None or self.per_pod_metric:
                raise ValueError(
                    "aggregation 'vllm_desired_replicas' takes no prometheus_query or "
                    "per_pod_metric (its front door is desired.front_door)"
                )
            return self
        if self.desired is not None:
            raise ValueError("'desired' only applies to aggregation 'vllm_desired_replicas'")
        if not self.series:
            raise ValueError("'series' needs at least one metric name")
        if self.aggregation == "ratio" and not self.denominator:
            raise ValueError("aggregation 'ratio' needs 'denominator'")
        if self.aggregation != "ratio" and self.denominator:
            raise ValueError("'denominator' only applies to aggregation 'ratio'")
        if self.aggregation == "histogram_quantile":
            if self.quantile is None or self.window_seconds is None:
                raise ValueError("aggregation 'histogram_quantile' needs 'quantile' and 'window_seconds'")
            if len(self.series) != 1:
                raise ValueError("aggregation 'histogram_quantile' takes exactly one histogram in 'series'")
        elif self.quantile is not None:
            raise ValueError("'quantile' only applies to aggregation 'histogram_quantile'")
        if self.prometheus_query is not None and "{matchers}" not in self.prometheus_query:
            raise ValueError("'prometheus_query' must contain {matchers} so selectors and namespaces apply")
        if self.per_pod_metric and not _per_pod_capable(self):
            raise ValueError(
                "'per_pod_metric' needs a workload rule (no gpu_owner, no prometheus_query) aggregating "
                "sum, avg, max or min: a pod's own value is not defined otherwise"
            )
        return self

    @property
    def offered_per_pod(self) -> bool:
        """Served in custom.metrics.k8s.io (per pod, and for Deployments)."""
        return _per_pod_capable(self) if self.per_pod_metric is None else self.per_pod_metric


def _per_pod_capable(rule: Rule) -> bool:
    return (
        rule.gpu_owner is None
        and rule.prometheus_query is None
        and rule.aggregation in ("sum", "avg", "max", "min")
    )


class RuleSet(_Strict):
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> RuleSet:
        seen: set[str] = set()
        for r in self.rules:
            if r.name in seen:
                raise ValueError(f"metric {r.name!r} is defined twice")
            seen.add(r.name)
        return self

    def by_name(self) -> dict[str, Rule]:
        return {r.name: r for r in self.rules}


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid metric rules"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        lines.append(f"  {loc or '<top>'}: {err['msg']}")
    return "\n".join(lines)


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise RulesError(f"{source}: not valid YAML: {exc}") from exc
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        raise RulesError(_format_errors(source, exc)) from exc


def load_rules(path: str | Path | None = None) -> RuleSet:
    """Load `path`, or the built-in default rules (package data `rules/default.yaml`) when None."""
    if path is None:
        ref = resources.files("toposcale.adapter").joinpath("rules", DEFAULT_RULES)
        return parse_rules(ref.read_text(encoding="utf-8"), f"(built-in) rules/{DEFAULT_RULES}")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{p}: cannot read rules file: {exc.strerror or exc}") from exc
    return parse_rules(text, str(p))
