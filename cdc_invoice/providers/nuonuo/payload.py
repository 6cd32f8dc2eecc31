"""Our value objects ⇄ Nuonuo JSON: requestBillingNew ``order`` (§2.7), queryInvoiceResult (§2.9),
the red-letter flow (saveInvoiceRedConfirm, queryInvoiceRedConfirm, fastInvoiceRed, §2.11), void
(invoiceCancellation), deliveryInvoice and queryInvoiceList.

Pure functions, no I/O. Every number goes out as a plain decimal string (never a float, never an
exponent) because the platform validates amounts textually; every number comes back as Decimal.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Final

from cdc_invoice.errors import InvalidOrder, Problem
from cdc_invoice.invoice.model import InvoiceDraft, InvoiceLine, LineProperty, Seller
from cdc_invoice.invoice.money import div, round_quantity
from cdc_invoice.invoice.validate import SHOW_BANK_ACCOUNT
from cdc_invoice.providers.base import (
    InvoiceRef,
    PlatformInvoice,
    PlatformLine,
    PlatformStatus,
    RedSlip,
    SlipStatus,
)
from cdc_invoice.providers.nuonuo import codes

logger = logging.getLogger(__name__)

# China has had no DST since 1991, so a fixed +08:00 offset is exact and needs no tzdata.
CHINA_TZ: Final = timezone(timedelta(hours=8), "Asia/Shanghai")

STATUS: Final[dict[str, PlatformStatus]] = {
    "20": "issuing",
    "21": "issuing",
    "2": "issued",
    "22": "failed",
    # 开票成功签章失败: the invoice exists (发票详情查询 doc: "22、24状态时，无需再查询");
    # recorded as issued with seal_failed, never re-issued.
    "24": "issued",
    "31": "voiding",
    "3": "voided",
}

# 红字确认单 billStatus (§2.11 step 2) → SlipStatus, as the comment in providers/base.py says.
SLIP_STATUS: Final[dict[str, SlipStatus]] = {
    "15": "applying",  # 申请中
    "01": "ready",  # 无需确认: the buyer need not confirm
    "04": "ready",  # 购销双方已确认
    "02": "awaiting_buyer",  # 销方录入待购方确认
    "03": "awaiting_seller",  # 购方录入待销方确认 (applySource 1): the seller must confirm
    "05": "cancelled",  # 作废(销方录入购方否认)
    "06": "cancelled",  # 作废(购方录入销方否认)
    "07": "cancelled",  # 作废(超72小时未确认)
    "08": "cancelled",  # 作废(发起方已撤销)
    "09": "cancelled",  # 作废(确认后撤销)
    "16": "failed",  # 申请失败
}

RED_REASONS: Final = frozenset({"1", "2", "3", "4"})  # 销货退回 开票有误 服务中止 销售折让
BILL_ID_MAX_LEN: Final = 32  # saveInvoiceRedConfirm billId (S1 field table)
ELECTRONIC_LINES: Final = frozenset({"pc", "bs"})  # 数电 electronic: never voidable (§3.6)
LIST_PAGE_SIZE: Final = 50  # queryInvoiceList pageSize (ASSUMPTION: the sandbox's maximum)
# ASSUMPTION: a third-party summary of doc 100595 says one queryInvoiceList time range may not
# exceed 10 days; longer ranges are queried window by window.
LIST_WINDOW: Final = timedelta(days=10)

MAX_QUANTITY_DECIMALS: Final = 8  # price and num (§2.7)
SURVEY_RATES: Final = frozenset({Decimal("0.01"), Decimal("0.03")})
_CENT: Final = Decimal("0.01")
# Mainland mobile numbers, optionally with the country code: SMS delivery only works for these.
_MOBILE: Final = re.compile(r"(?:\+?86[- ]?)?(1\d{10})")


class MalformedResponse(ValueError):
    """A platform answer that does not have the documented shape."""


# ---------------------------------------------------------------- outgoing


def plain(value: Decimal) -> str:
    """``Decimal`` as the shortest plain string: 3099 → "3099", 0.130 → "0.13", 1E+2 → "100"."""
    if value.is_zero():
        return "0"
    return format(value.normalize(), "f")


def cents(value: Decimal) -> str:
    """Money with exactly two decimals ("6198.00"); the caller checked it is whole cents."""
    if value.is_zero():
        return "0.00"
    return format(value.quantize(_CENT), "f")


def _check_line(line: InvoiceLine) -> list[Problem]:
    problems: list[Problem] = []
    for name, money in (
        ("amount_excl_tax", line.amount_excl_tax),
        ("tax", line.tax),
        ("amount_incl_tax", line.amount_incl_tax),
    ):
        if money != money.quantize(_CENT):
            problems.append(
                Problem(
                    f"{name} {money} is not rounded to cents",
                    line_no=line.line_no,
                    field=name,
                    fix="round invoice amounts to cents before issuing (a bug in the domain)",
                )
            )
    for name, number in (("quantity", line.quantity), ("unit_price", line.unit_price)):
        exponent = number.normalize().as_tuple().exponent if number is not None else 0
        if isinstance(exponent, int) and exponent < -MAX_QUANTITY_DECIMALS:
            problems.append(
                Problem(
                    f"{name} {number} has more than {MAX_QUANTITY_DECIMALS} decimals",
                    line_no=line.line_no,
                    field=name,
                    fix=f"round {name} to {MAX_QUANTITY_DECIMALS} decimals",
                )
            )
    return problems


def _line(line: InvoiceLine) -> dict[str, str]:
    out: dict[str, str] = {"goodsName": line.name, "goodsCode": line.tax_code}
    is_discount = line.property == LineProperty.DISCOUNT
    # A discount line carries amounts only: spec, unit, price and quantity must be empty (§3.5).
    if not is_discount:
        if line.spec:
            out["specType"] = line.spec
        if line.unit:
            out["unit"] = line.unit
    out["withTaxFlag"] = "1" if line.price_includes_tax else "0"
    # price and num go together: "if price is empty, num must be empty" (E9123).
    if not is_discount and line.unit_price is not None and line.quantity is not None:
        out["price"] = plain(line.unit_price)
        out["num"] = plain(line.quantity)
    out["taxRate"] = plain(line.tax_rate)
    # Send all three amounts: otherwise the platform recomputes them from price × num (§2.7).
    out["taxExcludedAmount"] = cents(line.amount_excl_tax)
    out["tax"] = cents(line.tax)
    out["taxIncludedAmount"] = cents(line.amount_incl_tax)
    out["invoiceLineProperty"] = str(int(line.property))
    if line.policy_flag:
        out["favouredPolicyFlag"] = line.policy_flag
    return out


def push_mode(email: str | None, mobile: str | None) -> str:
    """-1 no delivery, 0 email, 1 SMS, 2 both (§2.7 pushMode)."""
    if email and mobile:
        return "2"
    if email:
        return "0"
    if mobile:
        return "1"
    return "-1"


def mobile_number(phone: str | None) -> str | None:
    """The 11-digit mobile number in ``phone``, or None for landlines and junk (no SMS to those)."""
    if not phone:
        return None
    match = _MOBILE.fullmatch(phone.strip())
    return match.group(1) if match else None


def build_order(
    seller: Seller, draft: InvoiceDraft, order_no: str, *, invoice_date: datetime
) -> dict[str, object]:
    """The requestBillingNew content for a blue invoice.

    Optional fields without a value are left out rather than sent as "" so the platform applies
    its own defaults (e.g. seller address configured in the Nuonuo console).
    """
    if draft.kind != "blue":
        raise ValueError("requestBillingNew issues blue invoices; red ones use the red-letter flow")
    if invoice_date.tzinfo is None:
        raise ValueError("invoice_date must be timezone-aware")
    problems = [p for line in draft.lines for p in _check_line(line)]
    if problems:
        raise InvalidOrder(problems, source=draft.source, order_ref=draft.order_ref)

    buyer = draft.buyer
    mobile = mobile_number(buyer.phone)
    order: dict[str, object] = {"buyerName": buyer.name}
    optional: tuple[tuple[str, str | None], ...] = (
        ("buyerTaxNum", buyer.tax_number),
        ("buyerTel", buyer.phone),
        ("buyerAddress", buyer.address),
        ("buyerAccount", buyer.bank_account),
        ("email", buyer.email),
        ("buyerPhone", mobile),
    )
    order.update((key, value) for key, value in optional if value)
    order["pushMode"] = push_mode(buyer.email, mobile)
    order["naturalPersonFlag"] = "1" if buyer.natural_person else "0"
    order["salerTaxNum"] = seller.tax_number
    seller_optional: tuple[tuple[str, str | None], ...] = (
        ("salerTel", seller.phone),
        ("salerAddress", seller.address),
        ("salerAccount", seller.bank_account),
    )
    order.update((key, value) for key, value in seller_optional if value)
    order["orderNo"] = order_no
    order["invoiceDate"] = invoice_date.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S")
    if not seller.clerk:
        raise InvalidOrder(
            [
                Problem(
                    "the seller has no clerk (开票人)",
                    field="seller.clerk",
                    fix="UPDATE cdc_invoice.seller SET clerk = '<开票员姓名>' "
                    f"WHERE seller_id = '{seller.seller_id}';",
                )
            ],
            source=draft.source,
            order_ref=draft.order_ref,
        )
    order["clerk"] = seller.clerk.strip()
    tail: tuple[tuple[str, str | None], ...] = (
        ("payee", seller.payee),
        ("checker", seller.checker),
    )
    order.update((key, value) for key, value in tail if value)
    order["invoiceType"] = "1"
    order["invoiceLine"] = draft.invoice_line
    # "不传默认为0：都不显示；传1：备注仅显示销方开户行及账号；传2：…购方…；传3：购销方…都显示"
    order["showBankAccountType"] = SHOW_BANK_ACCOUNT.get(seller.show_bank_account, "0")
    # "3%、1%税率开具理由（企业为小规模/点下户时才需要）": sent when the seller set it and the
    # invoice has such a line.
    if seller.survey_answer_type and any(line.tax_rate in SURVEY_RATES for line in draft.lines):
        order["surveyAnswerType"] = seller.survey_answer_type
    if seller.extension_number:
        order["extensionNumber"] = seller.extension_number
    if draft.remark:
        order["remark"] = draft.remark
    order["invoiceDetail"] = [_line(line) for line in draft.lines]
    return {"order": order}


def is_elec_number(number: str | None) -> bool:
    """A 20-digit 数电 invoice number (paper 税控 numbers have 8 digits and a separate code)."""
    return number is not None and len(number) == 20 and number.isdigit()


def _check_red_line(line: InvoiceLine, seen: set[int]) -> list[Problem]:
    problems = _check_line(line)

    def bad(message: str, field: str, fix: str) -> None:
        problems.append(Problem(message, line_no=line.line_no, field=field, fix=fix))

    if line.line_no < 1 or line.line_no in seen:
        bad(
            f"blue line index {line.line_no} is not a distinct 1-based line number",
            "line_no",
            "give each red line the index of the blue line it reverses, once",
        )
    seen.add(line.line_no)
    if line.property != LineProperty.NORMAL:
        bad(
            "a red-letter line must be a normal line (discounts are netted in)",
            "property",
            "net the discount into the discounted line (a bug in the domain)",
        )
    if line.amount_excl_tax >= 0 or line.tax > 0:
        bad(
            f"red amounts must be negative (excl. tax {line.amount_excl_tax}, tax {line.tax})",
            "amount_excl_tax",
            "pass the red lines with negative amounts",
        )
    if line.quantity is not None and line.quantity >= 0:
        bad(f"red quantity {line.quantity} must be negative", "quantity", "negate the quantity")
    if line.unit_price is not None and line.unit_price <= 0:
        bad(f"unit price {line.unit_price} must be positive", "unit_price", "keep it positive")
    return problems


def _excl_price(line: InvoiceLine) -> Decimal | None:
    """The slip's taxExcludedPrice (positive): None without a quantity (amount-only, 销售折让).

    A tax-exclusive unit price goes as it is (the blue price: 销货退回 may not change it). A
    tax-inclusive one is replaced by |amount excl. tax| / |quantity| to 8 decimals, so that
    |price × num − amount| stays far inside the platform's 0.01 (乐企 line rule, §3.3).
    """
    if line.quantity is None:
        return None
    if not line.price_includes_tax and line.unit_price is not None:
        return line.unit_price
    return round_quantity(div(abs(line.amount_excl_tax), abs(line.quantity)))


def _red_detail(line: InvoiceLine) -> dict[str, str]:
    out: dict[str, str] = {
        "blueDetailIndex": str(line.line_no),
        "goodsName": line.name,
        "goodsCode": line.tax_code,
    }
    if line.spec:
        out["specType"] = line.spec
    if line.unit:
        out["unit"] = line.unit
    price = _excl_price(line)
    if line.quantity is not None and price is not None:
        out["num"] = plain(line.quantity)
        out["taxExcludedPrice"] = plain(price)
    out["taxExcludedAmount"] = cents(line.amount_excl_tax)
    out["taxAmount"] = cents(line.tax)
    out["taxRate"] = plain(line.tax_rate)
    if line.policy_flag:
        out["favouredPolicyFlag"] = line.policy_flag
    return out


def _blue_number_fields(
    blue: InvoiceRef, *, elec: str, code: str, number: str
) -> list[tuple[str, str]]:
    """The blue invoice's identity: its 20-digit 数电 number, or code + number (税控 paper)."""
    if is_elec_number(blue.number):
        return [(elec, blue.number)]
    if not blue.paper_code:
        raise ValueError(
            f"blue invoice {blue.serial}: number {blue.number!r} is not a 20-digit 数电 number "
            "and there is no paper invoice code"
        )
    return [(code, blue.paper_code), (number, blue.paper_number or blue.number)]


