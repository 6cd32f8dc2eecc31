"""Buyer-initiated 红字确认单: listing them (queryInvoiceRedConfirm, status 03) and the seller's
answer (confirm).

Sources: 诺诺开放平台诺税通saas红字确认单查询接口…md (identity 0 销方, billStatus 03 购方录入待销方
确认, billTimeStart/End ≤ 90 days, pageSize ≤ 50; list items: billId, billNo, billUuid, billStatus,
applySource, blueInvoiceNumber, billTime, taxExcludedAmount, taxAmount, redReason, detail[]) and
…红字确认单确认接口…md (billUuid|billId|billNo, identity, confirmAgreement 0/1, confirmReason,
orderNo: the red invoice's order number when the platform issues it on agreement).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Final

from cdc_invoice.providers.base import BuyerSlip, BuyerSlipLine
from cdc_invoice.providers.nuonuo.payload import (
    CHINA_TZ,
    MalformedResponse,
    _decimal,
    _text,
    _timestamp,
)

CONFIRM: Final = "nuonuo.OpeMplatform.confirm"
AWAITING_SELLER: Final = "03"
PAGE_SIZE: Final = 50
MAX_PAGES: Final = 200  # 10,000 slips: guards a platform that ignores pageNo


def list_content(since: datetime, until: datetime, page_no: int) -> dict[str, object]:
    """One page of the slips waiting for the seller. The window is at most 90 days (doc)."""
    return {
        "identity": "0",
        "billStatus": AWAITING_SELLER,
        "billTimeStart": f"{since.astimezone(CHINA_TZ):%Y-%m-%d}",
        "billTimeEnd": f"{until.astimezone(CHINA_TZ):%Y-%m-%d}",
        "pageSize": str(PAGE_SIZE),
        "pageNo": str(page_no),
    }


def confirm_content(bill_id: str, agree: bool, red_order_no: str) -> dict[str, object]:
    if not bill_id:
        raise ValueError("bill_id must not be empty")
    return {
        "billId": bill_id,
        "identity": "0",
        "confirmAgreement": "1" if agree else "0",
        "confirmReason": "同意" if agree else "不同意",
        # only used when the platform issues the red invoice on agreement
        "orderNo": red_order_no if agree else "",
    }


def _line(index: int, item: object) -> BuyerSlipLine:
    if not isinstance(item, Mapping):
        raise MalformedResponse(f"detail[{index}] is not an object")
    blue_index = _text(item, "blueDetailIndex")
    ex, tax, rate = (_decimal(item, k) for k in ("taxExcludedAmount", "taxAmount", "taxRate"))
    if blue_index is None or not blue_index.isdigit() or ex is None or tax is None or rate is None:
        raise MalformedResponse(
            f"detail[{index}] lacks blueDetailIndex, taxExcludedAmount, taxAmount or taxRate"
        )
    return BuyerSlipLine(
        blue_line_no=int(blue_index),
        name=_text(item, "goodsName") or "",
        tax_code=_text(item, "goodsCode"),
        tax_rate=rate,
        quantity=_decimal(item, "num"),
        unit_price=_decimal(item, "taxExcludedPrice"),
        amount_excl_tax=ex,
        tax=tax,
    )


def parse(item: object) -> BuyerSlip | None:
    """A buyer's slip waiting for us, or None for anything else on the page."""
    if not isinstance(item, Mapping):
        raise MalformedResponse("a red-letter slip is not an object")
    status = _text(item, "billStatus")
    if status != AWAITING_SELLER or _text(item, "applySource") not in (None, "1"):
        return None
    bill_id = _text(item, "billId")
    number = _text(item, "blueInvoiceNumber", "blueElecInvoiceNumber")
    bill_time = _timestamp(item, "billTime")
    ex, tax = _decimal(item, "taxExcludedAmount"), _decimal(item, "taxAmount")
    if bill_id is None or number is None or bill_time is None or ex is None or tax is None:
        raise MalformedResponse(
            "a buyer's slip lacks billId, blueInvoiceNumber, billTime or its amounts"
        )
    detail = item.get("detail") or []
    if not isinstance(detail, list):
        raise MalformedResponse("detail is not a list")
    return BuyerSlip(
        bill_id=bill_id,
        bill_no=_text(item, "billNo"),
        bill_uuid=_text(item, "billUuid"),
        status_code=status,
        blue_number=number,
        red_reason=_text(item, "redReason") or "",
        bill_time=bill_time,
        total_excl_tax=ex.quantize(Decimal("0.01")),
        total_tax=tax.quantize(Decimal("0.01")),
        lines=tuple(_line(i, x) for i, x in enumerate(detail)),
    )
