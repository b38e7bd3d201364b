"""Kubernetes `resource.Quantity` canonical formatting (k8s.io/apimachinery/pkg/api/resource).

The rules mirrored here (quantity.go `CanonicalizeBytes`, amount.go `AsCanonicalBytes`, suffix.go):
- zero is "0";
- DecimalSI: strip trailing decimal zeros from the mantissa, then lower the exponent to a multiple of three
  (scaling the mantissa up) and pick the suffix n, u, m, "", k, M, G, T, P, E:
  "1.5" -> "1500m", "2000" -> "2k", "1500000" -> "1500k", "12" -> "12";
- BinarySI (only when asked): values with |v| < 1024 or that are not whole numbers are written DecimalSI;
  otherwise strip factors of 1024 and use Ki, Mi, Gi, Ti, Pi, Ei ("1536Mi").

The value is first cut to whole milli-units the way the real adapters build it:
prometheus-adapter (pkg/external-provider/metric_converter.go) and the custom-metrics-apiserver providers
write `*resource.NewMilliQuantity(int64(value*1000.0), resource.DecimalSI)`: a float64 product, then Go's
int64 conversion, which truncates toward zero. So 0.4219 is "421m", 1.005 is "1004m" (1.005 * 1000.0 is
1004.9999999999999 in binary floating point) and anything below one milli-unit is "0", exactly what the HPA
reads from those adapters (MilliValue of a milli-quantity is that integer). Only where int64 would overflow
(|value| >= 2**63 / 1000, about 9.2e15; Go's result there is meaningless) is the exact value kept, cut to
milli-units.

The HPA controller reads each item as `Quantity.MilliValue()`, an int64 of thousandths, and computes with it
(sums, ratios to the target's MilliValue): a value whose milli-value does not fit in int64 (|value| above
about 9.2e15) comes out wrapped or 0 there. `check_hpa_range` refuses those; the API answers them as a 503
naming the value, which the HPA reads as "keep the replicas".
"""

from __future__ import annotations

import math
from decimal import ROUND_DOWN, Decimal

_DECIMAL_SUFFIXES = {-9: "n", -6: "u", -3: "m", 0: "", 3: "k", 6: "M", 9: "G", 12: "T", 15: "P", 18: "E"}
_BINARY_SUFFIXES = {1: "Ki", 2: "Mi", 3: "Gi", 4: "Ti", 5: "Pi", 6: "Ei"}
_MILLI = Decimal("0.001")
_INT64 = 2**63


class QuantityError(ValueError):
    """The value has no Quantity form (NaN or infinite)."""


def _to_decimal(value: float | int | Decimal | str) -> Decimal:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise QuantityError(f"{value!r} cannot be written as a Kubernetes Quantity")
        # repr() is the shortest string that round-trips, so 0.1 stays 0.1 and not 0.1000000000000000055...
        return Decimal(repr(value))
    dec = Decimal(value)
    if not dec.is_finite():
        raise QuantityError(f"{value!r} cannot be written as a Kubernetes Quantity")
    return dec


def served_value(value: float | int | Decimal | str) -> Decimal:
    """The number a client reading the Quantity gets back: `value` cut to whole milli-units as
    `int64(value*1000.0)` does (module doc), which `format_quantity` writes and the HPA's MilliValue reads."""
    dec = _to_decimal(value)  # refuses NaN and infinities
    if isinstance(value, float) and not isinstance(value, bool):
        milli = value * 1000.0  # the float64 product, rounding included, as in Go
        if abs(milli) < _INT64:
            return Decimal(int(milli)).scaleb(-3)  # int() truncates toward zero, as Go's int64()
    return (dec * 1000).to_integral_value(rounding=ROUND_DOWN).scaleb(-3)


HPA_MAX_MILLI = _INT64 - 1  # the largest int64 MilliValue; -HPA_MAX_MILLI is the bound below


def check_hpa_range(value: float | int | Decimal | str) -> None:
    """QuantityError unless the HPA controller can read `value` (NaN, infinities, or a milli-value outside
    int64: see the module doc)."""
    milli = served_value(value).scaleb(3)
    if abs(milli) > HPA_MAX_MILLI:
        raise QuantityError(
            f"value {value!r} is beyond what the HPA can read: its milli-value must fit in int64 "
            f"(|value| <= {Decimal(HPA_MAX_MILLI).scaleb(-3)})"
        )


def format_quantity(value: float | int | Decimal | str, *, binary: bool = False) -> str:
    """Return the canonical Kubernetes Quantity string for `value`."""
    dec = served_value(value)
    if dec == 0:
        return "0"
    if binary and abs(dec) >= 1024 and dec == dec.to_integral_value():
        return _binary(int(dec))
    return _decimal(dec)


def _decimal(dec: Decimal) -> str:
    sign, digits, exponent = dec.as_tuple()
    mantissa = int("".join(map(str, digits)))
    exp = int(exponent)
    while mantissa % 10 == 0:
        mantissa //= 10
        exp += 1
    shift = exp % 3  # Python's modulo is never negative: always lowers the exponent to a multiple of 3
    mantissa *= 10**shift
    exp -= shift
    if exp > 18:  # beyond exa there is no suffix: keep "E" and grow the mantissa (still parses the same)
        mantissa *= 10 ** (exp - 18)
        exp = 18
    return f"{'-' if sign else ''}{mantissa}{_DECIMAL_SUFFIXES[exp]}"


def _binary(value: int) -> str:
    sign = "-" if value < 0 else ""
    mantissa, power = abs(value), 0
    while mantissa % 1024 == 0 and power < 6:
        mantissa //= 1024
        power += 1
    return f"{sign}{mantissa}{_BINARY_SUFFIXES.get(power, '')}"
