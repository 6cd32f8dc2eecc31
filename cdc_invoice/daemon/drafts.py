"""Persisting computed drafts between submit and record, and turning them into invoice rows.

What is recorded is what was sent: the drafts are stored (as JSON with decimal strings) in the
request's ``progress`` when the platform accepts them, and read back when the result arrives,
so a mapping edited in between cannot change a recorded invoice.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from decimal import Decimal
from functools import cache
from typing import Any

from cdc_invoice.invoice.model import Buyer, InvoiceDraft, InvoiceLine, LineProperty, Seller
from cdc_invoice.providers.base import PlatformInvoice

_DECIMAL_LINE_FIELDS = (
    "tax_rate",
    "quantity",
    "unit_price",
    "amount_excl_tax",
    "tax",
    "amount_incl_tax",
)


@cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _plain(value: Any) -> Any:
    """JSON-ready: Decimals as strings, dataclasses as dicts (not dataclasses.asdict, which
    deep-copies every value and was a twentieth of the daemon's CPU)."""
    if isinstance(value, Decimal):
        return str(value)
    if value is None or isinstance(value, str | int | float):
        return value
    if is_dataclass(value) and not isinstance(value, type):
        return {name: _plain(getattr(value, name)) for name in _field_names(type(value))}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def draft_to_json(draft: InvoiceDraft) -> dict[str, Any]:
    data: dict[str, Any] = _plain(draft)
    for line in data["lines"]:
        line["property"] = int(line["property"])
    return data


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def draft_from_json(data: dict[str, Any]) -> InvoiceDraft:
    lines = []
    for raw in data["lines"]:
        line = dict(raw)
        for key in _DECIMAL_LINE_FIELDS:
            line[key] = _dec(line.get(key))
        line["property"] = LineProperty(int(line["property"]))
        lines.append(InvoiceLine(**line))
    return InvoiceDraft(
        source=data["source"],
        order_ref=data["order_ref"],
        buyer=Buyer(**data["buyer"]),
        invoice_line=data["invoice_line"],
        lines=tuple(lines),
        total_excl_tax=Decimal(data["total_excl_tax"]),
        total_tax=Decimal(data["total_tax"]),
        total_incl_tax=Decimal(data["total_incl_tax"]),
        kind=data["kind"],
        part=data["part"],
        parts=data["parts"],
        remark=data["remark"],
        extra=data["extra"],
    )


def order_no(base: str, part: int) -> str:
    """The platform order number (idempotency key) of one part of a request."""
    return f"{base}{part:02d}"


def invoice_row(
    *,
    request_id: int,
    seller: Seller,
    draft: InvoiceDraft,
    order_no: str,
    result: PlatformInvoice,
    original_invoice_id: int | None = None,
) -> dict[str, Any]:
    """The cdc_invoice.invoice row (with its lines) for an issued draft. An answer without
    number or issue time is not an issued invoice yet: the caller polls again (ValueError)."""
    if result.number is None or result.issued_at is None:
        raise ValueError(f"invoice {result.serial}: no number or issue time in the answer")
    return {
        "request_id": request_id,
        "part": draft.part,
        "source": draft.source,
        "order_ref": draft.order_ref,
        "seller_id": seller.seller_id,
        "invoice_number": result.number,
        "kind": draft.kind,
        "invoice_line": draft.invoice_line,
        "original_invoice_id": original_invoice_id,
        "platform_serial": result.serial,
        "platform_order_no": order_no,
        "issued_at": result.issued_at,
        "buyer_name": draft.buyer.name,
        "buyer_tax_number": draft.buyer.tax_number,
        "buyer_email": draft.buyer.email,
        "buyer_phone": draft.buyer.phone,
        "total_excl_tax": draft.total_excl_tax,
        "total_tax": draft.total_tax,
        "total_incl_tax": draft.total_incl_tax,
        "pdf_url": result.pdf_url,
        "ofd_url": result.ofd_url,
        "xml_url": result.xml_url,
        "delivery_status": None,
        "paper_code": result.paper_code,
        "paper_number": result.paper_number,
        "remark": draft.remark,
        "seal_failed": result.seal_failed,
        "lines": [
            {
                "line_no": line.line_no,
                "source_line_no": line.source_line_no,
                "line_property": int(line.property),
                "item_ref": line.item_ref,
                "item_name": line.name,
                "tax_code": line.tax_code,
                "quantity": line.quantity,
                "unit_price": line.unit_price,
                "price_includes_tax": line.price_includes_tax,
                "amount_excl_tax": line.amount_excl_tax,
                "tax_rate": line.tax_rate,
                "tax": line.tax,
                "amount_incl_tax": line.amount_incl_tax,
            }
            for line in draft.lines
        ],
        "event_detail": {"order_no": order_no, "serial": result.serial}
        | ({"status": result.status_code, "seal_failed": True} if result.seal_failed else {}),
    }


def mismatch(draft: InvoiceDraft, found: PlatformInvoice) -> str | None:
    """Why an invoice found at the platform under our order number is not this draft, if so.

    Adoption after a lost response must not take someone else's invoice for ours.
    """
    problems = []
    if found.buyer_name is not None and found.buyer_name != draft.buyer.name:
        problems.append(f"buyer {found.buyer_name!r} != {draft.buyer.name!r}")
    if found.total_incl_tax is not None and found.total_incl_tax != draft.total_incl_tax:
        problems.append(f"total {found.total_incl_tax} != {draft.total_incl_tax}")
    if found.total_tax is not None and found.total_tax != draft.total_tax:
        problems.append(f"tax {found.total_tax} != {draft.total_tax}")
    return "; ".join(problems) or None
