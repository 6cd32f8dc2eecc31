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

from cdc_invoice.invoice.model import InvoiceDraft, Seller

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
    lines: tuple[PlatformLine, ...] = field(default_factory=tuple)


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

    async def aclose(self) -> None:
        """Release connections."""
        ...
