"""Canonical Kubernetes Quantity strings (k8s.io/apimachinery resource.Quantity CanonicalizeBytes) of the
value the real adapters serve: `resource.NewMilliQuantity(int64(value*1000.0), resource.DecimalSI)`
(prometheus-adapter's pkg/external-provider/metric_converter.go)."""

from __future__ import annotations

import math
import random
import re
from decimal import Decimal

import pytest
from toposcale.adapter.quantity import QuantityError, format_quantity, served_value

CASES = [
    (0, "0"), (0.0, "0"), (-0.0, "0"), (1, "1"), (12, "12"), (999, "999"), (1000, "1k"), (1500, "1500"),
    (2000, "2k"), (1_500_000, "1500k"), (1e6, "1M"), (1e9, "1G"), (1e12, "1T"), (1e15, "1P"), (1e18, "1E"),
    (1e21, "1000E"), (12_345_678, "12345678"), (123_456_789_000, "123456789k"), (100.0, "100"),
    (1.5, "1500m"), (0.5, "500m"), (0.1, "100m"), (0.3, "300m"), (2.5, "2500m"), (0.001, "1m"),
    (1.001, "1"),  # 1.001 * 1000.0 == 1000.9999999999999: Go's adapters serve 1000m, canonically "1"
    (0.425, "425m"), (4.0, "4"), (-1.5, "-1500m"), (-2000, "-2k"),
    # finer than a milli-unit: int64(value*1000.0) truncates toward zero, as the Go adapters do
    (0.0001, "0"), (1e-9, "0"), (0.0015, "1m"), (0.4219, "421m"), (1 / 3, "333m"), (-0.0001, "0"),
    (-0.0015, "-1m"), (0.9999, "999m"),
    # the float64 product, not the decimal one: 1.005 * 1000.0 == 1004.9999999999999 in Go as in Python
    (1.005, "1004m"), (1.015, "1014m"), (0.57, "570m"),
    # int64 milli-units overflow past ~9.2e15 (Go's answer there is meaningless): the exact value is kept
    (1e16, "10P"), (-12345678901234567.0, "-12345678901234568"),
    # exact decimal inputs are cut to milli-units the same way
    (Decimal("1.000"), "1"), (Decimal("0.0250"), "25m"), ("7.5", "7500m"), (Decimal("0.0019"), "1m"),
]


@pytest.mark.parametrize(("value", "want"), CASES)
def test_decimal_si(value: object, want: str) -> None:
    assert format_quantity(value) == want  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "want"), [
    (1536 * 1024 * 1024, "1536Mi"), (1024, "1Ki"), (1023, "1023"), (1025, "1025"), (1000, "1k"),
    (2**30, "1Gi"), (2**60, "1Ei"), (2**70, "1024Ei"), (2048.5, "2048500m"), (0, "0"), (-2048, "-2Ki"),
    (0.5, "500m"),
])
def test_binary_si_only_when_asked(value: float, want: str) -> None:
    assert format_quantity(value, binary=True) == want


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, Decimal("NaN"), "inf"])
def test_no_quantity_for_nan_or_infinity(bad: object) -> None:
    with pytest.raises(QuantityError):
        format_quantity(bad)  # type: ignore[arg-type]


_SUFFIX = {"m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_CANONICAL = re.compile(r"^(-?)(0|[1-9][0-9]*)(m|k|M|G|T|P|E)?$")


def parse(q: str) -> Decimal:
    m = _CANONICAL.match(q)
    assert m, f"{q!r} is not canonical DecimalSI"
    return Decimal(m.group(1) + m.group(2)).scaleb(_SUFFIX[m.group(3) or ""])


def test_round_trip_and_canonical_form_over_many_values() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        x = rng.choice([rng.uniform(-1, 1), rng.uniform(0, 1e4), rng.expovariate(1e-6), rng.random() * 1e-3,
                        float(rng.randrange(0, 10**12))])
        q = format_quantity(x)
        milli = x * 1000.0  # what Go computes for int64(value*1000.0): float64 product, truncated
        want = Decimal(math.trunc(milli)).scaleb(-3)
        assert parse(q) == want, (x, q)
        # never more than one milli-unit from the exact value, and never further from zero than it
        exact = Decimal(repr(x))
        assert abs(exact - want) < Decimal("0.001") + abs(exact) * Decimal("1e-15"), (x, q)
        mantissa, suffix = _CANONICAL.match(q).group(2, 3)  # type: ignore[union-attr]
        if q != "0" and suffix != "E":
            # the largest suffix is used: a mantissa ending in 000 means a bigger suffix was possible
            assert not mantissa.endswith("000"), (x, q)


@pytest.mark.parametrize(("value", "want"), CASES)
def test_served_value_is_the_number_the_quantity_string_holds(value: object, want: str) -> None:
    # /metrics' served-value gauge shows this number: exactly what a client parsing the Quantity reads
    assert served_value(value) == parse(want)  # type: ignore[arg-type]


def test_hpa_range_is_the_int64_milli_value() -> None:
    # Quantity.MilliValue() is an int64: the largest readable value is (2**63 - 1) / 1000.
    from toposcale.adapter.quantity import check_hpa_range

    for ok in ("9223372036854775.807", "-9223372036854775.807", 9.2e15, 0.0004, "1e15", 0):
        check_hpa_range(ok)
    for bad in ("9223372036854775.808", "-9223372036854775.808", 1e300, -1e16, "1e19"):
        with pytest.raises(QuantityError, match="beyond what the HPA can read"):
            check_hpa_range(bad)
    assert format_quantity("9223372036854775.807") == "9223372036854775807m"
