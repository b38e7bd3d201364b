"""The extender's HTTP service (aiohttp): filter, prioritize, explain, healthz, readyz, metrics.

Paths are `ROUTES` (wire.py) under `--url-prefix`. Every request is bounded: body size (`max_body_bytes`,
default large enough for 5,000 full Node objects), time to receive the body (`body_timeout_s`, 5 s: the
scheduler's own httpTimeout is 2 s by our config), and how many decisions are being computed and answered at
once (`max_inflight`; beyond that, after a short wait: 429 TooManyRequests with Retry-After, as
kube-apiserver's max-in-flight filter answers). The body is read before a slot is taken, so slow or stalled
uploads cannot hold the slots the scheduler's calls need. A slot is held until the answer has been handed to
the socket: a client that does not read a large (full-Node echo) answer holds it, and its memory, until then.

Every non-2xx answer, including aiohttp's own 404/405/413, is a metav1.Status JSON body (middleware), logged
in one line. Malformed input is a 400; a bad node never fails the request: it is answered for (neutral
score, reason) and logged once per node and problem, not once per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import itemgetter
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_runner import BaseSite
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from toposcale.core.status import status_middleware, status_response

from . import wire
from .decisions import (
    FRAGMENT,
    OUTCOME,
    SCORE,
    Entry,
    Outcome,
    OutcomeTable,
    evaluate,
    outcome_label,
    reason_of,
    say_trades,
)
from .nodeview import NodeView, aged, view_of_node
from .pods import DEFAULT_RESOURCE, PodError, gpu_request, pod_key, required_scope
from .state import ClusterState
from .topology.allocator import mask_of
from .topology.model import Tier
from .topology.scoring import cuts, materialize, required_scope_tier

logger = logging.getLogger("toposcale.extender")

# A full v1.Node with its images list runs to ~20-40 KiB; 5,000 of them fit well under this.
DEFAULT_MAX_BODY = 256 * 1024 * 1024
STANDALONE_REASON = (
    "toposcale extender runs --standalone (no Kubernetes connection, no node cache) and got node names "
    "only: configure the extender with nodeCacheCapable: false, or run it with cluster access"
)
_LOGGED_LIMIT = 100_000
OFFLOAD_BYTES = 1024 * 1024  # --standalone bodies larger than this are answered in a worker thread
_OFFLOADED = frozenset({"filter", "prioritize", "explain"})
PENDING_PER_SLOT = 4
MAX_FREEING_PODS = 10_000


@dataclass(slots=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8888
    url_prefix: str = ""
    resource: str = DEFAULT_RESOURCE
    max_body_bytes: int = DEFAULT_MAX_BODY
    body_timeout_s: float = 5.0
    max_inflight: int = 4
    queue_timeout_s: float = 2.0
    allocation_max_age_s: float = 900.0  # full-Node mode; the watch cache has its own (ClusterState)
    # Connection bounds (the kit's listener, toposcale/core/listener.py): a connection's first request's
    # headers must arrive within header_timeout_s of the accept, a later one's within header_timeout_s of its
    # first byte (else 408, or closed unanswered if nothing came), a keep-alive connection idle between
    # requests is closed after keepalive_timeout_s, and at max_connections the connection quiet longest among
    # those idle or still sending is closed for a new one (a new one is refused only when all are answered).
    header_timeout_s: float = 10.0
    max_connections: int = 1000
    keepalive_timeout_s: float = 10.0


def normalize_prefix(prefix: str) -> str:
    p = prefix.strip().rstrip("/")
    if p and not p.startswith("/"):
        p = "/" + p
    return p


class BadRequest(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


class Extender:
    def __init__(
        self, config: ServerConfig, state: ClusterState | None = None, *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.state = state
        self._wall = wall  # for the age of full Node objects' allocations
        self.prefix = normalize_prefix(config.url_prefix)
        self.registry = CollectorRegistry()
        r = self.registry
        self.m_latency = Histogram(
            "toposcale_extender_decision_seconds", "Time to answer one scheduler call, by verb", ["verb"],
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.m_requests = Counter(
            "toposcale_extender_requests", "Requests answered, by verb and HTTP code", ["verb", "code"],
            registry=r,
        )
        self.m_nodes = Counter(
            "toposcale_extender_nodes_scored", "Nodes judged, by verb", ["verb"], registry=r
        )
        self.m_unknown = Counter(
            "toposcale_extender_unknown_topology_nodes",
            "Nodes answered without a usable topology or allocation, by reason", ["reason"], registry=r,
        )
        self.m_tier = Counter(
            "toposcale_extender_chosen_set_tier",
            "Tier of the GPU set predicted on the best-scored node of each prioritize call", ["tier"],
            registry=r,
        )
        self.m_outcome = Counter(
            "toposcale_extender_filter_outcomes", "Filter outcomes per node", ["outcome"], registry=r
        )
        self.m_followup = Counter(
            "toposcale_extender_prioritize_from_filter",
            "Prioritize calls answered from the filter call before them (same pod, nodes and cache)",
            registry=r,
        )
        self.m_cut = Counter(
            "toposcale_extender_connections_cut",
            "Connections closed by a bound: header-timeout, idle-timeout, header-size, evicted, "
            "max-connections",
            ["reason"],
            registry=r,
        )
        g_nodes = Gauge("toposcale_extender_cached_nodes", "Nodes in the watch cache", registry=r)
        g_nodes.set_function(lambda: len(state.base) if state is not None else 0)
        g_assumed = Gauge(
            "toposcale_extender_assumed_pods", "Bound GPU pods the extender tracks", registry=r
        )
        g_assumed.set_function(lambda: len(state.pods) if state is not None else 0)
        self._sem = asyncio.Semaphore(config.max_inflight)
        # Bodies are read before a slot is taken; this bounds how many are held at once (memory: at most
        # max_pending x max_body_bytes of bodies), generous enough that a few stalled uploads starve nothing.
        self.max_pending = PENDING_PER_SLOT * config.max_inflight
        self._pending = 0
        self._logged: dict[str, str] = {}
        self._followups = Followups()

    # ------------------------------------------------------------ app

    def routes(self) -> list[tuple[str, str, Any]]:
        handlers = {
            "filter": self.filter,
            "prioritize": self.prioritize,
            "explain": self.explain_post,
            "explain_get": self.explain_get,
            "placeable": self.placeable,
            "freeing": self.freeing,
            "healthz": self.healthz,
            "readyz": self.readyz,
            "metrics": self.metrics,
        }
        return [(method, self.prefix + path, handlers[verb]) for verb, (method, path) in wire.ROUTES.items()]

    async def listen(self) -> tuple[web.AppRunner, BaseSite]:
        """Serve on config.host:port with the connection bounds; the caller cleans up the runner."""
        from toposcale.core.listener import (  # the kit's bounded listener, shared with the adapter
            REQUEST_LOGGER,
            Limits,
            SecureSite,
        )

        cfg = self.config
        runner = web.AppRunner(
            self.app(), access_log=None, keepalive_timeout=cfg.keepalive_timeout_s, logger=REQUEST_LOGGER
        )
        await runner.setup()
        limits = Limits(header_timeout=cfg.header_timeout_s, max_connections=cfg.max_connections,
                        idle_timeout=cfg.keepalive_timeout_s)
        site = SecureSite(
            runner, cfg.host, cfg.port, ssl_context=None, limits=limits,
            on_cut=lambda why: self.m_cut.labels(why).inc(),
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        return runner, site

    def app(self) -> web.Application:
        # metav1.Status for every error answer, aiohttp's own 404/405/413 included; a handler's bug is a 500
        # naming the exception, and the service keeps serving
        errors = status_middleware(logger, internal_detail=True)
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[errors])
        for method, path, handler in self.routes():
            app.router.add_route(method, path, handler)
        return app

    # ------------------------------------------------------------ plumbing

    def _error(
        self, verb: str, code: int, reason: str, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        self.m_requests.labels(verb, str(code)).inc()
        logger.warning("bad request", extra={"verb": verb, "code": code, "reason": reason, "error": message})
        return status_response(code, reason, message, headers=headers)

    async def _body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.config.max_body_bytes:
            raise BadRequest(
                413, "RequestEntityTooLarge",
                f"body of {request.content_length} bytes exceeds the limit of {self.config.max_body_bytes}",
            )
        try:
            async with asyncio.timeout(self.config.body_timeout_s):  # no extra task, unlike wait_for
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(
                413, "RequestEntityTooLarge", f"body exceeds the limit of {self.config.max_body_bytes} bytes"
            ) from None
        except TimeoutError:
            raise BadRequest(
                408, "Timeout", f"request body not received within {self.config.body_timeout_s:g}s"
            ) from None
        except ConnectionError:  # the caller closed mid-upload: nobody reads the answer, one log line
            raise BadRequest(400, "BadRequest", "connection closed before the body was received") from None

    async def _run(self, verb: str, request: web.Request, work: Any) -> web.StreamResponse:
        # Requests being received, waiting or answered, at most `max_pending` (bodies held in memory).
        if self._pending >= self.max_pending:
            return self._error(
                verb, 429, "TooManyRequests",
                f"extender busy: {self._pending} requests being received or answered, retry",
                {"Retry-After": "1"},
            )
        self._pending += 1
        try:
            return await self._admitted(verb, request, work)
        finally:
            self._pending -= 1

    async def _admitted(self, verb: str, request: web.Request, work: Any) -> web.StreamResponse:
        # The body first (bounded in size and time), outside the slots: a stalled upload holds no slot.
        try:
            body = await self._body(request)
        except BadRequest as exc:
            return self._error(verb, exc.code, exc.reason, exc.message)
        start = time.perf_counter()
        if self._sem.locked():
            try:
                async with asyncio.timeout(self.config.queue_timeout_s):
                    await self._sem.acquire()
            except TimeoutError:
                return self._error(
                    verb, 429, "TooManyRequests",
                    f"extender busy: {self.config.max_inflight} requests in flight, retry",
                    {"Retry-After": "1"},
                )
        else:
            await self._sem.acquire()  # free: returns at once, without a timer
        try:
            try:
                if self.state is None and len(body) > OFFLOAD_BYTES and verb in _OFFLOADED:
                    # Full Node objects from any client: decoding and validating their annotations runs in a
                    # worker thread, so /healthz and other calls are answered meanwhile. Only without the
                    # watch cache: its state is the event loop's alone.
                    resp = await asyncio.to_thread(work, body)
                else:
                    resp = work(body)
            except wire.WireError as exc:
                return self._error(verb, 400, "BadRequest", str(exc))
            except Exception as exc:  # a bug, not the caller's fault: say so, keep serving
                logger.exception("internal error", extra={"verb": verb})
                return self._error(verb, 500, "InternalError", f"{type(exc).__name__}: {exc}")
            self.m_latency.labels(verb).observe(time.perf_counter() - start)
            self.m_requests.labels(verb, "200").inc()
            # Hand the answer to the socket under the slot: a client not reading a large answer holds it.
            try:
                await resp.prepare(request)
                await resp.write_eof()
            except ConnectionError as exc:  # the caller went away (e.g. its httpTimeout passed): not ours
                logger.info("caller left before the answer was sent", extra={"verb": verb, "error": str(exc)})
            return resp
        finally:
            self._sem.release()

    def _generation(self) -> int:
        return self.state.generation if self.state is not None else -1

    def _log_node_once(self, name: str, problem: str) -> None:
        if self._logged.get(name) == problem:
            return
        if len(self._logged) >= _LOGGED_LIMIT:
            self._logged.clear()
        self._logged[name] = problem
        logger.warning(
            "node answered without usable GPU annotations", extra={"node": name, "problem": problem}
        )

    def _pod(self, args: wire.ExtenderArgs) -> tuple[int, str, str | None]:
        """(GPUs asked, scope, pod error or None)."""
        try:
            return gpu_request(args.pod, self.config.resource), required_scope(args.pod), None
        except PodError as exc:
            logger.warning("unusable pod", extra={"pod": pod_key(args.pod), "error": str(exc)})
            return 0, "any", f"pod {pod_key(args.pod)}: {exc}"

    def _table(self, args: wire.ExtenderArgs, k: int, need: Tier | None) -> OutcomeTable | None:
        """The watch cache's outcome table when the request is answered from it (names only, GPU pod)."""
        if k > 0 and args.nodes is None and self.state is not None:
            return self.state.table(k, need)
        return None

    def _prepare(self, verb: str, args: wire.ExtenderArgs) -> tuple[int, Tier | None, str | None]:
        """(GPUs asked, required scope, reason that fails every node or None: pod error, standalone)."""
        if args.dropped:
            logger.warning("node items ignored", extra={"verb": verb, "items": args.dropped[:10]})
        k, scope, pod_error = self._pod(args)
        if pod_error:
            return 0, None, pod_error
        if k > 0 and args.nodes is None and self.state is None:
            return k, None, STANDALONE_REASON
        return k, required_scope_tier(scope), None

    def _node_views(self, nodes: list[dict[str, Any]]) -> list[NodeView | None]:
        """Views of full Node objects, an allocation older than --allocation-max-age treated as unknown."""
        res = self.config.resource
        views = [view_of_node(n, res) for n in nodes]
        limit = self.config.allocation_max_age_s
        if limit > 0:
            cutoff = self._wall() - limit
            views = [aged(v, cutoff, limit) for v in views]
        return self.state.overlay(views) if self.state is not None else views  # DRA nodes: slices watched

    def _claimed(
        self, args: wire.ExtenderArgs, need: Tier | None
    ) -> tuple[list[Outcome], list[NodeView | None]] | None:
        """Outcomes and views for a pod asking GPUs through an explicit ResourceClaim (no managed resource
        asked); None for a pod without claims, or without a cluster connection to read them."""
        state = self.state
        ask = state.claim_ask(args.pod) if state is not None else None
        if state is None or ask is None:
            return None
        views = self._node_views(args.nodes) if args.nodes is not None else None
        return state.claim_outcomes(ask, args.names, need, views)

    def _view_of(self, args: wire.ExtenderArgs) -> Callable[[int], NodeView | None]:
        state, names = self.state, args.names
        if state is None:
            return _no_view

        def view_of(i: int) -> NodeView | None:
            return state.view(names[i])

        return view_of

    def _outcomes(
        self, verb: str, args: wire.ExtenderArgs, k: int, need: Tier | None,
        table: OutcomeTable | None, entries: Sequence[Entry] | None = None,
    ) -> tuple[Sequence[Outcome], Callable[[int], NodeView | None]]:
        """Outcome per input node and a way to get node i's view (for reasons), counted in the metrics.
        From the cache: `entries` (the table's, for these names) when the caller already has them."""
        view_of: Callable[[int], NodeView | None]
        if table is not None:
            outcomes = list(map(OUTCOME, entries if entries is not None else table.entries(args.names)))
            view_of = self._view_of(args)
        elif k <= 0:
            claimed = self._claimed(args, need)
            if claimed is None:
                return evaluate([None] * len(args.names), 0, None), _no_view
            outcomes, claim_views = claimed
            view_of = claim_views.__getitem__
        else:
            views = self._node_views(args.nodes or [])
            outcomes = evaluate(views, k, need)
            view_of = views.__getitem__
        self.m_nodes.labels(verb).inc(len(outcomes))
        # From the cache, a table without unknown nodes answers no request with one: skip the scan.
        if (table is None or table.unknown) and any(map(_UNKNOWN, outcomes)):
            unknown = [i for i, o in enumerate(outcomes) if o.unknown]
            counts: dict[str, int] = {}
            for i in unknown:
                kind = outcomes[i].unknown
                counts[kind] = counts.get(kind, 0) + 1
                v = view_of(i)
                if v is not None:
                    self._log_node_once(v.name, v.problem or v.allocation_problem or outcomes[i].reason)
            for kind, count in counts.items():
                self.m_unknown.labels(kind).inc(count)
        return outcomes, view_of

    # ------------------------------------------------------------ verbs

    async def filter(self, request: web.Request) -> web.StreamResponse:
        def work(body: bytes) -> web.Response:
            args = wire.parse_args(body)
            k, need, fail_all = self._prepare("filter", args)
            names = args.names
            passing: list[str] = []
            failed: dict[str, str] = {}
            unresolvable: dict[str, str] = {}
            if fail_all is not None:
                unresolvable = dict.fromkeys(names, fail_all)
                self.m_outcome.labels("never-fits").inc(len(unresolvable))
                return _json(wire.filter_result(args, passing, failed, unresolvable))
            table = self._table(args, k, need)
            if table is not None:
                entries = table.entries(names)  # one C-level pass; fills in nodes not judged yet
                if not table.failing and not table.unknown and not table.short:
                    # No cached node fails this pod, is unknown or short: every name fits, nothing to scan.
                    self.m_nodes.labels("filter").inc(len(names))
                    if names:
                        self.m_outcome.labels("fits").inc(len(names))
                    self._followups.expect(body, names, entries, table, k, need, self._generation())
                    return _json(wire.filter_result(args, names, failed, unresolvable))
                outcomes, view_of = self._outcomes("filter", args, k, need, table, entries)
            else:
                outcomes, view_of = self._outcomes("filter", args, k, need, None)
            passing = list(compress(names, map(_PASSES, outcomes)))
            if table is not None and not table.unknown:
                kept = list(compress(entries, map(_PASSES, outcomes)))
                self._followups.expect(body, passing, kept, table, k, need, self._generation())
            if len(passing) < len(names):
                for i, o in enumerate(outcomes):
                    if o.passes:
                        continue
                    if o.unresolvable:
                        unresolvable[names[i]] = reason_of(o, view_of(i))
                    else:
                        failed[names[i]] = reason_of(o, view_of(i))
            if outcomes:
                for label, count in Tally(map(outcome_label, outcomes)).items():
                    self.m_outcome.labels(label).inc(count)
            return _json(wire.filter_result(args, passing, failed, unresolvable))

        return await self._run("filter", request, work)

    async def prioritize(self, request: web.Request) -> web.StreamResponse:
        def work(body: bytes) -> web.Response:
            state = self.state
            hit = self._followups.match(body, state) if state is not None else None
            if hit is not None:
                # The filter's own nodes for the same pod, nothing changed since: its entries are the answer.
                entries, table, k, need = hit
                self.m_followup.inc()
                answer = wire.priority_list_of(map(FRAGMENT, entries))
                later = self._count_prioritize_later
                asyncio.get_running_loop().call_soon(later, None, k, need, table, entries)
                return _json(answer)
            args = wire.parse_args(body)
            k, need, fail_all = self._prepare("prioritize", args)
            names = args.names
            if fail_all is not None:
                return _json(wire.priority_list(names, [0] * len(names)))
            table = self._table(args, k, need)
            if table is not None:
                # From the cache: the answer is a join of the nodes' prebuilt fragments; the metrics, which
                # need every outcome, are counted right after the answer is on its way.
                entries = table.entries(names)
                answer = wire.priority_list_of(map(FRAGMENT, entries))
                later = self._count_prioritize_later
                asyncio.get_running_loop().call_soon(later, args, k, need, table, entries)
                return _json(answer)
            outcomes = self._count_prioritize(args, k, need, None, None)
            return _json(wire.priority_list(names, list(map(_SCORE, outcomes))))

        return await self._run("prioritize", request, work)

    def _count_prioritize_later(
        self, args: wire.ExtenderArgs | None, k: int, need: Tier | None,
        table: OutcomeTable, entries: Sequence[Entry],
    ) -> None:
        try:
            if table.unknown and args is not None:
                self._count_prioritize(args, k, need, table, entries)  # unknown nodes to count and log
                return
            self.m_nodes.labels("prioritize").inc(len(entries))
            if entries:
                scores = bytes(map(SCORE, entries))  # 0..10 each: max and index at C speed
                self._count_tier(entries[scores.index(max(scores))][1])
        except Exception:  # a bug in counting must not surface as an asyncio callback error per request
            logger.exception("counting a prioritize answer failed", extra={"verb": "prioritize"})

    def _count_prioritize(
        self, args: wire.ExtenderArgs, k: int, need: Tier | None,
        table: OutcomeTable | None, entries: Sequence[Entry] | None,
    ) -> Sequence[Outcome]:
        outcomes, _ = self._outcomes("prioritize", args, k, need, table, entries)
        if outcomes:
            self._count_tier(max(outcomes, key=_SCORE))
        return outcomes

    def _count_tier(self, best: Outcome) -> None:
        """The tier the pod most likely gets: that of the best-scored node (first of equals)."""
        if best.passes and best.decision is not None and best.decision.fits:
            tier = best.decision.tier
            self.m_tier.labels(tier.label if tier is not None else "single-gpu").inc()

    def _explain_doc(self, args: wire.ExtenderArgs) -> dict[str, Any]:
        k, scope, pod_error = self._pod(args)
        doc: dict[str, Any] = {
            "pod": pod_key(args.pod), "resource": self.config.resource, "gpus": wire.json_int(k),
            "requiredScope": scope,
        }
        if pod_error is not None:
            doc["error"] = pod_error
            doc["nodes"] = []
            return doc
        if k > 0 and args.nodes is None and self.state is None:
            doc["error"] = STANDALONE_REASON
            doc["nodes"] = []
            return doc
        if k > 0 and args.nodes is not None:
            views = self._node_views(args.nodes)
        elif k > 0 and self.state is not None:
            views = [self.state.view(n) for n in args.names]
        else:
            views = [None] * len(args.names)
        rows = []
        outcomes = evaluate(views, k, required_scope_tier(scope))
        claimed = self._claimed(args, required_scope_tier(scope)) if k == 0 else None
        if claimed is not None:
            outcomes, views = claimed
            ask = self.state.claim_ask(args.pod) if self.state is not None else None
            doc["claim"] = ask if isinstance(ask, str) else getattr(ask, "source", None)
            doc["gpus"] = getattr(ask, "k", 0)
        for name, o, view in zip(args.names, outcomes, views, strict=True):
            row: dict[str, Any] = {
                "node": name,
                "outcome": outcome_label(o),
                "score": o.score,
                "reason": reason_of(o, view),
            }
            if o.unknown:
                row["unknown"] = o.unknown
            d = o.decision
            if d is not None and view is not None and view.topology is not None:
                if d.fits and view.dra is None and view.free_mask is not None:
                    row["breaks"] = list(cuts(view.topology, view.free_mask, mask_of(int(i) for i in d.gpus)))
                d = materialize(d, view.topology)
                row.update(
                    gpus=list(d.gpus), tier=d.tier.label if d.tier is not None else None,
                    quality=d.quality, residual=d.residual, span=d.span, ties=d.ties,
                )
            rows.append(row)
        rows.sort(key=lambda r: (-r["score"], r["outcome"] != "fits", r["node"]))
        say_trades(rows)
        doc["nodes"] = rows
        return doc

    async def explain_post(self, request: web.Request) -> web.StreamResponse:
        def work(body: bytes) -> web.Response:
            return _json(orjson.dumps(self._explain_doc(wire.parse_args(body)), option=orjson.OPT_INDENT_2))

        return await self._run("explain", request, work)

    async def explain_get(self, request: web.Request) -> web.StreamResponse:
        ref = request.query.get("pod", "")
        ns, _, name = ref.partition("/")
        if not ns or not name:
            return self._error("explain", 400, "BadRequest", "expected ?pod=<namespace>/<name>")
        if self.state is None:
            return self._error(
                "explain", 404, "NotFound",
                "no cluster connection (--standalone): POST the ExtenderArgs to /explain instead",
            )
        try:
            pod = await asyncio.wait_for(self.state.read_pod(ns, name), 10)
        except Exception as exc:  # the apiserver failing is not the caller's fault, but say so
            return self._error("explain", 503, "ServiceUnavailable", f"could not read pod {ref}: {exc}")
        if pod is None:
            return self._error("explain", 404, "NotFound", f"pod {ref} not found")
        args = wire.ExtenderArgs(pod=pod, nodes=None, node_names=sorted(self.state.names()))
        self.m_requests.labels("explain", "200").inc()
        return _json(orjson.dumps(self._explain_doc(args), option=orjson.OPT_INDENT_2))

    def _placeable_doc(self, body: bytes) -> dict[str, Any]:
        template = pod_template(body)
        try:
            k, scope = gpu_request(template, self.config.resource), required_scope(template)
        except PodError as exc:
            raise wire.WireError(f"pod template {pod_key(template)}: {exc}") from None
        if k <= 0:
            claims = " (GPUs through spec.resourceClaims are not counted)" if _spec(template).get(
                "resourceClaims"
            ) else ""
            what = f"pod template {pod_key(template)} asks no {self.config.resource}"
            raise wire.WireError(f"{what}: GPUs do not limit it{claims}")
        assert self.state is not None
        doc = self.state.placeable(template, k, required_scope_tier(scope), scope).doc()
        return {"kind": "Placeable", "template": pod_key(template), "resource": self.config.resource, **doc}

    async def placeable(self, request: web.Request) -> web.StreamResponse:
        """How many more pods like the posted template the cluster's GPUs take now (placeable.py)."""
        state = self.state
        if state is None:
            return self._error(
                "placeable", 404, "NotFound",
                "no cluster connection (--standalone): placeable replicas need the watch cache",
            )
        if not (state.synced and state.synced_unbound.is_set()):
            return self._error(
                "placeable", 503, "ServiceUnavailable",
                "watch cache not synced yet: nodes, bound and Pending pods must be listed first",
            )

        def work(body: bytes) -> web.Response:
            return _json(orjson.dumps(self._placeable_doc(body)))

        return await self._run("placeable", request, work)

    async def freeing(self, request: web.Request) -> web.StreamResponse:
        """What freeing each named pod's GPUs gives back on its node (ClusterState.freeing), for the
        adapter's scale-down victim ranking. Body: {"pods": ["namespace/name", ...]}."""
        state = self.state
        if state is None:
            return self._error(
                "freeing", 404, "NotFound",
                "no cluster connection (--standalone): /freeing needs the watch cache",
            )
        if not state.synced:
            return self._error(
                "freeing", 503, "ServiceUnavailable",
                "watch cache not synced yet: nodes and pods must be listed",
            )

        def work(body: bytes) -> web.Response:
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise wire.WireError(f"malformed JSON: {exc}") from None
            pods = doc.get("pods") if isinstance(doc, dict) else None
            if not isinstance(pods, list) or not all(isinstance(p, str) and "/" in p for p in pods):
                raise wire.WireError('expected {"pods": ["namespace/name", ...]}')
            if len(pods) > MAX_FREEING_PODS:
                raise wire.WireError(f"{len(pods)} pods asked, at most {MAX_FREEING_PODS} per request")
            assert state is not None
            return _json(orjson.dumps({"kind": "Freeing", "pods": state.freeing(pods)}))

        return await self._run("freeing", request, work)

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        """Liveness: the process answers. Readiness (the watch cache synced) is /readyz."""
        body: dict[str, Any] = {"status": "ok", "mode": "standalone" if self.state is None else "watch"}
        if self.state is not None:
            body["synced"] = self.state.synced
            body["nodes"] = len(self.state.base)
        return _json(orjson.dumps(body))

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        """Ready once the Node and Pod caches have synced (always in --standalone): until then names-only
        answers would call every node uncached, so the Service must not send the scheduler here."""
        state = self.state
        if state is not None:
            missing = [
                what for what, event in (("nodes", state.synced_nodes), ("pods", state.synced_pods))
                if not event.is_set()
            ]
            if missing:
                return status_response(
                    503, "ServiceUnavailable",
                    f"watch cache not synced yet: {' and '.join(missing)} not listed from the apiserver",
                )
        mode = "standalone" if state is None else "watch"
        return _json(orjson.dumps({"status": "ready", "mode": mode}))

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class Followups:
    """What the prioritize that follows a filter will send, so its answer comes from the filter's work.

    kube-scheduler calls filter with the nodes its own filters passed, then prioritize with the nodes the
    filter kept, for the same pod (`HTTPExtender.send`: `json.Marshal` of the same `ExtenderArgs{Pod,
    Nodes, NodeNames}`, fields in that order). So the prioritize body is the filter body with the filter's
    answer as NodeNames, byte for byte. When a prioritize body is exactly that and the watch cache has not
    changed since (its generation), the filter's entries for those nodes are the answer: no JSON decoding
    of the pod and thousands of names, no lookup per name. Any other body (another client, an extender
    before this one in the chain dropping nodes, a changed cache) takes the ordinary path."""

    SLOTS = 4  # calls of a few schedulers (or profiles) in flight at once

    def __init__(self) -> None:
        self._items: list[tuple[bytes, list[Any], OutcomeTable, int, Tier | None, int]] = []

    def expect(
        self, filter_body: bytes, kept: Sequence[str], entries: Sequence[Any], table: OutcomeTable, k: int,
        need: Tier | None, generation: int,
    ) -> None:
        # Go's encoder writes NodeNames last: `...,"NodeNames":[...]}`; node names need no escaping.
        cut = filter_body.rfind(b',"NodeNames":[')
        if cut < 0 or not filter_body.endswith(b"]}"):
            return
        expected = filter_body[:cut] + b',"NodeNames":' + orjson.dumps(list(kept)) + b"}"
        self._items.append((expected, list(entries), table, k, need, generation))
        if len(self._items) > self.SLOTS:
            del self._items[0]

    def match(
        self, body: bytes, state: ClusterState
    ) -> tuple[list[Any], OutcomeTable, int, Tier | None] | None:
        items = self._items
        for i in range(len(items) - 1, -1, -1):
            expected, entries, table, k, need, gen = items[i]
            if len(expected) == len(body) and expected == body:
                del items[i]
                # table(): expires assumptions that ran out (bumping the generation) before the check
                if state.table(k, need) is table and state.generation == gen:
                    return entries, table, k, need
                return None
        return None


