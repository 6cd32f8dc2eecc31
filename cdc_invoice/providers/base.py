"""The provider port: what the daemon needs from an e-invoice platform, as value objects.

Adapters map their transport and protocol errors to ``cdc_invoice.errors.ProviderError``
subclasses once, at their boundary; the daemon never sees httpx or JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal, Protocol

from cdc_invoice.invoice.model import InvoiceDraft, InvoiceLine, Seller

# Normalised platform invoice states (Nuonuo codes in brackets):
#   issuing [20, 21]  issued [2]  failed [22, 24]  voiding [31]  voided [3]
PlatformStatus = Literal["issuing", "issued", "failed", "voiding", "voided"]


@dataclass(frozen=True, slots=True)
class IssueAccepted:
    """The platform accepted an issue request; the result comes later (poll by serial)."""

    order_no: str
    serial: str


@dataclass(frozen=True, slots=True)
class PlatformLine:
    line_no: int
    name: str
    tax_code: str | None
    quantity: Decimal | None
    unit_price: Decimal | None
    amount_excl_tax: Decimal
    tax_rate: Decimal
    tax: Decimal
    property: int = 0


@dataclass(frozen=True, slots=True)
class PlatformInvoice:
    """What the platform says about one invoice request (queryInvoiceResult item)."""

    serial: str
    order_no: str
    status: PlatformStatus
    status_code: str  # the platform's own code, kept for the audit log
    number: str | None = None  # 20-digit 数电 number once issued
    issued_at: datetime | None = None
    buyer_name: str | None = None
    buyer_tax_number: str | None = None
    total_excl_tax: Decimal | None = None
    total_tax: Decimal | None = None
    total_incl_tax: Decimal | None = None
    pdf_url: str | None = None
    ofd_url: str | None = None
    xml_url: str | None = None
    fail_cause: str | None = None
    invoice_kind: str | None = None  # e.g. 'blue' / 'red' where the platform says
    paper_code: str | None = None  # 发票代码 of a paper invoice (es/ec); void and delivery need it
    paper_number: str | None = None  # its 8-digit paper number
    original_number: str | None = None  # a red invoice's blue invoice number
    lines: tuple[PlatformLine, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class InvoiceRef:
    """An issued invoice as the lifecycle calls name it."""

    serial: str
    order_no: str
    number: str  # 20-digit 数电 number (or 8-digit paper number)
    invoice_line: str  # pc, bs, es, ec, …
    buyer_name: str
    buyer_tax_number: str | None = None
    paper_code: str | None = None  # 发票代码 of a paper invoice, when it has one
    paper_number: str | None = None


# Red-letter confirmation slip (红字确认单) states, normalised (Nuonuo billStatus in brackets):
#   applying [15]  ready [01 no confirmation needed, 04 confirmed by both]
#   awaiting_buyer [02, 03]  cancelled [05, 06, 07 expired after 72 h, 08, 09]  failed [16]
SlipStatus = Literal["applying", "ready", "awaiting_buyer", "cancelled", "failed"]


@dataclass(frozen=True, slots=True)
class RedSlip:
    bill_id: str  # ours: the idempotency key of the red-letter request
    status: SlipStatus
    status_code: str
    bill_no: str | None = None
    bill_uuid: str | None = None
    red_issued: bool = False  # openStatus 1: the red invoice exists
    red_serial: str | None = None
    red_order_no: str | None = None
    message: str | None = None


class Provider(Protocol):
    """An e-invoice platform. Every method is safe to call concurrently."""

    max_query_batch: int  # how many serials / order numbers one query may carry

    async def issue(self, seller: Seller, draft: InvoiceDraft, order_no: str) -> IssueAccepted:
        """Submit a blue invoice under the idempotency key ``order_no``."""
        ...

    async def query_by_serials(
        self, seller: Seller, serials: Sequence[str]
    ) -> list[PlatformInvoice]:
        """Status of up to ``max_query_batch`` invoices by platform serial; unknown ones omitted."""
        ...

    async def query_by_order_nos(
        self, seller: Seller, order_nos: Sequence[str]
    ) -> list[PlatformInvoice]:
        """Status by our order numbers (to resolve an unknown outcome); unknown ones omitted."""
        ...

    async def request_red_slip(
        self,
        seller: Seller,
        blue: InvoiceRef,
        red_lines: Sequence[InvoiceLine] | None,
        reason: str,
        bill_id: str,
        red_order_no: str,
    ) -> str:
        """Apply for a red-letter confirmation slip (saveInvoiceRedConfirm); returns bill_id.

        ``red_lines`` None = full reversal; otherwise the red lines (negative amounts, line_no =
        the blue line index). ``reason`` is '1'..'4'. For electronic kinds (pc/bs) the platform
        issues the red invoice itself under ``red_order_no`` once the slip is ready.
        """
        ...

    async def query_red_slip(self, seller: Seller, bill_id: str) -> RedSlip | None:
        """The slip by our bill_id (queryInvoiceRedConfirm); None if the platform has none."""
        ...

    async def issue_red_from_slip(
        self, seller: Seller, blue: InvoiceRef, slip: RedSlip, red_order_no: str
    ) -> IssueAccepted:
        """Issue the red invoice of a ready slip (fastInvoiceRed): paper kinds es/ec, or to
        fetch an auto-issued electronic red invoice."""
        ...

    async def void(self, seller: Seller, invoice: InvoiceRef, reason: str) -> None:
        """Ask to void (作废) a paper invoice (invoiceCancellation); poll the result by serial."""
        ...

    async def deliver(
        self, seller: Seller, invoice: InvoiceRef, email: str | None, phone: str | None
    ) -> None:
        """Send the invoice again to an email and/or phone (deliveryInvoice)."""
        ...

    async def list_invoices(
        self, seller: Seller, start: datetime, end: datetime
    ) -> list[PlatformInvoice]:
        """Every invoice issued between start and end (queryInvoiceList, all pages)."""
        ...

    async def re_invoice(self, seller: Seller, serial: str) -> None:
        """Resubmit an invoice the platform failed (status 22) under its serial and order
        number (reInvoice); poll the result by serial. Used once the quota is back."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
