"""Prometheus source: one instant query per rule (Prometheus' HTTP API through requests), off the event loop.

requests is synchronous, so calls run in a bounded thread pool; a semaphore bounds how
many wait for it, each call has a timeout, and there are no client-side retries (the HPA asks again anyway).
Bearer token file (re-read so rotated tokens work), CA file and custom headers serve Thanos/Mimir-style
endpoints.
For workload rules the query also reads the selected pods' `up` series (promql.health_queries): a pod whose
scrape fails, or that exposes none of the rule's series, is expected but missing, and the rule's
`on_missing`/`min_answered_share` apply as in scrape mode (model.check_coverage). Expected are only pods that
exist now: those kube-state-metrics lists where it lists any, and, with a Kubernetes connection (`pods`), the
Running and Ready pods the selector picks (a deleted pod's `up == 0` outlives it by two scrape intervals).
GPU rules and `prometheus_query` rules have no such reading (README).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import NotFound, SourceUnavailable, TooManyRequests
from ..model import (
    DEFAULT_MIN_ANSWERED_SHARE,
    Coverage,
    MetricValue,
    PodValue,
    check_coverage,
    extrapolate,
    lacking,
    series_absent,
    value_series,
)
from ..promql import PART_LABEL, combined_query, per_pod_query
from ..rules import Rule
from ..selectors import Selector
from .base import OnceLog
from .pods import PodFinder

logger = logging.getLogger("toposcale.adapter.prometheus")
TOKEN_REREAD_SECONDS = 60.0
# The generated queries answer a handful of series (a few hundred bytes); a `prometheus_query` listing every
# pod of a large workload stays far below this. Past it the answer is an error, not parsed (issue 28).
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
READ_CHUNK = 64 * 1024


class AnswerRefused(ValueError):
    """Prometheus' answer is an error status, too large, too slow or not an instant vector: refused, never
    partly used."""


class PrometheusSource:
    kind = "prometheus"

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        workers: int = 8,
        max_waiting: int = 256,
        bearer_token_file: str | None = None,
        ca_file: str | None = None,
        insecure_skip_verify: bool = False,
        headers: Mapping[str, str] | None = None,
        on_error: Any = None,
        on_coverage: Any = None,
        min_answered_share: float = DEFAULT_MIN_ANSWERED_SHARE,
        token_reread_seconds: float = TOKEN_REREAD_SECONDS,
        pods: PodFinder | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        """`pods`: where the pods that exist now are listed (the Kubernetes API), or None: Prometheus' own
        view (kube-state-metrics where it has it, else the `up` series). `max_response_bytes`: a larger
        answer (after decompression) is an error, read no further."""
        import requests
        from urllib3.util.retry import Retry

        self.url = url.rstrip("/")
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self._token_file = Path(bearer_token_file) if bearer_token_file else None
        self._token_read_at = -math.inf
        self._token_reread = token_reread_seconds
        self._base_headers = dict(headers or {})
        session = requests.Session()
        session.verify = False if insecure_skip_verify else (ca_file or True)
        _settle_environment(session, self.url)
        # requests' default pool holds 10 connections per host; match the number of threads.
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=1, pool_maxsize=workers, max_retries=Retry(total=0, raise_on_status=False)
        )
        session.mount(self.url, adapter)
        # Prometheus gzips its answers when asked to, and Go's gzip writer costs it ~0.3-0.6 ms per query
        # (measured on loopback) for an answer of a few hundred bytes (the generated queries return two
        # series); a --prometheus-header Accept-Encoding still wins
        session.headers["Accept-Encoding"] = "identity"
        session.headers.update(self._initial_headers())
        self._session = session
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prometheus")
        self._slots = asyncio.Semaphore(workers + max_waiting)
        self.on_error = on_error
        self.on_coverage = on_coverage
        self.min_answered_share = min_answered_share
        self.pods = pods
        self._absent = OnceLog(logger)

    def _initial_headers(self) -> dict[str, str]:
        try:
            return self._headers()
        except SourceUnavailable as exc:
            raise ValueError(str(exc)) from None  # at start: a clear start-up error, not a 503 later

    def _headers(self) -> dict[str, str]:
        headers = dict(self._base_headers)
        if self._token_file is not None:
            try:
                token = self._token_file.read_text().strip()
            except OSError as exc:
                raise SourceUnavailable(
                    f"cannot read Prometheus bearer token file {self._token_file}: {exc}"
                ) from exc
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _refresh_token(self) -> None:
        now = time.monotonic()
        if self._token_file is not None and now - self._token_read_at >= self._token_reread:
            self._session.headers.update(self._headers())
            self._token_read_at = now

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """Run an instant query; errors become SourceUnavailable (503) with the reason."""
        import urllib3
        from requests import RequestException

        if self._slots.locked():
            raise TooManyRequests("too many Prometheus queries waiting; try again")
        async with self._slots:
            self._refresh_token()
            loop = asyncio.get_running_loop()
            try:
                return await asyncio.wait_for(
                    loop.run_in_executor(self._pool, self._instant, promql),
                    timeout=self.timeout + 1,
                )
            except (
                TimeoutError,
                RequestException,
                ValueError,
                KeyError,
                RecursionError,  # JSON nested too deeply
                urllib3.exceptions.HTTPError,  # the body's read (protocol error, read timeout, bad gzip)
            ) as exc:
                self._error(type(exc).__name__)
                raise SourceUnavailable(f"Prometheus at {self.url} failed: {describe(exc)}") from exc

    def _instant(self, promql: str) -> list[dict[str, Any]]:
        """One instant query in a worker thread: the answer's `result`, read within `timeout` in all (a
        server trickling its body is cut, so a worker is never held longer) and at most `max_response_bytes`
        (decoded), and only an instant vector (what every query here asks for)."""
        deadline = time.monotonic() + self.timeout
        with self._session.get(
            f"{self.url}/api/v1/query", params={"query": promql}, timeout=self.timeout, stream=True
        ) as response:
            body = bytearray()
            while chunk := response.raw.read1(READ_CHUNK, decode_content=True):
                body += chunk
                if len(body) > self.max_response_bytes:
                    raise AnswerRefused(f"answer larger than {self.max_response_bytes} bytes")
                if time.monotonic() > deadline:
                    raise AnswerRefused(f"answer not read within {self.timeout:g}s")
        if response.status_code != 200:
            shown = bytes(body[:300])
            raise AnswerRefused(f"HTTP Status Code {response.status_code} ({shown!r})")
        data = json.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
            raise AnswerRefused("answer has no data object")
        kind = data["data"].get("resultType")
        result = data["data"].get("result")
        if kind != "vector" or not isinstance(result, list):
            raise AnswerRefused(f"answer is not an instant vector (resultType {str(kind)[:40]!r})")
        return result

    def _sample(self, series: Any) -> tuple[str | None, float, float]:
        """(part, timestamp, value) of one series of an instant vector; anything else is a 503."""
        try:
            part = series["metric"].get(PART_LABEL)
            ts, text = series["value"]
            return part, float(ts), float(text)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._error("garbage")
            raise SourceUnavailable(f"Prometheus at {self.url} answered an unexpected result") from exc

    def _check_unique(self, result: list[Any]) -> None:
        """Prometheus never answers one label set twice in a vector: an answer that does is not Prometheus'
        (which of the two would be served, or both summed, is a guess)."""
        seen: set[frozenset[tuple[Any, Any]]] = set()
        for series in result:
            metric = series.get("metric") if isinstance(series, dict) else None
            if not isinstance(metric, dict):
                continue  # _sample names it
            labels = frozenset((k, v) for k, v in metric.items() if isinstance(v, str))
            if labels in seen:
                self._error("duplicate")
                raise SourceUnavailable(f"Prometheus at {self.url} answered one series twice: not Prometheus")
            seen.add(labels)

    def _error(self, kind: str) -> None:
        if self.on_error is not None:
            self.on_error("prometheus", kind)

    async def fetch(self, rule: Rule, namespace: str, selector: Selector) -> list[MetricValue]:
        result = await self.query(combined_query(rule, namespace, selector))
        value: tuple[float, float] | None = None
        age: float | None = None
        values: list[dict[str, str]] = []
        targets: set[tuple[str, str]] = set()
        down: dict[tuple[str, str], str] = {}
        without: dict[tuple[str, str], str] = {}
        below: list[str] = []

        def key(labels: dict[str, str]) -> tuple[str, str]:
            return labels.get(rule.namespace_label, namespace), labels.get(rule.pod_label, "?")

        self._check_unique(result)
        for series in result:
            part, ts, number = self._sample(series)
            if part == "value":
                value = (float(ts), number)
                values.append(series["metric"])
            elif part == "age":
                age = number
            elif part == "target":
                targets.add(key(series["metric"]))
            elif part == "missing":
                ns, pod = key(series["metric"])
                down[(ns, pod)] = f"{ns}/{pod}: Prometheus cannot scrape it (up == 0)"
            elif part == "lacking":
                ns, pod = key(series["metric"])
                without[(ns, pod)] = lacking(rule, f"{ns}/{pod}")
            elif part == "negative":
                ns, pod = key(series["metric"])
                below.append(f"{_short(ns)}/{_short(pod)}: a series is {number:g}, below 0")
        if below:
            # As in scrape mode such a pod is broken; Prometheus summed its value in already, so the value
            # cannot be computed without it here: refused whatever the rule's on_missing (issue 28).
            self._error("negative-value")
            raise SourceUnavailable(
                f"{rule.name}: {len(below)} selected pod(s) expose one of "
                f"{', '.join(value_series(rule))} below 0 ({'; '.join(sorted(below)[:3])}"
                f"{'; ...' if len(below) > 3 else ''}): a broken exporter"
            )
        if len(values) > 1:
            # one external metric value per (metric, namespace, selector): picking one of several series
            # would serve whichever Prometheus listed last (the generated queries always aggregate to one)
            self._error("ambiguous")
            shown = "; ".join(
                "{" + ", ".join(f"{k}={v!r}" for k, v in sorted(m.items()) if k != PART_LABEL) + "}"
                for m in values[:3]
            )
            raise SourceUnavailable(
                f"{rule.name}: the query returned {len(values)} series for one value ({shown}"
                f"{'; ...' if len(values) > 3 else ''}); aggregate them in the rule's prometheus_query, "
                f"e.g. sum(...) or max(...)"
            )
        coverage = None
        if targets and self.pods is not None:
            targets &= {(t.namespace, t.pod) for t in await self.pods.workload(rule, namespace, selector)}
        if targets:
            failed = sorted(v for k, v in (*down.items(), *without.items()) if k in targets)
            coverage = Coverage(len(targets), tuple(failed))
            answered = targets - down.keys()
            if value is None and answered and answered <= without.keys():
                # targets answered, none exposes any of the rule's series: not "the selector matched none"
                raise self._series_absent(rule, namespace, len(answered))
            if self.on_coverage is not None:
                self.on_coverage(rule.name, namespace, coverage.answered, coverage.expected)
            check_coverage(rule, coverage, self.min_answered_share)
        if value is None:
            if age is not None:
                raise SourceUnavailable(
                    f"{rule.name}: Prometheus has series but the expression gave no value"
                )
            return []
        if age is not None and age > rule.max_staleness_seconds:
            self._error("stale")
            raise SourceUnavailable(
                f"{rule.name}: newest sample is {age:.0f}s old "
                f"(max_staleness_seconds {rule.max_staleness_seconds:g})"
            )
        ts, number = value
        if math.isnan(number) or math.isinf(number):
            raise SourceUnavailable(f"{rule.name}: value is {number} (no observations or division by zero)")
        if number < 0 and rule.prometheus_query is None:
            # a sum, share or quantile of counts and usages: below 0 only from a broken exporter (GPU rules
            # have no per-pod negative part, their series name the GPU's pod in other labels)
            self._error("negative-value")
            raise SourceUnavailable(f"{rule.name}: value is {number:g}, below 0: a broken exporter")
        if coverage is not None and coverage.failed:
            number = extrapolate(rule, number, coverage)
        window = rule.window_seconds if rule.aggregation == "histogram_quantile" else None
        return [MetricValue(value=number, timestamp=ts, window_seconds=window)]

    async def fetch_pods(
        self, rule: Rule, namespace: str, selector: Selector, *, pod: str | None = None
    ) -> list[PodValue]:
        """Each selected pod's own value (one query). A pod Prometheus cannot scrape has no fresh series and
        is absent (never 0); every selected pod down is a 503."""
        result = await self.query(per_pod_query(rule, namespace, selector, pod=pod))
        out: list[PodValue] = []
        expected = answered = 0
        self._check_unique(result)
        for series in result:
            part, ts, number = self._sample(series)
            labels = series["metric"]
            if part == "expected" and math.isfinite(number):
                expected = int(number)
            elif part == "answered" and math.isfinite(number):
                answered = int(number)
            elif part == "value" and math.isfinite(number) and number >= 0:  # below 0: a broken exporter
                pod = labels.get(rule.pod_label)
                if pod:
                    out.append(PodValue(labels.get(rule.namespace_label, namespace), pod, number, float(ts)))
        if expected > 0 and answered == 0 and not out:
            raise SourceUnavailable(
                f"{rule.name}: Prometheus cannot scrape any of the {expected} selected pods"
            )
        if answered > 0 and not any(s["metric"].get(PART_LABEL) == "value" for s in result):
            raise self._series_absent(rule, namespace, answered)  # as in fetch: not "no pod selected"
        if self.on_coverage is not None and expected > 0:
            self.on_coverage(rule.name, namespace, answered, expected)
        return sorted(out, key=lambda v: v.pod)

    async def deployment_selector(self, namespace: str, name: str) -> str | None:
        raise NotFound(
            "Deployment metrics need the Kubernetes API for the Deployment's selector: serve them in scrape "
            "mode, or ask for pods/* with the Deployment's labelSelector"
        )

    async def ready(self) -> str | None:
        try:
            await self.query("vector(1)")
        except Exception as exc:  # readiness reports any failure as text
            return str(exc)
        return None

    def _series_absent(self, rule: Rule, namespace: str, answered: int) -> SourceUnavailable:
        exc = series_absent(rule, answered)
        self._absent.warn((rule.name, namespace), "no target exposes the rule's series",
                          metric=rule.name, namespace=namespace, error=str(exc))
        return exc

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.pods is not None:
            await self.pods.close()


def _settle_environment(session: Any, url: str) -> None:
    """Resolve once what requests would read from the environment on every call, then stop it reading.

    With `trust_env` on, each request re-scans os.environ for proxies and no_proxy, looks for a .netrc and
    for REQUESTS_CA_BUNDLE (requests' merge_environment_settings): about a third of the client's CPU per
    query, measured. The same settings, resolved for this one Prometheus URL at start, are kept on the
    session, so a proxy, a CA bundle or .netrc credentials in the environment still apply.
    """
    from requests.utils import get_environ_proxies, get_netrc_auth

    if not session.trust_env:
        return
    session.proxies.update(get_environ_proxies(url, no_proxy=session.proxies.get("no_proxy")))
    if session.verify is True:
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    if session.auth is None:
        session.auth = get_netrc_auth(url)
    session.trust_env = False


def _short(text: str, limit: int = 64) -> str:
    """A label value from the answer as one short printable token."""
    shown = ascii(text)[1:-1]
    return shown if len(shown) <= limit else shown[:limit] + "..."


def describe(exc: BaseException) -> str:
    """A short reason: requests wraps urllib3's MaxRetryError (whose text repeats the long query URL) around
    the real cause (refused, TLS verification, timeout)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    reason: object = exc
    inner = exc.args[0] if exc.args else None
    if getattr(inner, "reason", None) is not None:
        reason = inner.reason  # type: ignore[union-attr]
    text = f"{type(exc).__name__}: {reason}"
    return text if len(text) <= 300 else text[:300] + "..."
