"""toposcale.core.quantity: the one Kubernetes Quantity parser (k8s.io/apimachinery resource.ParseQuantity
and MilliValue), shared by the extender's pod GPU counts, its DRA predictions and the demo's HPA. Each user's
own tests (tests/extender/test_pod_shapes.py, tests/extender/test_dra*.py, tests/demo/test_hpa.py) pin what
it makes of the errors; these pin the parser."""

from __future__ import annotations

from fractions import Fraction

import pytest

from toposcale.core.quantity import MAX_CHARS, MAX_EXPONENT, QuantityError, milli_value, parse_quantity


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("4", 4),
        ("0", 0),
        ("-2", -2),
        ("+3", 3),
        ("1.5", Fraction(3, 2)),
        ("5.", 5),
        (".5", Fraction(1, 2)),
        ("100m", Fraction(1, 10)),
        ("1n", Fraction(1, 10**9)),
        ("2u", Fraction(2, 10**6)),
        ("1k", 1000),
        ("1.5G", 1_500_000_000),
        ("1E", 10**18),
        ("80Gi", 80 * 2**30),
        ("81559Mi", 81559 * 2**20),
        ("1Ei", 2**60),
        ("2e3", 2000),
        ("1E3", 1000),
        ("1e+3", 1000),
        ("25e-2", Fraction(1, 4)),
        (f"1e{MAX_EXPONENT}", 10**MAX_EXPONENT),
        ("9" * MAX_CHARS, int("9" * MAX_CHARS)),
    ],
)
def test_every_form_apimachinery_parses(text: str, want: Fraction | int) -> None:
    assert parse_quantity(text) == want


@pytest.mark.parametrize(
    "bad",
    [
        "",
        " 4",  # ParseQuantity takes no spaces (UnmarshalJSON trims: the caller strips)
        "4 ",
        "4\n",  # fullmatch: "$" would take a trailing newline
        "abc",
        "1.2.3",
        "5 m",
        "1Z",
        "1kk",
        "1KiB",
        "1ki",
        "\u0661\u0662",  # Arabic-Indic digits: ASCII only
        "1e\u0663",
        f"1e{MAX_EXPONENT + 1}",
        "1e999999999",  # must not build a billion-digit integer
        "1" + "0" * MAX_CHARS,
    ],
)
def test_what_is_not_a_quantity(bad: str) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(bad)


@pytest.mark.parametrize("bad", [None, 4, 4.0, b"4", ["4"]])
def test_only_text_is_parsed(bad: object) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "milli"),
    [("4", 4000), ("500m", 500), ("0.5", 500), ("1n", 1), ("0.0001", 1), ("1Ki", 1_024_000), ("1e3", 10**6)],
)
def test_milli_value_rounds_up(text: str, milli: int) -> None:
    assert milli_value(text) == milli


def test_a_quantity_error_is_a_value_error() -> None:
    # callers that already catch ValueError keep working
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity("twelve")
