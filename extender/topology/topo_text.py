"""Parse the text of `nvidia-smi topo -m` into a `Topology`.

Real outputs differ by driver version and by how they were copied: tab- or space-separated, header row
indented or not, ANSI underline codes around the header, a leading `$ nvidia-smi topo -m` or
`GPU Topology:` line, `#` comment lines, NIC / mlx5 rows and columns, trailing `CPU Affinity`,
`NUMA Affinity` and `GPU NUMA ID` columns (any subset, empty cells between them), `Legend:` and
`NIC Legend:` blocks. Only the GPU x GPU part of the matrix and the GPUs' CPU / NUMA affinity are kept.

`NUMA Affinity` of `N/A` (or anything that is not one node number) becomes numa -1 ("unknown", never node 0);
the CPU affinity string is kept as printed, so scoring can still tell sockets apart on boxes where nvidia-smi
knows the CPU affinity but not the NUMA node. `GPU NUMA ID` is the GPU's own memory node (Grace Hopper), not
the CPU side, so it is not used as the GPU's NUMA node.

Pure function, no I/O. Malformed text raises `TopoTextError` (a `ValueError`) naming the line at fault.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .model import GPU, SELF, Topology, is_valid_link

__all__ = ["TopoTextError", "parse_topo_text"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Matched whole (fullmatch) and ASCII digits only ("\d" also takes "٣", which int() then reads as 3).
_GPU_NAME = re.compile(r"GPU([0-9]+)")
_CPUSET = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*")
# Trailing column labels, as tuples of header words. Order of detection matters: "GPU NUMA ID" starts with a
# word that would otherwise look like a device column prefix.
_LABELS: tuple[tuple[str, ...], ...] = (("CPU", "Affinity"), ("NUMA", "Affinity"), ("GPU", "NUMA", "ID"))
# Older drivers printed SOC for what is now SYS (PCIe plus the SMP link between sockets).
_ALIASES = {"SOC": "SYS"}


class TopoTextError(ValueError):
    """Text that is not a readable `nvidia-smi topo -m` matrix."""


def _tokens(line: str) -> list[str]:
    return _ANSI.sub("", line).split()


def _split_header(tokens: list[str]) -> tuple[list[str], list[str]]:
    """Header tokens -> (device column names, trailing labels such as "CPU Affinity")."""
    devices: list[str] = []
    labels: list[str] = []
    i = 0
    while i < len(tokens):
        for words in _LABELS:
            if tuple(tokens[i : i + len(words)]) == words:
                labels.append(" ".join(words))
                i += len(words)
                break
        else:
            if labels:
                # An unknown trailing label word (a future driver's extra column): keep it as its own label
                # so the positions of the known ones still line up.
                labels.append(tokens[i])
            else:
                devices.append(tokens[i])
            i += 1
    return devices, labels


def _is_row(tokens: list[str]) -> bool:
    # Every matrix row holds its own diagonal "X"; the header never does.
    return len(tokens) >= 2 and SELF in tokens[1:]


def _numa(value: str | None) -> int:
    if value is None:
        return -1
    return int(value) if value.isascii() and value.isdigit() else -1


def parse_topo_text(
    text: str,
    resource: str = "nvidia.com/gpu",
    ids: Sequence[str] | Mapping[int, str] | None = None,
) -> Topology:
    """The GPU topology printed by `nvidia-smi topo -m`.

    `ids` gives the device-plugin IDs when the caller knows them (by GPU index: a sequence indexed by the
    nvidia-smi index, or a mapping index -> id); otherwise each GPU's id is `GPU<index>`.
    """
    header: list[str] | None = None
    labels: list[str] = []
    rows: dict[str, tuple[int, list[str]]] = {}  # row name -> (line number, tokens after the name)
    for lineno, raw in enumerate(text.splitlines(), start=1):
        stripped = _ANSI.sub("", raw).strip()
        if not stripped or stripped.startswith(("#", "$")):
            continue
        if stripped.rstrip(":").lower() in ("legend", "nic legend"):
            break  # the legends follow the matrix; nothing after them is a row
        toks = _tokens(raw)
        if header is None:
            if _is_row(toks):
                raise TopoTextError(f"line {lineno}: matrix row before the header row (GPU0 GPU1 ...)")
            devices, found_labels = _split_header(toks)
            if devices and _GPU_NAME.fullmatch(devices[0]):
                header, labels = devices, found_labels
            continue  # anything else before the header ("GPU Topology:", banners) is not ours
        if not _is_row(toks):
            continue
        name = toks[0]
        if name in rows:
            raise TopoTextError(f"line {lineno}: row {name} appears twice")
        rows[name] = (lineno, toks[1:])

    if header is None:
        raise TopoTextError("no header row (GPU0 GPU1 ...) found: is this `nvidia-smi topo -m` output?")
    if len(set(header)) != len(header):
        raise TopoTextError(f"header row names a column twice: {' '.join(header)}")

    gpu_cols = [(c, int(m.group(1))) for c, m in ((c, _GPU_NAME.fullmatch(c)) for c in header) if m]
    ndev = len(header)
    gpus: list[GPU] = []
    matrix: list[list[str]] = []
    unknown_numa: list[str] = []
    unknown_cpus: list[str] = []
    for name, index in gpu_cols:
        if name not in rows:
            raise TopoTextError(f"header names {name} but there is no {name} row")
        lineno, cells = rows[name]
        if len(cells) < ndev:
            raise TopoTextError(
                f"line {lineno}: row {name} has {len(cells)} cells, the header names {ndev} devices"
            )
        codes, extra = cells[:ndev], cells[ndev:]
        row: list[str] = []
        for col, code in zip(header, codes, strict=True):
            if _GPU_NAME.fullmatch(col) is None:
                continue  # NIC / mlx5 columns are not part of the GPU matrix
            code = _ALIASES.get(code, code)
            if not is_valid_link(code):
                raise TopoTextError(f"line {lineno}: {name}/{col}: {code!r} is not a topo -m link code")
            row.append(code)
        values = dict(zip(labels, extra, strict=False))
        numa = _numa(values.get("NUMA Affinity"))
        cpus = values.get("CPU Affinity")
        if cpus is not None and not _CPUSET.fullmatch(cpus):
            cpus = None
        gpu_id = f"GPU{index}"
        if ids is not None:
            try:
                gpu_id = ids[index]
            except (IndexError, KeyError):
                raise TopoTextError(f"no device id given for GPU index {index}") from None
        if numa < 0:
            unknown_numa.append(name)
        if cpus is None:
            unknown_cpus.append(name)
        gpus.append(GPU(id=gpu_id, index=index, numa=numa, cpus=cpus))
        matrix.append(row)

    unknown = ["uuid", "pci", "model", "memory"]  # topo -m does not print them
    if unknown_numa:
        unknown.append(f"numa: nvidia-smi printed no NUMA node for {', '.join(unknown_numa)}")
    if unknown_cpus:
        unknown.append(f"cpus: nvidia-smi printed no CPU affinity for {', '.join(unknown_cpus)}")
    try:
        return Topology(gpus=gpus, links=matrix, resource=resource, unknown=unknown)
    except ValueError as exc:
        raise TopoTextError(f"GPU matrix: {exc}") from None
