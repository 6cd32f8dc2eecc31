"""Buyer-initiated 红字确认单: the list item parser, the confirm content, the red lines we record.

Field names from 诺诺开放平台诺税通saas红字确认单查询接口【外部用】.md (响应参数) and
…红字确认单确认接口【外部用】.md (私有请求参数).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from cdc_invoice.daemon.buyer_slips import red_lines
from cdc_invoice.invoice.model import InvoiceLine
from cdc_invoice.providers.nuonuo import buyer_slips
from cdc_invoice.providers.nuonuo.payload import MalformedResponse


def item(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "billNo": "1403011906000993",
        "billUuid": "1d7f08b6ddb64cb19b095b0360f074d",
        "billId": "1119316085226516480",
        "billStatus": "03",
        "applySource": "1",
        "blueInvoiceNumber": "26332000000000000001",
        "billTime": "2026-12-01 10:00:00",
        "taxExcludedAmount": "-2742.48",
        "taxAmount": "-356.52",
        "redReason": "1",
        "detail": [
            {
                "blueDetailIndex": "1",
                "goodsName": "笔记本电脑",
                "goodsCode": "1090511030000000000",
                "num": "-1",
                "taxExcludedPrice": "2742.47787611",
                "taxExcludedAmount": "-2742.48",
                "taxAmount": "-356.52",
                "taxRate": "0.13",
            }
        ],
    }
    base.update(overrides)
    return base


def test_a_waiting_buyer_slip_is_parsed_with_its_own_time() -> None:
    slip = buyer_slips.parse(item())
    assert slip is not None
    assert (slip.bill_id, slip.blue_number, slip.red_reason) == (
        "1119316085226516480",
        "26332000000000000001",
        "1",
    )
    # billTime is China time: the 72 h count from here
    assert slip.bill_time.astimezone(UTC) == datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    assert (slip.total_excl_tax, slip.total_tax) == (Decimal("-2742.48"), Decimal("-356.52"))
    [line] = slip.lines
    assert (line.blue_line_no, line.quantity, line.tax_rate) == (1, Decimal(-1), Decimal("0.13"))


@pytest.mark.parametrize(
    "overrides",
    [{"billStatus": "02"}, {"billStatus": "04"}, {"applySource": "0"}],
    ids=["seller's slip waiting for the buyer", "already confirmed", "our own slip"],
)
def test_only_slips_waiting_for_the_seller_are_taken(overrides: dict[str, Any]) -> None:
    assert buyer_slips.parse(item(**overrides)) is None


@pytest.mark.parametrize("missing", ["billId", "blueInvoiceNumber", "billTime", "taxAmount"])
def test_a_waiting_slip_without_what_finance_needs_is_malformed(missing: str) -> None:
    broken = item()
    del broken[missing]
    with pytest.raises(MalformedResponse):
        buyer_slips.parse(broken)


def test_confirm_content_follows_the_confirm_doc() -> None:
    agree = buyer_slips.confirm_content("B1", True, "ORDER0000000000000101")
    assert agree == {
        "billId": "B1",
        "identity": "0",
        "confirmAgreement": "1",
        "confirmReason": "同意",
        "orderNo": "ORDER0000000000000101",
    }
    assert buyer_slips.confirm_content("B1", False, "X")["confirmAgreement"] == "0"


def test_red_lines_keep_the_blue_unit_price_and_take_the_slip_amounts() -> None:
    # 销货退回时，只允许修改数量，不允许修改单价: the blue's price stays on the red line.
    blue = InvoiceLine(
        line_no=1,
        source_line_no=1,
        item_ref="P-LAPTOP",
        name="笔记本电脑",
        tax_code="1090511030000000000",
        tax_rate=Decimal("0.13"),
        quantity=Decimal(2),
        unit_price=Decimal("3099.00"),
        price_includes_tax=True,
        amount_excl_tax=Decimal("5484.96"),
        tax=Decimal("713.04"),
        amount_incl_tax=Decimal("6198.00"),
    )
    slip_line = {
        "blue_line_no": 1,
        "quantity": "-1",
        "amount_excl_tax": "-2742.48",
        "tax": "-356.52",
    }
    [red] = red_lines([slip_line], [blue])
    assert (red.quantity, red.unit_price) == (Decimal(-1), Decimal("3099.00"))
    assert (red.amount_excl_tax, red.tax, red.amount_incl_tax) == (
        Decimal("-2742.48"),
        Decimal("-356.52"),
        Decimal("-3099.00"),
    )
    with pytest.raises(ValueError, match="blue line 7"):
        red_lines([dict(slip_line, blue_line_no=7)], [blue])
