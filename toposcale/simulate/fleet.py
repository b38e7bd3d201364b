"""Fleet files: which node topologies, how many of each.

```yaml
nodes:
  - topology: ../topologies/dgx-a100-nvswitch-8gpu.txt   # relative to this file
    count: 100
    name: dgx-a100                                        # optional, defaults to the file's stem
```

A topology file is either `nvidia-smi topo -m` text (parsed by the extender's own parser) or the agent's
`toposcale.io/gpu-topology` annotation as JSON: the annotation document itself, or a whole Node object
(`kubectl get node -o json`) carrying it. Every problem raises `FleetError` naming the file and the entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from toposcale.extender.topology.annotations import TOPOLOGY_ANNOTATION, AnnotationError, topology_from_doc
from toposcale.extender.topology.model import Topology
from toposcale.extender.topology.topo_text import TopoTextError, parse_topo_text
from toposcale.yamltext import load_yaml

MAX_FILE_BYTES = 1 << 20  # a fleet or topology file is a few KiB; anything near this is a wrong path
MAX_NODES = 100_000
MAX_GPUS_PER_NODE = 16  # the replay and the device-plugin prediction enumerate subsets of a node


class FleetError(ValueError):
    """A fleet file (or a topology it names) that cannot be used, with a message a person can act on."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    topology: str = Field(min_length=1)
    count: int = Field(ge=1, le=MAX_NODES)
    name: str | None = Field(default=None, min_length=1, max_length=63)


class _FleetDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    nodes: list[_Entry] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class NodeType:
    name: str
    topology: Topology
    count: int
    source: str  # the topology file, as written in the fleet file

    @property
    def gpus(self) -> int:
        return len(self.topology)


@dataclass(frozen=True, slots=True)
class Fleet:
    types: tuple[NodeType, ...]

    @property
    def nodes(self) -> int:
        return sum(t.count for t in self.types)

    @property
    def gpus(self) -> int:
        return sum(t.count * t.gpus for t in self.types)

    @property
    def max_node_gpus(self) -> int:
        return max(t.gpus for t in self.types)


def _read_bounded(path: Path, what: str) -> str:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise FleetError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise FleetError(f"{what}: {path} is not a file")
    if size > MAX_FILE_BYTES:
        raise FleetError(f"{what}: {path} is {size} bytes, more than the {MAX_FILE_BYTES} allowed")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetError(f"{what}: cannot read {path} as UTF-8 text: {exc}") from None


def topology_from_text(text: str, what: str) -> Topology:
    """A topology from either `nvidia-smi topo -m` text or the agent's annotation JSON."""
    if text.lstrip().startswith("{"):
        try:
            doc: Any = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply for json
            raise FleetError(f"{what}: looks like JSON but is not: {exc}") from None
        if isinstance(doc, dict) and "metadata" in doc:  # a whole Node object
            meta = doc["metadata"] if isinstance(doc["metadata"], dict) else {}
            annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
            value = annotations.get(TOPOLOGY_ANNOTATION)
            if value is None:
                raise FleetError(f"{what}: the Node object has no {TOPOLOGY_ANNOTATION} annotation")
            doc = value
        try:
            topo = topology_from_doc(doc)
        except AnnotationError as exc:
            raise FleetError(f"{what}: {exc}") from None
    else:
        try:
            topo = parse_topo_text(text)
        except TopoTextError as exc:
            raise FleetError(f"{what}: {exc}") from None
    if len(topo) == 0:
        raise FleetError(f"{what}: the topology has no GPUs")
    if len(topo) > MAX_GPUS_PER_NODE:
        raise FleetError(f"{what}: {len(topo)} GPUs on one node, more than the {MAX_GPUS_PER_NODE} supported")
    return topo


def _describe(err: dict[str, Any]) -> str:
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    return f"{loc or '(document)'}: {err['msg']}"


def parse_fleet(text: str, base: Path, what: str = "fleet") -> Fleet:
    """A fleet from YAML text; topology paths are resolved against `base` (the fleet file's folder)."""
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        raise FleetError(f"{what}: not YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise FleetError(f"{what}: expected a mapping with a `nodes:` list, got {type(raw).__name__}")
    try:
        doc = _FleetDoc.model_validate(raw)
    except ValidationError as exc:
        raise FleetError(f"{what}: " + "; ".join(_describe(e) for e in exc.errors()[:5])) from None
    total = sum(e.count for e in doc.nodes)
    if total > MAX_NODES:
        raise FleetError(f"{what}: {total} nodes, more than the {MAX_NODES} a run supports")
    types: list[NodeType] = []
    names: set[str] = set()
    cache: dict[Path, Topology] = {}
    for i, entry in enumerate(doc.nodes):
        path = (base / entry.topology).resolve()
        where = f"{what}: nodes[{i}].topology {entry.topology!r}"
        if path not in cache:
            cache[path] = topology_from_text(_read_bounded(path, where), where)
        name = entry.name or Path(entry.topology).stem
        if name in names:
            raise FleetError(
                f"{what}: nodes[{i}]: name {name!r} is used twice; give the entries distinct names"
            )
        names.add(name)
        types.append(NodeType(name=name, topology=cache[path], count=entry.count, source=entry.topology))
    return Fleet(types=tuple(types))


def load_fleet(path: str | Path) -> Fleet:
    p = Path(path)
    return parse_fleet(_read_bounded(p, "fleet"), p.resolve().parent, what=str(path))
