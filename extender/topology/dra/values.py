"""The predictor's vocabulary: the driver's names, device ids, the two ways a prediction gives up
(`DraUnknown`: not modelled; `CelRuntimeError`: the real allocator errs), and the values a ResourceSlice
carries (quantities, versions, typed attributes)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

DRIVER = "gpu.nvidia.com"
PCIE_ROOT = "resource.kubernetes.io/pcieRoot"
EXTENDED_RESOURCE_CLAIM_ANNOTATION = "resource.kubernetes.io/extended-resource-claim"

DeviceID = tuple[str, str, str]  # (driver, pool, device)
Obj = dict[str, Any]


class DraUnknown(Exception):
    """Input the predictor does not model exactly: the node's prediction is unknown (neutral score)."""


class CelRuntimeError(Exception):
    """A selector that the real allocator evaluates to an error (the scheduler then fails the pod)."""


_QTY = re.compile(r"([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+|[numkMGTPE]?)")
_BIN = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DEC = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


# What a device's capacity or a selector's quantity() can be: far beyond any real one (10^18 is `E`), and
# small enough that exact arithmetic stays cheap. A ResourceSlice or claim is any client's text: "1e99999999"
# made Fraction compute a 10^8-digit number, holding the extender (issue 28).
_QTY_MAX_DIGITS = 64
_QTY_MAX_EXPONENT = 64


def parse_quantity(text: str) -> Fraction:
    """A Kubernetes resource.Quantity string ("80Gi", "81559Mi", "1.5T", "100m", "1e3") as an exact number.
    Mantissas over 64 digits and decimal exponents beyond ±64 are not modelled (DraUnknown)."""
    m = _QTY.fullmatch(text.strip()) if isinstance(text, str) and len(text) <= 256 else None
    if m is None:
        raise DraUnknown(f"{str(text)[:40]!r} is not a quantity")
    sign, num, suffix = m.groups()
    exponent = 0 if suffix in _BIN else _DEC[suffix] if suffix in _DEC else int(suffix[1:])
    if len(num) > _QTY_MAX_DIGITS or abs(exponent) > _QTY_MAX_EXPONENT:
        raise DraUnknown(f"quantity {text[:40]!r} is out of the modelled range")
    v = Fraction(num)
    if suffix in _BIN:
        v *= 1024 ** _BIN[suffix]
    else:
        v *= Fraction(10) ** exponent
    return -v if sign == "-" else v


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
