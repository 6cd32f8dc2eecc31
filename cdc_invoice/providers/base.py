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
#   issuing [20, 21]  issued [2, 24]  failed [22]  voiding [31]  voided [3]
# 24 (开票成功签章失败) is an issued invoice whose seal failed: it exists at the bureau
# (发票详情查询 doc), so it is "issued" with ``seal_failed`` set, never "failed".
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
    seal_failed: bool = False  # status 24: issued (it exists), the electronic seal failed
    # failed for lack of the seller's monthly quota (发票总额度): the seller pauses, the invoice is
    # re-issued once the quota is back (issue 17); the provider decides from its own answer
    quota_exhausted: bool = False
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
#   awaiting_buyer [02]  awaiting_seller [03: the buyer applied; the seller must confirm]
#   cancelled [05, 06, 07 expired after 72 h, 08, 09]  failed [16]
SlipStatus = Literal[
    "applying", "ready", "awaiting_buyer", "awaiting_seller", "cancelled", "failed"
]


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
    bill_time: datetime | None = None  # billTime: the 72 h for the other side count from here


@dataclass(frozen=True, slots=True)
class BuyerSlipLine:
    """One line of a buyer-initiated slip: which blue line, and the (negative) red amounts."""

    blue_line_no: int  # blueDetailIndex
    name: str
    tax_code: str | None
    tax_rate: Decimal
    quantity: Decimal | None
    unit_price: Decimal | None  # excl. tax
    amount_excl_tax: Decimal
    tax: Decimal


@dataclass(frozen=True, slots=True)
class BuyerSlip:
    """A 红字确认单 the buyer applied for (applySource 1, status 03 until the seller answers)."""

    bill_id: str
    bill_no: str | None
    bill_uuid: str | None
    status_code: str
    blue_number: str
    red_reason: str
    bill_time: datetime  # the slip's own time: the 72 h for an answer count from here
    total_excl_tax: Decimal
    total_tax: Decimal
    lines: tuple[BuyerSlipLine, ...]


class Provider(Protocol):
    """An e-invoice platform. Every method is safe to call concurrently."""

    max_query_batch: int  # how many serials / order numbers one query may carry

    async def issue(self, seller: Seller, draft: InvoiceDraft, order_no: str) -> IssueAccepted:
        """Submit a blue invoice under the idempotency key ``order_no``."""
        ...

    async def reissue(self, seller: Seller, serial: str, order_no: str) -> IssueAccepted:
        """Ask the platform to issue a failed invoice (status 22) again under the SAME serial
        and order number (nuonuo.OpeMplatform.reInvoice, 开票重试 doc); poll it by serial.
        Refused with ProviderRejected, e.g. E9613 after 20 retries of one serial."""
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

    async def list_buyer_slips(self, seller: Seller, since: datetime) -> list[BuyerSlip]:
        """Slips the buyer applied for that wait for this seller (status 03), since ``since``."""
        ...

    async def confirm_red_slip(
        self, seller: Seller, bill_id: str, agree: bool, red_order_no: str
    ) -> None:
        """The seller's answer to a buyer's slip (confirm); on agreement the platform issues the
        red invoice of an electronic blue itself, under ``red_order_no``."""
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

    async def aclose(self) -> None:
        """Release connections."""
        ...