def red_confirm_content(
    seller: Seller,
    blue: InvoiceRef,
    red_lines: Sequence[InvoiceLine] | None,
    reason: str,
    bill_id: str,
    red_order_no: str,
) -> dict[str, object]:
    """saveInvoiceRedConfirm content (§2.11 step 1, Appendix A5): seller-initiated (applySource
    0); ``detail`` only for a partial reversal (``red_lines`` not None)."""
    if not bill_id or len(bill_id) > BILL_ID_MAX_LEN:
        raise ValueError(f"bill_id must have 1 to {BILL_ID_MAX_LEN} characters, got {bill_id!r}")
    if not red_order_no:
        raise ValueError("red_order_no (the red invoice's order number) must not be empty")
    if reason not in RED_REASONS:
        raise ValueError(f"red-letter reason must be one of 1, 2, 3, 4, got {reason!r}")
    if red_lines is not None:
        if isinstance(red_lines, InvoiceLine) or not red_lines:
            raise ValueError("red_lines must be None (full reversal) or a non-empty sequence")
        seen: set[int] = set()
        problems = [p for line in red_lines for p in _check_red_line(line, seen)]
        if problems:
            raise InvalidOrder(problems, order_ref=blue.order_no)
    content: dict[str, object] = {
        "billId": bill_id,
        "blueInvoiceLine": blue.invoice_line,
        "applySource": "0",
    }
    content.update(
        _blue_number_fields(
            blue, elec="blueElecInvoiceNumber", code="blueInvoiceCode", number="blueInvoiceNumber"
        )
    )
    content["sellerTaxNo"] = seller.tax_number
    content["sellerName"] = seller.name
    if blue.buyer_tax_number:
        content["buyerTaxNo"] = blue.buyer_tax_number
    content["buyerName"] = blue.buyer_name
    content["redReason"] = reason
    content["orderNo"] = red_order_no
    if seller.extension_number:
        content["extensionNumber"] = seller.extension_number
    if red_lines is not None:
        content["detail"] = [_red_detail(line) for line in red_lines]
    return content


