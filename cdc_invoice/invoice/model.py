"""Value objects shared by the domain, the daemon and the providers.

All money is ``Decimal``. Amounts on invoices are rounded to cents (ROUND_HALF_UP) by the domain
functions that create them; these classes only carry values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import IntEnum
from typing import Literal

InvoiceKind = Literal["blue", "red"]


@dataclass(frozen=True, slots=True)
class Seller:
    """A row of cdc_invoice.seller."""

    seller_id: str
    tax_number: str
    name: str
    address: str | None = None
    phone: str | None = None
    bank_account: str | None = None
    # 开票人: the issuing account's 开票员 name (requestBillingNew clerk, ≤ 20). No default: a
    # guessed name is refused by the platform, so a seller without one fails with the fix.
    clerk: str | None = None
    payee: str | None = None  # 收款人 (≤ 20)
    checker: str | None = None  # 复核人 (≤ 20)
    invoice_line: str = "pc"  # default invoice kind: pc 数电普票, bs 数电专票, es/ec paper 数电
    extension_number: str | None = None
    max_invoice_amount: Decimal | None = None  # optional per-invoice limit (incl. tax) -> split
    max_lines: int = 2000  # platform limit, discount lines included
    remark_template: str | None = None  # 备注 when the view gives none: '订单 {order_ref}'
    show_bank_account: str = "none"  # none / seller / buyer / both (showBankAccountType)
    survey_answer_type: str | None = None  # '1'..'3': why a small-scale seller uses 1 %/3 %


@dataclass(frozen=True, slots=True)
class Buyer:
    """The buyer as printed: cdc_invoice.buyer, overridden by the document's buyer_* columns."""

    name: str
    tax_number: str | None = None
    email: str | None = None
    phone: str | None = None
    address: str | None = None
    bank_account: str | None = None
    natural_person: bool = False
    invoice_line: str | None = (
        None  # buyer-specific invoice kind (e.g. 'bs' for 专票); None = seller's
    )


@dataclass(frozen=True, slots=True)
class ItemTax:
    """A row of cdc_invoice.item_tax."""

    item_ref: str
    tax_code: str
    tax_rate: Decimal
    short_name: str | None = None
    policy_flag: str | None = None


@dataclass(frozen=True, slots=True)
class OrderLine:
    """One line of an order after mapping, before any rounding."""

    line_no: int
    item_ref: str | None
    name: str
    tax_code: str
    tax_rate: Decimal
    quantity: Decimal
    unit_price: Decimal
    price_includes_tax: bool = True
    discount: Decimal = Decimal(0)  # line discount amount, same tax basis as unit_price
    spec: str | None = None
    unit: str | None = None
    short_name: str | None = None
    policy_flag: str | None = None
    tax_from_view: bool = False  # the document view gave tax_code/tax_rate (overriding item_tax)


@dataclass(frozen=True, slots=True)
class Order:
    """An order ready for invoice computation."""

    source: str
    order_ref: str
    buyer: Buyer
    lines: tuple[OrderLine, ...]
    invoice_line: str = "pc"
    order_discount: Decimal = Decimal(0)  # order-level discount, spread over lines by amount
    remark: str | None = None


class LineProperty(IntEnum):
    """Nuonuo invoiceLineProperty."""

    NORMAL = 0
    DISCOUNT = 1  # the negative line that follows a discounted line
    DISCOUNTED = 2  # the line a discount applies to


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """A computed invoice line, every amount rounded to cents and every platform rule satisfied."""

    line_no: int  # 1-based position on the invoice (what red-letter blueDetailIndex refers to)
    source_line_no: int | None  # the document's line_no this came from
    item_ref: str | None
    name: str
    tax_code: str
    tax_rate: Decimal
    quantity: Decimal | None  # None on discount lines
    unit_price: Decimal | None  # on the basis given by price_includes_tax; None on discount lines
    price_includes_tax: bool
    amount_excl_tax: Decimal
    tax: Decimal
    amount_incl_tax: Decimal
    property: LineProperty = LineProperty.NORMAL
    spec: str | None = None
    unit: str | None = None
    short_name: str | None = None
    policy_flag: str | None = None


@dataclass(frozen=True, slots=True)
class InvoiceDraft:
    """One invoice to issue (an order may need several: see ``part`` / ``parts``)."""

    source: str
    order_ref: str
    buyer: Buyer
    invoice_line: str
    lines: tuple[InvoiceLine, ...]
    total_excl_tax: Decimal
    total_tax: Decimal
    total_incl_tax: Decimal
    kind: InvoiceKind = "blue"
    part: int = 1
    parts: int = 1
    remark: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
