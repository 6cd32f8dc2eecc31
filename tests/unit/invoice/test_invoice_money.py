"""Parsing numbers and the exact money operations."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_invoice.invoice.money import allocate, cents, decimals, round_quantity, to_decimal

D = Decimal


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.1, D("0.1")),  # repr, not the binary expansion 0.1000000000000000055…
        (0.1 + 0.2, D("0.30000000000000004")),
        (3099.0, D("3099.0")),
        (1e16, D("1E+16")),
        (7, D(7)),
        (D("1.50"), D("1.50")),
        (" 12.5 ", D("12.5")),
        ("-3", D(-3)),
        ("1e3", D("1E+3")),
    ],
)
def test_to_decimal_accepts(value: object, expected: Decimal) -> None:
    result = to_decimal(value)
    assert result == expected and str(result) == str(expected)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (True, "got True"),
        (False, "got False"),
        (None, "got None"),
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        (float("-inf"), "not a finite number"),
        (D("NaN"), "not a finite number"),
        (D("sNaN"), "not a finite number"),
        ("Infinity", "not a finite number"),
        ("", "is not a number"),
        ("1,5", "is not a number"),
        ([1], "got list"),
    ],
)
def test_to_decimal_rejects_naming_the_field(value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=r"^unit_price: ") as err:
        to_decimal(value, field="unit_price")
    assert fragment in str(err.value)


@settings(max_examples=200, deadline=None)
@given(st.decimals(min_value=-(10**12), max_value=10**12, places=8).map(float))
def test_float_goes_through_its_shortest_repr(value: float) -> None:
    assert to_decimal(value) == D(repr(value))


def test_cents_rounds_half_up() -> None:
    assert [cents(D(x)) for x in ("0.005", "0.015", "-0.005", "2.675", "1.0049999")] == [
        D("0.01"),
        D("0.02"),
        D("-0.01"),
        D("2.68"),
        D("1.00"),
    ]


def test_cents_does_not_round_twice() -> None:
    # 29 significant digits: the default 28-digit context would make this …005 and round up.
    assert cents(D("123456789012.004999999999999999")) == D("123456789012.00")


def test_decimals_and_round_quantity() -> None:
    assert decimals(D("1.2300")) == 2 and decimals(D("1E+3")) == 0
    assert round_quantity(D("1.123456785")) == D("1.12345679")
    assert round_quantity(D("1.10000000000")) == D("1.10000000000")  # fits: unchanged


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        ("100", ["100", "200", "300"], ["16.67", "33.33", "50.00"]),
        ("0.02", ["1", "1", "1"], ["0.01", "0.01", "0.00"]),  # ties: earlier line first
        ("0.01", ["1", "3"], ["0.00", "0.01"]),
        ("10", ["0", "5"], ["0.00", "10.00"]),
        ("0", ["5", "5"], ["0", "0"]),
    ],
)
def test_allocate(total: str, weights: list[str], expected: list[str]) -> None:
    assert allocate(D(total), [D(w) for w in weights]) == [D(e) for e in expected]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 10**8), min_size=1, max_size=50).filter(any),
    st.integers(0, 100),
)
def test_allocate_adds_up_and_never_exceeds_a_weight(weights: list[int], pct: int) -> None:
    amounts = [D(w).scaleb(-2) for w in weights]
    total = cents(sum(amounts, D(0)) * pct / 100)
    shares = allocate(total, amounts)
    assert sum(shares) == total
    for share, amount in zip(shares, amounts, strict=True):
        assert 0 <= share <= amount
        assert abs(share - total * amount / sum(amounts)) < D("0.01")