def red_confirm_query_content(bill_id: str) -> dict[str, object]:
    """queryInvoiceRedConfirm content: one slip by our billId, as the seller (identity 0)."""
    if not bill_id:
        raise ValueError("bill_id must not be empty")
    return {"identity": "0", "billId": bill_id}


def fast_red_content(
    seller: Seller, blue: InvoiceRef, slip: RedSlip, red_order_no: str
) -> dict[str, object]:
    """fastInvoiceRed content (§2.11 step 3): the red invoice of a ready slip, same kind as the
    blue one (the platform's default)."""
    if not red_order_no:
        raise ValueError("red_order_no (the idempotency key) must not be empty")
    if not slip.bill_no or not slip.bill_uuid:
        raise ValueError(
            f"slip {slip.bill_id} has no billNo/billUuid yet (status {slip.status_code}): "
            "query it until it is ready"
        )
    content: dict[str, object] = {"orderNo": red_order_no, "taxNum": seller.tax_number}
    content.update(
        _blue_number_fields(
            blue, elec="elecInvoiceNumber", code="invoiceCode", number="invoiceNumber"
        )
    )
    content["billNo"] = slip.bill_no
    content["billUuid"] = slip.bill_uuid
    content["invoiceLine"] = blue.invoice_line
    if seller.extension_number:
        content["extensionNumber"] = seller.extension_number
    return content


