"""Red-letter lines: full, partial by quantity or amount, cumulative limits, reason rules."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_invoice.errors import InvalidOrder
from cdc_invoice.invoice.compute import build_invoices
from cdc_invoice.invoice.model import Buyer, InvoiceLine, LineProperty, Order, OrderLine, Seller
from cdc_invoice.invoice.reversal import RedRequestLine, red_lines

D = Decimal
SELLER = Seller("main", "339902999999789113", "航信培训企业", clerk="张三")
GOODS, SERVICE = "1090511030000000000", "3049900000000000000"


def blue_invoice() -> tuple[InvoiceLine, ...]:
    """1: 2 × 3099 · 2+3: 1 × 3099 less 99 · 4: 10 h consulting at 100 (6 %), all tax-inclusive."""
    lines = (
        OrderLine(1, "PC", "电脑", GOODS, D("0.13"), D(2), D(3099)),
        OrderLine(2, "PC", "电脑", GOODS, D("0.13"), D(1), D(3099), discount=D(99)),
        OrderLine(3, "CONS", "咨询服务", SERVICE, D("0.06"), D(10), D(100)),
    )
    (draft,) = build_invoices(Order("shop", "SO1", Buyer("杭州某某"), lines), SELLER)
    assert [x.property for x in draft.lines] == [0, 2, 1, 0]
    return draft.lines


BLUE = blue_invoice()


def summary(lines: list[InvoiceLine]) -> list[tuple[object, ...]]:
    return [
        (x.line_no, x.quantity, x.unit_price, x.amount_excl_tax, x.tax, x.amount_incl_tax)
        for x in lines
    ]


def test_full_reversal_nets_the_discount_into_the_discounted_line() -> None:
    reds = red_lines(BLUE, None, "2")
    assert summary(reds) == [
        (1, D(-2), D(3099), D("-5484.96"), D("-713.04"), D("-6198.00")),
        (2, D(-1), D("3000.00"), D("-2654.87"), D("-345.13"), D("-3000.00")),
        (4, D(-10), D(100), D("-943.40"), D("-56.60"), D("-1000.00")),
    ]
    assert all(x.property == LineProperty.NORMAL for x in reds)
    assert sum(x.amount_incl_tax for x in reds) == -sum(x.amount_incl_tax for x in BLUE)
    assert [x.source_line_no for x in reds] == [1, 2, 3]


def test_english_reason_names() -> None:
    assert red_lines(BLUE, None, "invoicing_error") == red_lines(BLUE, None, "2")


def test_partial_by_quantity_then_the_rest_adds_up_exactly() -> None:
    first = red_lines(BLUE, [RedRequestLine(4, quantity=D(3))], "service_termination")
    # 3/10 of 1000.00 = 300.00; 300/1.06 = 283.0189 -> 283.02
    assert summary(first) == [(4, D(-3), D(100), D("-283.02"), D("-16.98"), D("-300.00"))]
    rest = red_lines(BLUE, [RedRequestLine(4, quantity=D(7))], "3", already_reversed=first)
    assert summary(rest) == [(4, D(-7), D(100), D("-660.38"), D("-39.62"), D("-700.00"))]
    blue = BLUE[3]
    assert first[0].tax + rest[0].tax == -blue.tax
    assert first[0].amount_excl_tax + rest[0].amount_excl_tax == -blue.amount_excl_tax


def test_partial_sales_return_of_a_discounted_line_uses_the_net_price() -> None:
    (red,) = red_lines(BLUE, [RedRequestLine(2, quantity=D("0.5"))], "sales_return")
    assert summary([red]) == [
        (2, D("-0.5"), D("3000.00"), D("-1327.43"), D("-172.57"), D("-1500.00"))
    ]


def test_partial_by_amount_is_an_allowance_without_quantity() -> None:
    (red,) = red_lines(BLUE, [RedRequestLine(1, amount=D(100))], "4")
    # 100/1.13 = 88.4956 -> 88.50
    assert summary([red]) == [(1, None, None, D("-88.50"), D("-11.50"), D("-100.00"))]


def test_service_termination_by_amount_derives_the_quantity() -> None:
    (red,) = red_lines(BLUE, [RedRequestLine(4, amount=D(250))], "3")
    assert summary([red]) == [(4, D("-2.5"), D(100), D("-235.85"), D("-14.15"), D("-250.00"))]


def test_full_reversal_after_a_partial_reverses_what_remains() -> None:
    goods = BLUE[:3]
    first = red_lines(goods, [RedRequestLine(1, quantity=D(1))], "1")
    rest = red_lines(goods, None, "1", already_reversed=first)
    assert [(x.line_no, x.quantity) for x in rest] == [(1, D(-1)), (2, D(-1))]
    total = sum(x.amount_incl_tax for x in first + rest)
    assert total == -sum(x.amount_incl_tax for x in goods)


def test_sales_return_after_an_allowance_keeps_the_blue_unit_price() -> None:
    """“红冲原因”为“销货退回”时，只允许修改数量，不允许修改单价 (乐企 V4.000).

    Blue line 1: 2 × 3099.00 incl. tax = 6198.00; an allowance of 198.00 leaves 6000.00. One unit
    returned is 1 × 3099.00 = 3099.00 (not 6000.00 / 2 = 3000.00 a unit, which changes the price).
    """
    allowance = red_lines(BLUE, [RedRequestLine(1, amount=D("198.00"))], "4")
    (ret,) = red_lines(BLUE, [RedRequestLine(1, quantity=D(1))], "1", allowance)
    assert (ret.amount_incl_tax, ret.quantity, ret.unit_price) == (D("-3099.00"), D(-1), D(3099))
    # 3099.00 / 1.13 = 2742.4779 → 2742.48 excl., 356.52 tax
    assert (ret.amount_excl_tax, ret.tax) == (D("-2742.48"), D("-356.52"))


def test_returning_more_than_an_allowance_left_is_refused_with_the_settlement() -> None:
    # 2 × 3099.00 = 6198.00 > the 6000.00 left: at most 1 unit (3099.00) can be returned at the
    # blue price, and 6000.00 − 3099.00 = 2901.00 is settled by amount (销售折让).
    allowance = red_lines(BLUE, [RedRequestLine(1, amount=D("198.00"))], "4")
    with pytest.raises(InvalidOrder) as err:
        red_lines(BLUE, [RedRequestLine(1, quantity=D(2))], "1", allowance)
    [problem] = err.value.problems
    assert "cannot return 2 at the blue unit price 3099 (6198.00)" in problem.message
    assert "left 6000.00" in problem.message and "不允许修改单价" in problem.message
    assert problem.fix == (
        "return at most 1 (at 3099) with sales_return, and reverse the remaining 2901.00 "
        "with sales_allowance (销售折让, by amount)"
    )
    with pytest.raises(InvalidOrder, match="cannot return 2 at the blue unit price"):
        red_lines(BLUE[:3], None, "1", allowance)  # a full return would reprice too


def test_a_return_that_rounds_to_nothing_is_refused() -> None:
    # 0.000001 × 3099 = 0.003099 → 0.00: the platform needs a red amount
    with pytest.raises(InvalidOrder, match=r"quantity 0.000001 comes to 0.00"):
        red_lines(BLUE, [RedRequestLine(1, quantity=D("0.000001"))], "1")


def test_mixed_goods_and_services_waive_the_reason_rule() -> None:
    """兼营销售则不对红字原因进行控制: BLUE has goods (1…) and a service (3…)."""
    assert red_lines(BLUE, [RedRequestLine(1, quantity=D(1))], "3")[0].quantity == D(-1)
    assert red_lines(BLUE, [RedRequestLine(4, quantity=D(1))], "1")[0].quantity == D(-1)
    assert len(red_lines(BLUE, None, "1")) == 3


@pytest.mark.parametrize(
    ("blue", "requested", "reason", "fragment"),
    [
        (BLUE[:3], [RedRequestLine(1, quantity=D(1))], "3", "cannot use 服务中止"),
        (BLUE[3:], [RedRequestLine(4, quantity=D(1))], "1", "cannot use 销货退回"),
        (BLUE[3:], None, "1", "cannot use 销货退回"),
    ],
)
def test_reason_rule_for_goods_only_or_services_only(
    blue: tuple[InvoiceLine, ...],
    requested: list[RedRequestLine] | None,
    reason: str,
    fragment: str,
) -> None:
    with pytest.raises(InvalidOrder) as err:
        red_lines(blue, requested, reason)
    assert any(fragment in p.message for p in err.value.problems), err.value.problems


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 12), min_size=1, max_size=30),
    st.sampled_from(["1", "4"]),
    st.sampled_from(["7.77", "0.35", "1234.5678", "0.0100", "0.07"]),
    st.booleans(),
)
def test_pieces_never_exceed_and_finally_equal_the_blue_line(
    pieces: list[int], reason: str, price: str, includes_tax: bool
) -> None:
    line = OrderLine(1, "X", "螺丝", GOODS, D("0.13"), D(100), D(price), includes_tax)
    (draft,) = build_invoices(Order("s", "o", Buyer("某某公司"), (line,)), SELLER)
    (blue,) = draft.lines
    done: list[InvoiceLine] = []
    for piece in pieces:
        left = D(100) + sum((x.quantity or D(0) for x in done), D(0))
        if reason == "1":
            request = RedRequestLine(1, quantity=min(D(piece), left))
        else:
            rest = blue.amount_incl_tax + sum(x.amount_incl_tax for x in done)
            request = RedRequestLine(1, amount=min(D(piece), rest))
        if request.quantity == 0 or request.amount == 0:
            break
        (red,) = red_lines(draft.lines, [request], reason, done)
        assert red.amount_excl_tax + red.tax == red.amount_incl_tax < 0
        assert abs(red.amount_excl_tax * red.tax_rate - red.tax) <= D("0.06")
        done.append(red)
        for field in ("amount_excl_tax", "tax", "amount_incl_tax"):
            assert -sum(getattr(x, field) for x in done) <= getattr(blue, field)
    if blue.amount_incl_tax + sum(x.amount_incl_tax for x in done):
        done += red_lines(draft.lines, None, reason, done)  # the rest, exactly
    for field in ("amount_excl_tax", "tax", "amount_incl_tax"):
        assert -sum(getattr(x, field) for x in done) == getattr(blue, field)
    for red in done:  # the last piece too, which collects the others' rounding
        assert red.amount_excl_tax + red.tax == red.amount_incl_tax
        assert abs(red.amount_excl_tax * red.tax_rate - red.tax) <= D("0.06")


@pytest.mark.parametrize(
    ("requested", "reason", "already", "fragment"),
    [
        ([RedRequestLine(1, quantity=D(3))], "1", None, "only 2 remains (0 already reversed)"),
        (
            [RedRequestLine(1, quantity=D(1))],
            "1",
            ([RedRequestLine(1, quantity=D(2))], "1"),
            "only 0 remains (2 already reversed)",
        ),
        ([RedRequestLine(1, amount=D("6198.01"))], "4", None, "only 6198.00 remains"),
        (
            [RedRequestLine(4, amount=D(800))],
            "4",
            ([RedRequestLine(4, amount=D(300))], "4"),
            "only 700.00 remains (300.00 already reversed)",
        ),
        ([RedRequestLine(1, quantity=D(1))], "2", None, "allows only a full reversal"),
        (None, "2", ([RedRequestLine(1, quantity=D(1))], "1"), "already partly reversed"),
        ([RedRequestLine(1, amount=D(10))], "1", None, "needs a quantity only"),
        ([RedRequestLine(1, quantity=D(1), amount=D(10))], "1", None, "needs a quantity only"),
        ([RedRequestLine(1, quantity=D(1))], "4", None, "needs an amount only"),
        ([RedRequestLine(4, quantity=D(1), amount=D(10))], "3", None, "a quantity or an amount"),
        ([RedRequestLine(3, quantity=D(1))], "1", None, "blue line 3 is not a reversible line"),
        ([RedRequestLine(9, quantity=D(1))], "1", None, "blue line 9 is not a reversible line"),
        (
            [RedRequestLine(1, quantity=D(1)), RedRequestLine(1, quantity=D(1))],
            "1",
            None,
            "is requested twice",
        ),
        ([RedRequestLine(1, quantity=D(-1))], "1", None, "quantity -1 is not positive"),
        ([RedRequestLine(1, amount=D("1.001"))], "4", None, "at most 2 decimals"),
        ([], "4", None, "no lines to reverse"),
        (None, "refund", None, "red-letter reason 'refund' is unknown"),
    ],
)
def test_refused(
    requested: list[RedRequestLine] | None,
    reason: str,
    already: tuple[list[RedRequestLine], str] | None,
    fragment: str,
) -> None:
    done = red_lines(BLUE, *already) if already else []
    with pytest.raises(InvalidOrder) as err:
        red_lines(BLUE, requested, reason, done)
    assert any(fragment in p.message for p in err.value.problems), err.value.problems
    assert all(p.fix for p in err.value.problems)


def test_fully_reversed_invoice_cannot_be_reversed_again() -> None:
    done = red_lines(BLUE, None, "2")
    with pytest.raises(InvalidOrder, match="already fully reversed"):
        red_lines(BLUE, None, "4", done)


def test_earlier_reds_that_already_exceed_the_blue_are_reported() -> None:
    (red,) = red_lines(BLUE, [RedRequestLine(1, quantity=D(2))], "1")
    with pytest.raises(InvalidOrder, match="reversed beyond the blue line"):
        red_lines(BLUE, [RedRequestLine(4, amount=D(1))], "4", [red, red])
