"""The kube-scheduler extender wire format (k8s.io/kube-scheduler/extender/v1/types.go).

The Go types carry no JSON tags, so the scheduler sends and reads PascalCase keys (`Pod`, `Nodes`,
`NodeNames`; `FailedNodes`, `FailedAndUnresolvableNodes`, `Error`; `Host`, `Score`). Older extender clients
used lowercase tags (`pod`, `nodes`, `nodenames`): input keys are matched case-insensitively; answers are
always PascalCase. The Pod and Node objects inside are ordinary v1 objects (camelCase). orjson throughout:
5,000-node payloads are the hot path. Also: the metav1.Status body of every refusal, and the bodies of
the extender's own verbs (/placeable, /freeing).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

# Verbs and paths served; deploy/ tests cross-check the KubeSchedulerConfiguration against this table.
ROUTES: dict[str, tuple[str, str]] = {
    "filter": ("POST", "/filter"),
    "prioritize": ("POST", "/prioritize"),
    "explain": ("POST", "/explain"),
    "explain_get": ("GET", "/explain"),
    "placeable": ("POST", "/placeable"),
    "freeing": ("POST", "/freeing"),
    "healthz": ("GET", "/healthz"),
    "readyz": ("GET", "/readyz"),
    "metrics": ("GET", "/metrics"),
}
FILTER_VERB = "filter"
PRIORITIZE_VERB = "prioritize"
MIN_PRIORITY = 0  # extenderv1.MinExtenderPriority
MAX_PRIORITY = 10  # extenderv1.MaxExtenderPriority


class WireError(ValueError):
    """The request is not an ExtenderArgs document (answered 400)."""


@dataclass(slots=True)
class ExtenderArgs:
    pod: dict[str, Any]
    nodes: list[dict[str, Any]] | None  # nodeCacheCapable: false - full v1.Node objects
    node_names: list[str] | None  # nodeCacheCapable: true - names only
    dropped: list[str] = field(default_factory=list)  # node items that could not be used, for the log

    @property
    def names(self) -> list[str]:
        if self.node_names is not None:
            return self.node_names
        return [n["metadata"]["name"] for n in self.nodes or []]


def _ci(doc: dict[str, Any], key: str) -> Any:
    if key in doc:
        return doc[key]
    low = key.lower()
    for k, v in doc.items():
        if isinstance(k, str) and k.lower() == low:
            return v
    return None


def _json_object(body: bytes, what: str, expected: str) -> dict[str, Any]:
    """A request body that must be one JSON object; WireError for an empty body, bad JSON or another type."""
    if not body:
        raise WireError(f"empty request body: expected {expected}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise WireError(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def parse_args(body: bytes) -> ExtenderArgs:
    """ExtenderArgs from a request body; WireError with a message a person can act on."""
    doc = _json_object(body, "ExtenderArgs", "ExtenderArgs JSON {Pod, Nodes, NodeNames}")
    pod = _ci(doc, "Pod")
    if not isinstance(pod, dict):
        raise WireError("ExtenderArgs.Pod is missing or not an object")
    raw_nodes = _ci(doc, "Nodes")
    raw_names = _ci(doc, "NodeNames")
    nodes: list[dict[str, Any]] | None = None
    names: list[str] | None = None
    dropped: list[str] = []
    if raw_nodes is not None:
        if not isinstance(raw_nodes, dict):
            raise WireError("ExtenderArgs.Nodes must be a v1.NodeList object {items: [...]} or null")
        items = _ci(raw_nodes, "items")
        if items is None:
            items = []
        if not isinstance(items, list):
            raise WireError("ExtenderArgs.Nodes.items must be a list")
        nodes = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            meta = item.get("metadata") if isinstance(item, dict) else None
            name = meta.get("name") if isinstance(meta, dict) else None
            if not isinstance(name, str) or not name:
                dropped.append(f"Nodes.items[{i}]: no metadata.name")
                continue
            if name in seen:
                dropped.append(f"Nodes.items[{i}]: duplicate node {name}")
                continue
            seen.add(name)
            nodes.append(item)
    if raw_names is not None:
        if not isinstance(raw_names, list) or not _all_str(raw_names):
            raise WireError("ExtenderArgs.NodeNames must be a list of strings or null")
        names = raw_names  # the scheduler sends each name once; duplicates would only be answered twice
    if nodes is not None and names is not None:
        names = None  # the scheduler never sends both; the full objects carry more
    return ExtenderArgs(pod=pod, nodes=nodes, node_names=names, dropped=dropped)


def _all_str(items: list[Any]) -> bool:
    try:
        "".join(items)  # C speed, a fraction of a per-item type check; raises on anything but str
    except TypeError:
        return False
    return True


def filter_result(
    args: ExtenderArgs,
    passing: list[str],
    failed: dict[str, str],
    unresolvable: dict[str, str],
    error: str = "",
) -> bytes:
    """ExtenderFilterResult in the mode the request came in: Nodes (full objects, echoed) or NodeNames."""
    doc: dict[str, Any] = {
        "Nodes": None,
        "NodeNames": None,
        "FailedNodes": failed,
        "FailedAndUnresolvableNodes": unresolvable,
        "Error": error,
    }
    if args.nodes is not None:
        keep = set(passing)
        doc["Nodes"] = {
            "metadata": {},
            "items": [n for n in args.nodes if n["metadata"]["name"] in keep],
        }
    else:
        doc["NodeNames"] = passing
    return orjson.dumps(doc)


_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\]')
_SCORE_TAIL = [f'","Score":{s}}}' for s in range(MAX_PRIORITY + 1)]  # indexed by score (MIN_PRIORITY is 0)


def priority_list(hosts: list[str], scores: list[int]) -> bytes:
    """HostPriorityList: a bare JSON array of {Host, Score}."""
    if (
        len(hosts) == len(scores)
        and all(MIN_PRIORITY <= s <= MAX_PRIORITY for s in set(scores))
        and not _NEEDS_ESCAPE.search("".join(hosts))
    ):
        # Node names never need JSON escaping in practice; joining text is twice as fast as building
        # 5,000 dicts for orjson. Anything unusual takes the general path below.
        tail = _SCORE_TAIL
        items = ['{"Host":"' + h + tail[s] for h, s in zip(hosts, scores, strict=True)]
        return ("[" + ",".join(items) + "]").encode()
    return orjson.dumps([{"Host": h, "Score": s} for h, s in zip(hosts, scores, strict=True)])


_INT64 = 2**63


def json_int(n: int) -> int | orjson.Fragment:
    """`n` for orjson, which refuses integers beyond 64 bits: those (a pod asking 1e30 GPUs) as a raw JSON
    number, so an explain document stays exact and encodable whatever count a pod spec holds."""
    return n if -_INT64 <= n < _INT64 else orjson.Fragment(str(n).encode())


def host_priority(host: str, score: int) -> bytes:
    """One HostPriority `{"Host": .., "Score": ..}` as JSON text, built once per node and outcome so that
    a HostPriorityList over thousands of cached nodes is a join of prebuilt fragments."""
    return b'{"Host":' + orjson.dumps(host) + b',"Score":' + str(int(score)).encode() + b"}"


def priority_list_of(fragments: Iterable[bytes]) -> bytes:
    """HostPriorityList from `host_priority` fragments."""
    return b"[" + b",".join(fragments) + b"]"


# --- the extender's own verbs: /placeable and /freeing bodies -----------------------------------------------

MAX_FREEING_PODS = 10_000
_WORKLOADS = ("Deployment", "ReplicaSet", "StatefulSet", "Job", "PodTemplate", "LeaderWorkerSet")


def spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def pod_template(body: bytes) -> dict[str, Any]:
    """The pod template of a /placeable body: a Pod, a PodTemplateSpec (`{metadata, spec}`), or a workload
    holding one (`spec.template`, or `template` of a PodTemplate); WireError naming what is wrong."""
    doc = _json_object(body, "pod template", "a Pod, a PodTemplateSpec or a Deployment")
    kind = doc.get("kind")
    if kind == "PodTemplate":
        doc = doc.get("template")
    elif kind in _WORKLOADS:
        doc = spec_of(doc).get("template")
    elif kind not in (None, "Pod"):
        raise WireError(f"kind {str(kind)[:64]!r} holds no pod template: expected Pod or a workload")
    if not isinstance(doc, dict) or not isinstance(doc.get("spec"), dict):
        raise WireError(f"{kind or 'pod template'}: no pod spec (expected metadata and spec)")
    if not isinstance(doc.get("metadata", {}), dict):
        raise WireError("pod template: metadata must be an object")
    return doc


def freeing_pods(body: bytes) -> list[str]:
    """The pods of a /freeing body, `{"pods": ["namespace/name", ...]}`; WireError naming what is wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"malformed JSON: {exc}") from None
    pods = doc.get("pods") if isinstance(doc, dict) else None
    if not isinstance(pods, list) or not all(isinstance(p, str) and "/" in p for p in pods):
        raise WireError('expected {"pods": ["namespace/name", ...]}')
    if len(pods) > MAX_FREEING_PODS:
        raise WireError(f"{len(pods)} pods asked, at most {MAX_FREEING_PODS} per request")
    return pods