def void_content(invoice: InvoiceRef) -> dict[str, object]:
    """invoiceCancellation content (§2.11, Appendix A6): serial, code and the paper number.

    The request documents no reason field (invalidReason only comes back in the callback)."""
    return {
        "invoiceId": invoice.serial,
        "invoiceCode": invoice.paper_code or "",
        "invoiceNo": invoice.paper_number or invoice.number,
    }


def delivery_content(
    seller: Seller, invoice: InvoiceRef, email: str | None, phone: str | None
) -> dict[str, object]:
    """deliveryInvoice content: 数电 by its 20-digit number with an empty code; paper 税控 by
    code + 8-digit number. At least one of email / mobile phone."""
    mobile = mobile_number(phone)
    if phone and mobile is None:
        raise ValueError(f"{phone!r} is not a mainland mobile number: SMS delivery needs one")
    if not email and not mobile:
        raise ValueError("deliver needs an email address or a mobile phone number")
    if is_elec_number(invoice.number):
        code, number = "", invoice.number
    else:
        code, number = invoice.paper_code or "", invoice.paper_number or invoice.number
    return {
        "taxnum": seller.tax_number,
        "invoiceCode": code,
        "invoiceNum": number,
        "phone": mobile or "",
        "mail": email or "",
    }


def _china_time(value: datetime) -> str:
    return value.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S")


