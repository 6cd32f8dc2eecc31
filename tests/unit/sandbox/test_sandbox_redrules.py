"""Red-letter slip rules: cumulative per-line limits, double reversal (E9103), reason rules."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sandbox_orders import COMPUTER, SELLER, discount_pair, line, order

from cdc_invoice.sandbox.model import AcceptedOrder, Line, RedSlip, Rejection
from cdc_invoice.sandbox.redrules import blue_items, full_reversal, partial_reversal, used_by
from cdc_invoice.sandbox.rules import check_billing


def blue(lines: list[dict[str, Any]] | None = None) -> tuple[Line, ...]:
    result = check_billing(
        order(lines=lines), user_tax=SELLER, sellers={SELLER}, is_duplicate=lambda *_: False
    )
    assert isinstance(result, AcceptedOrder)
    return result.lines


def slip(lines: list[Line], status: str = "01") -> RedSlip:
    return RedSlip(
        bill_id="B", bill_no="1", bill_uuid="u", seller_tax=SELLER, seller_name="s",
        buyer_name="b", buyer_tax_no="", blue_serial="S", blue_number="N", blue_line="pc",
        red_reason="1", order_no="R", lines=tuple(lines), created_at=0, due_at=0,
        bill_status=status,
    )  # fmt: skip


def returned(
    num: str = "-1", ex: str = "-2742.48", tax: str = "-356.52", **extra: str
) -> dict[str, str]:
    """Return one computer (A1: 2 × 3099 incl. → ex price 2742.48)."""
    base = {
        "blueDetailIndex": "1", "goodsName": "电脑", "goodsCode": COMPUTER, "num": num,
        "taxExcludedPrice": "2742.48", "taxExcludedAmount": ex, "taxAmount": tax,
        "taxRate": "0.13",
    }  # fmt: skip
    return base | extra


def test_full_reversal_reverses_everything_then_refuses_a_second_time() -> None:
    items = blue_items(blue())
    lines = full_reversal(items, {})
    assert isinstance(lines, list)
    assert (lines[0].ex, lines[0].tax, lines[0].num) == (
        Decimal("-5484.96"),
        Decimal("-713.04"),
        Decimal("-2"),
    )
    again = full_reversal(items, used_by([slip(lines)]))
    assert isinstance(again, Rejection) and again.code == "E9103"


def test_withdrawn_slips_do_not_count() -> None:
    items = blue_items(blue())
    lines = full_reversal(items, {})
    assert isinstance(lines, list)
    assert isinstance(full_reversal(items, used_by([slip(lines, status="08")])), list)


def test_partial_reversals_add_up_to_the_blue_line_and_no_further() -> None:
    items = blue_items(blue())
    first = partial_reversal([returned()], items, {}, "1")
    assert isinstance(first, list)
    used = used_by([slip(first)])
    second = partial_reversal([returned()], items, used, "1")
    assert isinstance(second, list)
    third = partial_reversal([returned()], items, used_by([slip(first), slip(second)]), "1")
    assert isinstance(third, Rejection) and third.code == "E9103"
    # After one returned computer, a full reversal takes exactly the rest.
    rest = full_reversal(items, used)
    assert isinstance(rest, list) and rest[0].ex == Decimal("-2742.48")


def test_discount_is_netted_into_the_discounted_line() -> None:
    items = blue_items(blue(discount_pair()))
    assert list(items) == [1]  # the discount line (2) is not reversible on its own
    assert items[1].ex == Decimal("2742.48") - Decimal("87.61")
    refused = partial_reversal([returned(blueDetailIndex="2")], items, {}, "1")
    assert isinstance(refused, Rejection)


@pytest.mark.parametrize(
    ("detail", "reason", "code"),
    [
        (returned(), "2", "E4000"),  # 开票有误: full reversal only
        (returned(taxExcludedPrice="2800.00", ex="-2800.00", tax="-364.00"), "1", "E4000"),
        (returned(), "3", "E4000"),  # a goods code cannot use 服务中止
        (returned(), "4", "E4000"),  # 折让 is amount-only: no quantity, no price
        (returned(ex="2742.48", tax="356.52"), "1", "E4000"),  # amounts must be negative
        (returned(tax="-356.60"), "1", "E9131"),  # |ex × rate − tax| > 0.06
        (returned(num="-2"), "1", "E4000"),  # price × num ≠ amount
        (returned(ex="-5500.00", tax="-715.00", num="-2.00546"), "4", "E4000"),
        (returned(taxRate="0.09"), "1", "E4000"),
        (returned(goodsName="鼠标"), "1", "E4000"),
        (returned(blueDetailIndex="9"), "1", "E4000"),
    ],
)
def test_slip_line_rejections(detail: dict[str, str], reason: str, code: str) -> None:
    result = partial_reversal([detail], blue_items(blue()), {}, reason)
    assert isinstance(result, Rejection), result
    assert result.code == code


def test_allowance_is_amount_only_and_capped_by_the_line() -> None:
    items = blue_items(blue())
    allowance = returned(num="", taxExcludedPrice="", ex="-100.00", tax="-13.00")
    assert isinstance(partial_reversal([allowance], items, {}, "4"), list)
    too_much = returned(num="", taxExcludedPrice="", ex="-5500.00", tax="-715.00")
    result = partial_reversal([too_much], items, {}, "4")
    assert isinstance(result, Rejection) and result.code == "E9103"


def test_mixed_goods_and_services_waive_the_reason_rule() -> None:
    """兼营销售则不对红字原因进行控制 (乐企 基础版 V4.000): a goods line of an invoice that also
    has a service may be reversed for 服务中止, and the service line for 销货退回."""
    service = line(
        goodsName="咨询服务", goodsCode="3049900000000000000", taxRate="0.06", price="100",
        num="10", taxIncludedAmount="1000.00", taxExcludedAmount="943.40", tax="56.60",
    )  # fmt: skip
    items = blue_items(blue([line(), service]))
    assert isinstance(partial_reversal([returned()], items, {}, "3"), list)
    back = {
        "blueDetailIndex": "2", "goodsName": "咨询服务", "goodsCode": "3049900000000000000",
        "num": "-1", "taxExcludedPrice": "94.34", "taxExcludedAmount": "-94.34",
        "taxAmount": "-5.66", "taxRate": "0.06",
    }  # fmt: skip
    assert isinstance(partial_reversal([back], items, {}, "1"), list)
    goods_only = blue_items(blue([line()]))
    refused = partial_reversal([returned()], goods_only, {}, "3")
    assert isinstance(refused, Rejection) and "服务中止" in refused.describe
