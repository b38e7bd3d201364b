"""The one Kubernetes Quantity parser (k8s.io/apimachinery/pkg/api/resource: ParseQuantity, MilliValue).

A Quantity is `<sign><number><suffix>`: the number ASCII digits with at most one decimal point ("4", "1.5",
"5.", ".5"), the suffix a binary SI one (Ki, Mi, Gi, Ti, Pi, Ei: powers of 1024), a decimal SI one (n, u, m,
"", k, M, G, T, P, E) or a decimal exponent (e3, E-2, e+6). The whole text must match: ParseQuantity takes no
spaces (" 4" is an error), while Quantity.UnmarshalJSON trims them first (strings.TrimSpace): callers reading
a Quantity from JSON written by a person pass `text.strip()`.

Values are exact (`Fraction`). Text longer than MAX_CHARS or a decimal exponent beyond +-MAX_EXPONENT is
refused: any client's text ("1e99999999") must not make exact arithmetic build a number of a billion digits,
and nothing real comes near (10^18 is `E`; the apiserver itself caps a Quantity's precision).

Users: the extender's pod GPU counts (extender/pods.py) and DRA capacities and CEL `quantity()` literals
(extender/topology/dra.py), and the demo's HPA reading the adapter's values (toposcale/demo/hpa.py). The
adapter writes Quantities (adapter/quantity.py, format_quantity); it never parses one.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

MAX_CHARS = 64
MAX_EXPONENT = 64

# Matched whole (fullmatch: "^...$" with re.match would take "4\n"), ASCII digits only ([0-9], not \d).
_QUANTITY = re.compile(
    r"([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+|[numkMGTPE]?)"
)
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


class QuantityError(ValueError):
    """The text is not a Kubernetes Quantity, or is one beyond the modelled range."""


def parse_quantity(text: str, *, trim: bool = False, error: type[Exception] = QuantityError) -> Fraction:
    """The exact value of Quantity `text` ("80Gi", "81559Mi", "1.5T", "100m", "1e3"); `error` (QuantityError
    unless a caller names its own, e.g. the DRA predictor's DraUnknown) when it is not one (or is beyond
    MAX_CHARS / MAX_EXPONENT). `trim`: spaces around it are dropped first, as Quantity.UnmarshalJSON does
    (strings.TrimSpace) before ParseQuantity, for a quantity read from a JSON document."""
    if not isinstance(text, str):
        raise error(f"{str(text)[:MAX_CHARS]!r} is not a Kubernetes quantity")
    if trim:
        text = text.strip()
    m = _QUANTITY.fullmatch(text) if len(text) <= MAX_CHARS else None
    if m is None:
        raise error(f"{text[:MAX_CHARS]!r} is not a Kubernetes quantity")
    sign, number, suffix = m.groups()
    value = Fraction(number.removesuffix(".") or "0")
    if suffix in _BINARY:
        value *= 2 ** _BINARY[suffix]
    else:
        exponent = _DECIMAL[suffix] if suffix in _DECIMAL else int(suffix[1:])
        if abs(exponent) > MAX_EXPONENT:
            raise error(f"quantity {text!r} is beyond the modelled range (exponent {exponent})")
        value *= Fraction(10) ** exponent
    return -value if sign == "-" else value


def milli_value(text: str, *, trim: bool = False, error: type[Exception] = QuantityError) -> int:
    """`Quantity.MilliValue()` of `text`: the value in thousandths, rounded up (ceil), as the HPA controller
    reads a metric value (never negative there). `trim` and `error` as for parse_quantity."""
    return math.ceil(parse_quantity(text, trim=trim, error=error) * 1000)