def list_windows(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """[start, end] cut into queryInvoiceList ranges of at most ``LIST_WINDOW`` (both ends are
    inclusive on the platform, so neighbouring windows share one second: dedupe by serial)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    if end < start:
        raise ValueError(f"end {end.isoformat()} is before start {start.isoformat()}")
    windows = []
    low = start
    while True:
        high = min(low + LIST_WINDOW, end)
        windows.append((low, high))
        if high >= end:
            return windows
        low = high


def list_content(
    seller: Seller, start: datetime, end: datetime, *, page_no: int, page_size: int
) -> dict[str, object]:
    """queryInvoiceList content. ASSUMPTION — the method's doc (100595) is not in our reference:
    ``taxnum``, ``startTime``/``endTime`` ("yyyy-MM-dd HH:mm:ss", China time), ``pageNo`` from 1
    and ``pageSize`` follow a third-party summary of that doc and what our sandbox reads; the
    summary's ``requestType`` is left out because its values are unknown."""
    return {
        "taxnum": seller.tax_number,
        "startTime": _china_time(start),
        "endTime": _china_time(end),
        "pageNo": str(page_no),
        "pageSize": str(page_size),
    }


def query_content(
    *, serials: Sequence[str] = (), order_nos: Sequence[str] = ()
) -> dict[str, object]:
    """queryInvoiceResult content; the platform prefers serials when both are given."""
    content: dict[str, object] = {}
    if serials:
        content["serialNos"] = list(serials)
    if order_nos:
        content["orderNos"] = list(order_nos)
    content["isOfferInvoiceDetail"] = "1"
    return content


# ---------------------------------------------------------------- incoming


def _text(item: Mapping[str, object], *keys: str) -> str | None:
    """The first non-empty value among ``keys`` as text (the platform mixes strings and numbers)."""
    for key in keys:
        value = item.get(key)
        if value is None or isinstance(value, (dict, list)):
            continue
        text = str(value).strip()
        if text:
            return text
    return None


def _decimal(item: Mapping[str, object], key: str) -> Decimal | None:
    value = item.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal, float)):
        raise MalformedResponse(f"{key} is not a number")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise MalformedResponse(f"{key} is not a number") from exc
    if not number.is_finite():
        raise MalformedResponse(f"{key} is not a finite number")
    return number


