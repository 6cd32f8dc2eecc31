"""Our value objects ⇄ Nuonuo JSON: requestBillingNew ``order`` (§2.7), queryInvoiceResult (§2.9).

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
from cdc_invoice.providers.base import PlatformInvoice, PlatformLine, PlatformStatus

logger = logging.getLogger(__name__)

# China has had no DST since 1991, so a fixed +08:00 offset is exact and needs no tzdata.
CHINA_TZ: Final = timezone(timedelta(hours=8), "Asia/Shanghai")

STATUS: Final[dict[str, PlatformStatus]] = {
    "20": "issuing",
    "21": "issuing",
    "2": "issued",
    "22": "failed",
    "24": "failed",
    "31": "voiding",
    "3": "voided",
}

MAX_QUANTITY_DECIMALS: Final = 8  # price and num (§2.7)
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
    order["clerk"] = seller.clerk
    tail: tuple[tuple[str, str | None], ...] = (
        ("payee", seller.payee),
        ("checker", seller.checker),
    )
    order.update((key, value) for key, value in tail if value)
    order["invoiceType"] = "1"
    order["invoiceLine"] = draft.invoice_line
    if seller.extension_number:
        order["extensionNumber"] = seller.extension_number
    if draft.remark:
        order["remark"] = draft.remark
    order["invoiceDetail"] = [_line(line) for line in draft.lines]
    return {"order": order}


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
    )
