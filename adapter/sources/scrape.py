"""Direct scrape source: fetch the selected pods' /metrics concurrently and aggregate here.

Each target's scrape is cached for the TTL and coalesced, so several metrics (and many HPAs) asking about one
pod cost one HTTP request. Requests are bounded: per-target timeout, body size limit, global concurrency.
The text is parsed with prometheus-client's parser; only the series the rules use are kept (vLLM's counters
bring `_created` companions, which are timestamps, and are never confused with data because names match
exactly). A target printing a series twice is malformed: its scrape fails (kind `duplicate-series`), never
summed twice.
An expected target (a selected Running and Ready pod, every listed target of a targets file, the GPU
exporters on the selected pods' nodes) that cannot be read never pulls the value down: per rule, `on_missing:
extrapolate` serves the aggregate over the targets that answered (sums scaled to the expected targets) and
`on_missing: error` a 503; below `min_answered_share` of them answering (default 50%) it is a 503 naming the
failed targets (model.check_coverage).
Histogram quantiles need increases: each scrape of a histogram is remembered for the rule's window and the
quantile is taken over the increase since the oldest remembered scrape inside the window.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import aiohttp

from ..cache import TTLCache
from ..errors import NotFound, SourceUnavailable
from ..model import (
    DEFAULT_MIN_ANSWERED_SHARE,
    Coverage,
    MetricValue,
    PodSamples,
    PodValue,
    Sample,
    aggregate,
    bucket_increase,
    check_coverage,
    exposes,
    extrapolate,
    lacking,
    negative,
    parse_le,
    pod_value,
    series_absent,
)
from ..rules import Rule, RuleSet
from ..selectors import Selector
from .base import OnceLog
from .pods import PodFinder, Target

logger = logging.getLogger("toposcale.adapter.scrape")
_ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"


class ScrapeError(Exception):
    kind = "target"  # toposcale_adapter_source_errors_total{kind}


class DuplicateSeries(ScrapeError):
    kind = "duplicate-series"


class SampleLimit(ScrapeError):
    kind = "sample-limit"


# Default --scrape-sample-limit: a vLLM pod exposes a few hundred of the series the rules read, a DCGM
# exporter a few per GPU; beyond this a target is failed (Prometheus' scrape_config sample_limit does so).
DEFAULT_SAMPLE_LIMIT = 10_000
# Histogram snapshots remembered per target: one per window/SNAPSHOTS, for up to 1.5 windows, so at most
# 1.5 x SNAPSHOTS + 1 snapshots of at most --scrape-sample-limit bucket values each.
SNAPSHOTS = 16


@dataclass(slots=True)
class Scrape:
    at: float  # wall clock, for the item's timestamp
    mono: float
    samples: list[Sample]


@dataclass(slots=True)
class _History:
    snapshots: deque[tuple[float, dict[tuple[str, tuple[tuple[str, str], ...]], dict[float, float]]]] = field(
        default_factory=deque
    )


def wanted_names(rules: RuleSet) -> set[str]:
    names: set[str] = set()
    for r in rules.rules:
        if r.aggregation == "vllm_desired_replicas":
            from ..desired_inputs import wanted_series

            names.update(wanted_series(r))
        elif r.aggregation == "histogram_quantile":
            names.add(r.series[0] + "_bucket")
        else:
            names.update(r.series)
            names.update(r.denominator)
    return names


# Prometheus' default --query.lookback-delta: an instant query sees a series' latest sample at most this old.
LOOKBACK_S = 300.0
_COUNTER_TYPE = re.compile(r"^[ \t]*#[ \t]+TYPE[ \t]+(\S+)[ \t]+counter[ \t]*$", re.MULTILINE)


def parse_exposition(
    text: str, wanted: set[str], now: float | None = None, limit: int | None = None
) -> list[Sample]:
    """Samples named in `wanted` from Prometheus text exposition, as Prometheus would store and query them at
    `now` (epoch seconds, default the wall clock). Garbage raises ScrapeError, and so does a series printed
    twice: the exposition is malformed (Prometheus drops the duplicates and counts them), and summing both
    copies would double the value (3 twice is not 6).

    As Prometheus' text parser (model/textparse/promparse.go) and query engine see it:
    - a label with an empty value is no label (`x{a=""}` is the series `x`): dropped, so the duplicate check
      sees `x 7` and `x{a=""} 7` as one series printed twice;
    - a counter keeps the name it is exposed under: prometheus-client's parser renames a family typed
      `counter` without the `_total` suffix (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION) to `<name>_total`, which
      Prometheus never does, so a rule naming it as Prometheus stores it would find nothing;
    - a sample with an explicit timestamp is seen only when that time is not after `now` and within the
      lookback (`x 9 1000`, a 1970 sample, is no current value).
    More than `limit` wanted samples raise SampleLimit (the target fails, as with Prometheus' sample_limit):
    what one target may make the adapter hold."""
    from prometheus_client.parser import text_string_to_metric_families

    now = time.time() if now is None else now
    renamed = {m.group(1) for m in _COUNTER_TYPE.finditer(text) if not m.group(1).endswith("_total")}
    out: list[Sample] = []
    seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()
    try:
        for family in text_string_to_metric_families(text):
            unrename = family.type == "counter" and family.name in renamed
            for s in family.samples:
                name = s.name
                if unrename and name.endswith("_total"):
                    name = name[: -len("_total")]  # the parser's suffix, not the exposition's
                labels = s.labels
                if "" in labels.values():
                    labels = {k: v for k, v in labels.items() if v != ""}
                key = (name, frozenset(labels.items()))
                if key in seen:
                    raise DuplicateSeries(f"duplicate series {_series_text(name, labels)}")
                seen.add(key)
                if name not in wanted:
                    continue
                ts = s.timestamp
                if ts is not None and not (now - LOOKBACK_S < float(ts) <= now):
                    continue  # a stale or future sample: an instant query at `now` does not see it
                out.append(Sample(name, labels, float(s.value)))
                if limit is not None and len(out) > limit:
                    raise SampleLimit(
                        f"more than {limit} samples of the rules' series (--scrape-sample-limit)"
                    )
    except (DuplicateSeries, SampleLimit):
        raise
    except Exception as exc:  # the parser raises ValueError, IndexError, ... on garbage
        raise ScrapeError(f"not Prometheus text format: {type(exc).__name__}: {str(exc)[:200]}") from exc
    return out


def _series_text(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    text = f"{name}{{{inner}}}" if inner else name
    return text if len(text) <= 200 else text[:200] + "..."


def _group_key(s: Sample) -> tuple[str, tuple[tuple[str, str], ...]]:
    return s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))


class ScrapeSource:
    kind = "scrape"

    def __init__(
        self,
        finder: PodFinder,
        rules: RuleSet,
        *,
        ttl: float = 2.0,
        timeout: float = 3.0,
        max_body_bytes: int = 8 * 1024 * 1024,
        concurrency: int = 64,
        on_error: Callable[[str, str], None] | None = None,
        on_coverage: Callable[[str, str, int, int], None] | None = None,
        min_answered_share: float = DEFAULT_MIN_ANSWERED_SHARE,
        clock: Callable[[], float] = time.monotonic,
        sample_limit: int = DEFAULT_SAMPLE_LIMIT,
    ) -> None:
        """`on_coverage(metric, namespace, answered, expected)` hears each computation's target counts;
        `min_answered_share` applies to rules that do not set their own; `sample_limit` bounds what one
        target's scrape may hold (--scrape-sample-limit)."""
        self.sample_limit = sample_limit
        self.finder = finder
        self.timeout = timeout
        self.max_body_bytes = max_body_bytes
        self._wanted = wanted_names(rules)
        self._hist_windows = {
            r.series[0] + "_bucket": float(r.window_seconds or 0)
            for r in rules.rules
            if r.aggregation == "histogram_quantile"
        }
        self._scrapes: TTLCache[Scrape] = TTLCache(ttl)
        self._limit = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._history: dict[str, _History] = {}
        self._remembered = 0
        self._forgot_at = 0.0
        self._absent = OnceLog(logger)
        self.on_error = on_error
        self.on_coverage = on_coverage
        self.min_answered_share = min_answered_share
        self._clock = clock

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60),
                headers={"Accept": _ACCEPT, "User-Agent": "toposcale-adapter"},
                auto_decompress=True,
            )
        return self._session

    async def _fetch_text(self, url: str) -> str:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with self._limit:
            try:
                async with self._client().get(url, timeout=timeout, allow_redirects=False) as resp:
                    if resp.status != 200:
                        raise ScrapeError(f"HTTP {resp.status}")
                    if resp.content_length is not None and resp.content_length > self.max_body_bytes:
                        raise ScrapeError(f"body of {resp.content_length} bytes over {self.max_body_bytes}")
                    body = await resp.content.read(self.max_body_bytes + 1)
                    if len(body) > self.max_body_bytes:
                        raise ScrapeError(f"body over {self.max_body_bytes} bytes")
                    # read(n) may stop early; drain the rest within the same limit.
                    while not resp.content.at_eof():
                        chunk = await resp.content.read(self.max_body_bytes + 1 - len(body))
                        if not chunk:
                            break
                        body += chunk
                        if len(body) > self.max_body_bytes:
                            raise ScrapeError(f"body over {self.max_body_bytes} bytes")
            except TimeoutError as exc:
                raise ScrapeError(f"timed out after {self.timeout:g}s") from exc
            except aiohttp.ClientError as exc:
                raise ScrapeError(f"{type(exc).__name__}: {exc}") from exc
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ScrapeError("body is not UTF-8 text") from exc

    async def scrape(self, url: str) -> Scrape:
        async def load() -> Scrape:
            text = await self._fetch_text(url)
            now, limit = time.time(), self.sample_limit
            if len(text) > 256 * 1024:
                samples = await asyncio.to_thread(parse_exposition, text, self._wanted, now, limit)
            else:
                samples = parse_exposition(text, self._wanted, now, limit)
            del text  # up to --scrape-max-body-bytes: not kept while the samples are
            scrape = Scrape(time.time(), self._clock(), samples)
            self._remember(url, scrape)
            return scrape

        value, _ = await self._scrapes.get(url, load)
        return value

    def _remember(self, url: str, scrape: Scrape) -> None:
        if not self._hist_windows:
            return
        snap: dict[tuple[str, tuple[tuple[str, str], ...]], dict[float, float]] = {}
        for s in scrape.samples:
            if s.name in self._hist_windows:
                try:
                    le = parse_le(s.labels.get("le"))
                except SourceUnavailable:
                    continue
                snap.setdefault(_group_key(s), {})[le] = s.value
        if not snap:
            return
        hist = self._history.setdefault(url, _History())
        window = max(self._hist_windows.values())
        # at most one snapshot per window/SNAPSHOTS per target (memory: see SNAPSHOTS)
        if hist.snapshots and scrape.mono - hist.snapshots[-1][0] < window / SNAPSHOTS:
            return
        hist.snapshots.append((scrape.mono, snap))
        while hist.snapshots and scrape.mono - hist.snapshots[0][0] > window * 1.5:
            hist.snapshots.popleft()
        self._remembered += 1
        # forget targets that went away, at least once per window (their memory comes back), not per scrape
        if self._remembered % 256 == 0 or scrape.mono - self._forgot_at > window:
            self._forgot_at = scrape.mono
            for gone in [u for u, h in self._history.items()
                         if not h.snapshots or scrape.mono - h.snapshots[-1][0] > window * 1.5]:
                del self._history[gone]

    def _increase(self, url: str, rule: Rule, scrape: Scrape) -> tuple[list[Sample], float] | None:
        """Bucket samples holding the increase over the window, and the span they cover; None: no history."""
        name = rule.series[0] + "_bucket"
        window = float(rule.window_seconds or 0)
        hist = self._history.get(url)
        if hist is None:
            return None
        base = next(
            (snap for t, snap in hist.snapshots if scrape.mono - t <= window and scrape.mono - t > 0.001),
            None,
        )
        base_t = next((t for t, s in hist.snapshots if s is base), None)
        if base is None or base_t is None:
            return None
        now: dict[tuple[str, tuple[tuple[str, str], ...]], dict[float, float]] = {}
        for s in scrape.samples:
            if s.name == name:
                now.setdefault(_group_key(s), {})[parse_le(s.labels.get("le"))] = s.value
        out: list[Sample] = []
        for key, buckets in now.items():
            inc = bucket_increase(buckets, base.get(key, {}))
            for le, v in inc.items():
                out.append(Sample(name, {**dict(key[1]), "le": _format_le(le)}, v))
        return out, scrape.mono - base_t

    def _error(self, kind: str) -> None:
        if self.on_error is not None:
            self.on_error("scrape", kind)

    async def _scrape_all(self, targets: list[Target]) -> tuple[dict[str, Scrape], list[str]]:
        results = await asyncio.gather(*(self.scrape(t.url) for t in targets), return_exceptions=True)
        ok: dict[str, Scrape] = {}
        errors: list[str] = []
        for t, r in zip(targets, results, strict=True):
            if isinstance(r, Scrape):
                ok[t.url] = r
            elif isinstance(r, ScrapeError):
                self._error(r.kind)
                errors.append(f"{t.namespace}/{t.pod} ({t.url}): {r}")
            else:
                self._error("target")
                errors.append(f"{t.namespace}/{t.pod} ({t.url}): {type(r).__name__}: {r}")
        for e in errors:
            logger.warning("scrape failed", extra={"target": e})
        return ok, errors

    async def fetch(self, rule: Rule, namespace: str, selector: Selector) -> list[MetricValue]:
        if not await self.finder.namespace_exists(namespace):
            raise NotFound(f'namespace "{namespace}" not found', {"name": namespace, "kind": "namespaces"})
        pods = await self.finder.workload(rule, namespace, selector)
        if not pods:
            return []
        if rule.gpu_owner is not None:
            sources = await self.finder.exporters(rule)
            if not sources:
                raise SourceUnavailable(
                    f"{rule.name}: no GPU exporter targets match {rule.gpu_owner.exporters!r}"
                )
            sources = _on_nodes_of(sources, pods, rule)
        else:
            sources = pods
        scrapes, errors = await self._scrape_all(sources)
        # A target that answered without any of the rule's series is missing too (an older vLLM under a rule
        # naming only the newer series must not drop out of an average silently); none having them is a 503.
        without = [t for t in sources if t.url in scrapes and not exposes(rule, scrapes[t.url].samples)]
        if scrapes and len(without) == len(scrapes):
            raise self._series_absent(rule, namespace, len(scrapes))
        for t in without:
            del scrapes[t.url]
        # a count or usage below 0: a broken target, failed like one that did not answer
        below: list[str] = []
        for t in sources:
            bad = negative(rule, scrapes[t.url].samples) if t.url in scrapes else None
            if bad is not None:
                del scrapes[t.url]
                self._error("negative-value")
                series = _series_text(bad.name, dict(bad.labels))
                below.append(f"{t.namespace}/{t.pod} ({t.url}): {series} is {bad.value:g}, below 0")
        failed = (*errors, *(lacking(rule, f"{t.namespace}/{t.pod} ({t.url})") for t in without), *below)
        coverage = Coverage(len(sources), failed)
        if self.on_coverage is not None:
            self.on_coverage(rule.name, namespace, coverage.answered, coverage.expected)
        check_coverage(rule, coverage, self.min_answered_share)
        per_pod, span = self._assign(rule, pods, sources, scrapes)
        value = aggregate(rule, per_pod)
        if value is None:
            return []
        if value != value:  # NaN
            raise SourceUnavailable(f"{rule.name}: value is NaN")
        if coverage.failed:
            value = extrapolate(rule, value, coverage)
            logger.warning("value extrapolated over targets that failed", extra={
                "metric": rule.name, "namespace": namespace, "answered": coverage.answered,
                "expected": coverage.expected})
        at = min(s.at for s in scrapes.values())
        window = max(1, round(span)) if span is not None else None
        return [MetricValue(value=value, timestamp=at, window_seconds=window)]

    async def fetch_pods(
        self, rule: Rule, namespace: str, selector: Selector, *, pod: str | None = None
    ) -> list[PodValue]:
        """Each selected pod's own value from its own scrape (the same cached scrape the aggregate uses).
        A pod that could not be read, or that lacks the series, is absent (never 0: the HPA applies its
        missing-pod rules); every selected pod failing is a 503 naming them."""
        if not await self.finder.namespace_exists(namespace):
            raise NotFound(f'namespace "{namespace}" not found', {"name": namespace, "kind": "namespaces"})
        pods = await self.finder.workload(rule, namespace, selector)
        if pod is not None:  # one pod by name: scrape only it
            pods = [t for t in pods if t.pod == pod]
        if not pods:
            return []
        scrapes, errors = await self._scrape_all(pods)
        if self.on_coverage is not None:
            self.on_coverage(rule.name, namespace, len(pods) - len(errors), len(pods))
        if not scrapes:
            raise SourceUnavailable(
                f"{rule.name}: all {len(pods)} selected pods failed: {'; '.join(errors[:5])}"
            )
        if not any(exposes(rule, s.samples) for s in scrapes.values()):
            raise self._series_absent(rule, namespace, len(scrapes))
        out: list[PodValue] = []
        for t in pods:
            scrape = scrapes.get(t.url)
            if scrape is None:
                continue
            value = pod_value(rule, scrape.samples)
            if value is None or value != value:  # no such series, or NaN: no value for this pod
                continue
            out.append(PodValue(t.namespace, t.pod, value, scrape.at))
        return out

    def _series_absent(self, rule: Rule, namespace: str, answered: int) -> SourceUnavailable:
        exc = series_absent(rule, answered)
        self._absent.warn((rule.name, namespace), "no target exposes the rule's series",
                          metric=rule.name, namespace=namespace, error=str(exc))
        return exc

    async def deployment_selector(self, namespace: str, name: str) -> str | None:
        """The label selector of Deployment `name` (None: no such Deployment); 404 without Kubernetes."""
        return await self.finder.deployment_selector(namespace, name)

    def _assign(
        self, rule: Rule, pods: list[Target], sources: list[Target], scrapes: dict[str, Scrape]
    ) -> tuple[list[PodSamples], float | None]:
        by_pod = {(p.namespace, p.pod): PodSamples(p.namespace, p.pod) for p in pods}
        histogram = rule.aggregation == "histogram_quantile"
        spans: list[float] = []
        missing_history = 0
        for t in sources:
            scrape = scrapes.get(t.url)
            if scrape is None:
                continue
            samples: Iterable[Sample] = scrape.samples
            if histogram:
                inc = self._increase(t.url, rule, scrape)
                if inc is None:
                    missing_history += 1
                    continue
                samples, span = inc
                spans.append(span)
            if rule.gpu_owner is not None:
                for s in samples:
                    g = rule.gpu_owner
                    owner = (s.labels.get(g.namespace_label, ""), s.labels.get(g.pod_label, ""))
                    if owner in by_pod:
                        by_pod[owner].samples.append(s)
            else:
                by_pod[(t.namespace, t.pod)].samples.extend(samples)
        if histogram and not spans and missing_history:
            raise SourceUnavailable(
                f"{rule.name}: a quantile over {rule.window_seconds}s needs two scrapes of a target; "
                "the first was just taken, ask again in a few seconds"
            )
        return list(by_pod.values()), (min(spans) if spans else None)

    async def ready(self) -> str | None:
        return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.finder.close()


def _on_nodes_of(exporters: list[Target], pods: list[Target], rule: Rule) -> list[Target]:
    """The GPU exporters a GPU rule expects: those on the selected pods' nodes when every node is known
    (Kubernetes mode; an exporter elsewhere failing is no selected pod's missing GPU), else all of them
    (a targets file names no nodes: every listed exporter is expected)."""
    nodes = {p.node for p in pods}
    if None in nodes or any(e.node is None for e in exporters):
        return exporters
    mine = [e for e in exporters if e.node in nodes]
    if not mine:
        raise SourceUnavailable(
            f"{rule.name}: no Ready GPU exporter ({rule.gpu_owner.exporters if rule.gpu_owner else ''}) on "
            f"the selected pods' nodes ({', '.join(sorted(n for n in nodes if n))})"
        )
    return mine


def _format_le(le: float) -> str:
    return "+Inf" if le == float("inf") else repr(le)