def _timestamp(item: Mapping[str, object], key: str) -> datetime | None:
    value = _text(item, key)
    if value is None or value == "0":
        return None
    if value.isdigit():  # documented: epoch milliseconds
        return datetime.fromtimestamp(int(value) / 1000, CHINA_TZ)
    try:  # seen in callbacks and older answers: local wall-clock time
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA_TZ)
    except ValueError as exc:
        raise MalformedResponse(f"{key} is neither epoch milliseconds nor a date") from exc


def _platform_line(index: int, item: Mapping[str, object]) -> PlatformLine:
    amount = _decimal(item, "itemAmount")
    if amount is None:
        raise MalformedResponse(f"invoiceItems[{index}] has no itemAmount")
    tax = _decimal(item, "itemTaxAmount") or Decimal(0)
    # itemAmount and itemPrice are tax-inclusive when isIncludeTax is "true" (§2.9).
    includes_tax = str(item.get("isIncludeTax", "")).strip().lower() == "true"
    prop = _text(item, "invoiceLineProperty") or "0"
    if not prop.isdigit():
        raise MalformedResponse(f"invoiceItems[{index}].invoiceLineProperty is not a number")
    return PlatformLine(
        line_no=index + 1,
        name=_text(item, "itemName") or "",
        tax_code=_text(item, "itemCode"),
        quantity=_decimal(item, "itemNum"),
        unit_price=_decimal(item, "itemPrice"),
        amount_excl_tax=amount - tax if includes_tax else amount,
        # "paper list red invoices may have a null rate" (§2.9): 0 rather than failing the poll.
        tax_rate=_decimal(item, "itemTaxRate") or Decimal(0),
        tax=tax,
        property=int(prop),
    )


# Not carried by ``PlatformInvoice`` yet (it has no fields for them); ready for when it does.


def original_number(item: Mapping[str, object]) -> str | None:
    """A red invoice's blue invoice number (数电 number, else the paper number), if given."""
    return _text(item, "oldEleInvoiceNumber", "oldInvoiceNo")


def paper_identity(item: Mapping[str, object]) -> tuple[str | None, str | None]:
    """(发票代码, 8-digit paper number) of a paper invoice (es/ec, legacy c/s), else (None, None).

    On 数电 electronic invoices invoiceCode is empty and invoiceNo is the 20-digit number (§2.9);
    void and delivery of a paper invoice need the pair (``InvoiceRef.paper_code/paper_number``).
    """
    code = _text(item, "invoiceCode")
    number = _text(item, "invoiceNo")
    if code is None or number is None or is_elec_number(number):
        return None, None
    return code, number


def parse_invoice(item: object) -> PlatformInvoice:
    """One queryInvoiceResult item; unknown fields are ignored, missing optional ones are None."""
    if not isinstance(item, Mapping):
        raise MalformedResponse("a query result item is not an object")
    serial = _text(item, "serialNo")
    status_code = _text(item, "status")
    if serial is None or status_code is None:
        raise MalformedResponse("a query result item has no serialNo or status")
    status = STATUS.get(status_code)
    if status is None:
        # Keep polling rather than fail the whole batch; the raw code goes to the audit log.
        logger.warning("unknown Nuonuo invoice status %r for serial %s", status_code, serial)
        status = "issuing"
    raw_items = item.get("invoiceItems")
    if raw_items is not None and not isinstance(raw_items, list):
        raise MalformedResponse("invoiceItems is not a list")
    lines: list[PlatformLine] = []
    for index, raw in enumerate(raw_items or ()):
        if not isinstance(raw, Mapping):
            raise MalformedResponse(f"invoiceItems[{index}] is not an object")
        lines.append(_platform_line(index, raw))
    excl = _decimal(item, "exTaxAmount")
    tax = _decimal(item, "taxAmount")
    incl = _decimal(item, "orderAmount")
    if incl is None and excl is not None and tax is not None:
        incl = excl + tax
    kind = {"1": "blue", "2": "red"}.get(_text(item, "invoiceType") or "")
    paper_code, paper_number = paper_identity(item)
    return PlatformInvoice(
        serial=serial,
        order_no=_text(item, "orderNo") or "",
        status=status,
        status_code=status_code,
        # 数电 number; the Go SDK spells the key without the final "r", so accept both.
        number=_text(item, "allElectronicInvoiceNumber", "allElectronicInvoiceNumbe", "invoiceNo"),
        issued_at=_timestamp(item, "invoiceTime"),
        buyer_name=_text(item, "payerName"),
        buyer_tax_number=_text(item, "payerTaxNo"),
        total_excl_tax=excl,
        total_tax=tax,
        total_incl_tax=incl,
        pdf_url=_text(item, "pdfUrl"),
        ofd_url=_text(item, "ofdUrl"),
        xml_url=_text(item, "xmlUrl"),
        fail_cause=_text(item, "failCause"),
        invoice_kind=kind,
        lines=tuple(lines),
        paper_code=paper_code,
        paper_number=paper_number,
        original_number=original_number(item),
        seal_failed=status_code == "24",
        quota_exhausted=status == "failed" and codes.is_quota_failure(_text(item, "failCause")),
    )


