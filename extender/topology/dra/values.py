"""The predictor's vocabulary: the driver's names, device ids, the two ways a prediction gives up
(`DraUnknown`: not modelled; `CelRuntimeError`: the real allocator errs), and the values a ResourceSlice
carries (quantities, versions, typed attributes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from toposcale.core.quantity import parse_quantity as core_parse_quantity

DRIVER = "gpu.nvidia.com"
PCIE_ROOT = "resource.kubernetes.io/pcieRoot"
EXTENDED_RESOURCE_CLAIM_ANNOTATION = "resource.kubernetes.io/extended-resource-claim"

DeviceID = tuple[str, str, str]  # (driver, pool, device)
Obj = dict[str, Any]


class DraUnknown(Exception):
    """Input the predictor does not model exactly: the node's prediction is unknown (neutral score)."""


class CelRuntimeError(Exception):
    """A selector that the real allocator evaluates to an error (the scheduler then fails the pod)."""


# A device's capacity or a selector's quantity(): toposcale.core.quantity's parser on the JSON text (trimmed
# as Quantity.UnmarshalJSON trims it); not a quantity, or beyond the modelled range ("1e99999999" made
# Fraction compute a 10^8-digit number, holding the extender, issue 28), is DraUnknown.
parse_quantity = partial(core_parse_quantity, trim=True, error=DraUnknown)


@dataclass(frozen=True, slots=True)
class Version:
    text: str


def _attr_value(name: str, attr: Any) -> Any:
    if not isinstance(attr, Mapping):
        raise DraUnknown(f"attribute {name}: not an object")
    kinds = [k for k in ("string", "int", "bool", "version") if k in attr]
    if len(kinds) != 1:
        raise DraUnknown(f"attribute {name}: expected exactly one of string/int/bool/version")
    v = attr[kinds[0]]
    if kinds[0] == "version":
        return Version(str(v))
    if kinds[0] == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            raise DraUnknown(f"attribute {name}: int value {v!r}")
        return v
    if kinds[0] == "bool":
        if not isinstance(v, bool):
            raise DraUnknown(f"attribute {name}: bool value {v!r}")
        return v
    if not isinstance(v, str):
        raise DraUnknown(f"attribute {name}: string value {v!r}")
    return v


def _split_name(name: str, driver: str) -> tuple[str, str]:
    """A qualified name as the CEL environment splits it: no domain means the driver's."""
    if "/" in name:
        domain, _, ident = name.partition("/")
        return domain, ident
    return driver, name