# Outcome is a NamedTuple: item getters run at C speed over thousands of nodes.
_PASSES = itemgetter(Outcome._fields.index("passes"))
_SCORE = itemgetter(Outcome._fields.index("score"))
_UNKNOWN = itemgetter(Outcome._fields.index("unknown"))


def _spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


_WORKLOADS = ("Deployment", "ReplicaSet", "StatefulSet", "Job", "PodTemplate", "LeaderWorkerSet")


def pod_template(body: bytes) -> dict[str, Any]:
    """The pod template of a /placeable body: a Pod, a PodTemplateSpec (`{metadata, spec}`), or a workload
    holding one (`spec.template`, or `template` of a PodTemplate); WireError naming what is wrong."""
    if not body:
        raise wire.WireError("empty request body: expected a Pod, a PodTemplateSpec or a Deployment")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise wire.WireError(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise wire.WireError(f"pod template must be a JSON object, got {type(doc).__name__}")
    kind = doc.get("kind")
    if kind == "PodTemplate":
        doc = doc.get("template")
    elif kind in _WORKLOADS:
        doc = _spec(doc).get("template")
    elif kind not in (None, "Pod"):
        raise wire.WireError(f"kind {str(kind)[:64]!r} holds no pod template: expected Pod or a workload")
    if not isinstance(doc, dict) or not isinstance(doc.get("spec"), dict):
        raise wire.WireError(f"{kind or 'pod template'}: no pod spec (expected metadata and spec)")
    if not isinstance(doc.get("metadata", {}), dict):
        raise wire.WireError("pod template: metadata must be an object")
    return doc


def _no_view(_i: int) -> NodeView | None:
    return None


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")