def slip_status(code: str) -> SlipStatus | None:
    """The normalised billStatus, or None for a code the reference does not list."""
    if code.isdigit() and len(code) == 1:  # a JSON number 1 → "1" → "01"
        code = code.zfill(2)
    return SLIP_STATUS.get(code)


def slip_items(result: object, extra: Mapping[str, object]) -> list[object]:
    """The slips of a queryInvoiceRedConfirm answer: ``result.list`` (sandbox, Go SDK),
    ``result`` as a list, or ``list`` next to ``code`` (the official doc's table)."""
    return _page_items(result, extra, "list")[0]


def list_page(result: object, extra: Mapping[str, object]) -> tuple[list[object], int | None]:
    """One queryInvoiceList page: its items and the total, when the platform says.

    ASSUMPTION (see ``list_content``): items under ``list`` (sandbox) or ``invoices`` (the
    third-party summary), the total as ``total`` or ``totalCount``; a bare list is accepted."""
    return _page_items(result, extra, "list", "invoices")


def _page_items(
    result: object, extra: Mapping[str, object], *keys: str
) -> tuple[list[object], int | None]:
    if isinstance(result, list):
        return list(result), None
    holder: Mapping[str, object]
    if isinstance(result, Mapping):
        holder = result
    elif result is None or result == "":
        holder = extra
    else:
        raise MalformedResponse("result is neither an object nor a list")
    items: object = None
    for key in keys:
        if holder.get(key) is not None:
            items = holder[key]
            break
    if items is None:
        items = []
    if not isinstance(items, list):
        raise MalformedResponse(f"{'/'.join(keys)} is not a list")
    total_text = _text(holder, "total", "totalCount")
    if total_text is not None and not total_text.isdigit():
        raise MalformedResponse("total is not a whole number")
    return items, int(total_text) if total_text is not None else None


def parse_red_slip(item: object, bill_id: str) -> RedSlip:
    """One queryInvoiceRedConfirm ``list`` item (§2.11 step 2)."""
    if not isinstance(item, Mapping):
        raise MalformedResponse("a red-letter slip is not an object")
    code = _text(item, "billStatus")
    if code is None:
        raise MalformedResponse("a red-letter slip has no billStatus")
    status = slip_status(code)
    if status is None:
        # Keep polling rather than give up on the slip; the raw code goes to the audit log.
        logger.warning("unknown Nuonuo red-letter slip status %r for billId %s", code, bill_id)
        status = "applying"
    red_serial = _text(item, "invoiceSerialNum")
    return RedSlip(
        bill_id=_text(item, "billId") or bill_id,
        status=status,
        status_code=code,
        bill_no=_text(item, "billNo"),
        bill_uuid=_text(item, "billUuid"),
        # The red serial only comes back once the red invoice exists, so it proves it too.
        red_issued=_text(item, "openStatus") == "1" or red_serial is not None,
        red_serial=red_serial,
        red_order_no=_text(item, "orderNo"),
        message=_text(item, "billMessage"),
        bill_time=_timestamp(item, "billTime"),
    )
