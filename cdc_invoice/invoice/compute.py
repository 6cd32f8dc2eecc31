"""From an ``Order`` to the invoices to issue: amounts, discounts, splitting, tax balancing.

Per line (nuonuo.md §3.3, the reference method, ``money.split_amount``):
- tax-inclusive price: incl = cents(qty × price); excl = cents(incl / (1 + rate)); tax = incl − excl
- tax-exclusive price: excl = cents(qty × price); tax = cents(excl × rate); incl = excl + tax
  (but see below: the tax of tax-exclusive lines is rounded per rate, not per line).

Discounts are amounts on the line's own price basis. A discounted line keeps its full amounts and is
followed by a discount line of −discount on that basis. For a tax-inclusive price, the discount
line's excl part is the difference between the reference method on the net and on the gross, so
the pair splits like a line of the net amount (except that a discount line's excl part is at least
one cent). The order-level discount is spread over the lines in proportion to their amounts after
line discounts (largest remainder, ``money.allocate``) and merged into each line's discount.

Tax on tax-exclusive lines is rounded once per rate for the whole order, not per line: lines take
it in document order by running rounding (each line gets cents(running Σ excl × rate) minus what
the lines before it got). Rounding every line on its own can leave the invoice's tax too far from
Σ excl × rate for the platform (0.0042 short on each 0.421 × 0.333 line at 3 %: 303 lines break
1.27), and with the excl amount pinned to quantity × price only the tax total can give. Each line
stays within 0.01 of excl × rate, and any run of lines (an invoice part) within 0.01 per rate.

The order's total, which every invoice set reconciles with to the cent, is therefore, with
net = cents(quantity × price) − the line's discounts (own and its share of the order's):
- tax-inclusive prices: Σ net (the customer pays the tax-inclusive amounts the order shows);
- tax-exclusive prices: Σ net + Σ per rate cents(Σ net × rate).

Tax-inclusive lines use the reference method per line. Their rounding errors are at most half a
cent times (1 + rate) and all have the same sign on an invoice of identical lines, so a long invoice
can drift past the platform's 1.27 limit on |Σ amount × rate − total tax|. ``_balance_tax`` then
moves single cents between amount and tax on a few lines, never changing a line's tax-inclusive
amount (so totals stay as above), and keeping every line rule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from decimal import Decimal

from cdc_invoice.errors import InvalidOrder, Problem
from cdc_invoice.invoice import money
from cdc_invoice.invoice.model import (
    InvoiceDraft,
    InvoiceLine,
    LineProperty,
    Order,
    OrderLine,
    Seller,
)
from cdc_invoice.invoice.split import Group, plan_parts, split_problems
from cdc_invoice.invoice.validate import (
    INVOICE_TAX_TOLERANCE,
    LINE_TAX_TOLERANCE,
    PRICE_TOLERANCE,
    check_invoice,
    order_warnings,
    validate_order,
)

logger = logging.getLogger(__name__)

# Balance to well inside 1.27 so that a platform summing rounded products still accepts it.
TAX_DRIFT_TARGET = Decimal("1.00")


def build_invoices(
    order: Order, seller: Seller, *, warn: Callable[[Problem], None] | None = None
) -> list[InvoiceDraft]:
    """Validate and compute ``order``: one draft per invoice to issue, with ``part``/``parts``.

    Raises ``InvalidOrder`` listing every problem found. What is allowed but probably wrong
    (validate.order_warnings) goes to ``warn``, by default the log.
    """
    problems = validate_order(order, seller)
    if problems:
        raise InvalidOrder(problems, source=order.source, order_ref=order.order_ref)
    for warning in order_warnings(order):
        if warn is None:
            logger.warning("order %s/%s: %s", order.source, order.order_ref, warning)
        else:
            warn(warning)
    discounts = line_discounts(order)
    groups = [_group(line, discount) for line, discount in zip(order.lines, discounts, strict=True)]
    groups = _tax_exclusive_lines(groups)
    limit = seller.max_invoice_amount
    problems = split_problems(groups, max_amount=limit)
    if problems:
        raise InvalidOrder(problems, source=order.source, order_ref=order.order_ref)
    parts = plan_parts(groups, max_lines=seller.max_lines, max_amount=limit)
    drafts = [_draft(order, part, n, len(parts)) for n, part in enumerate(parts, 1)]
    problems = [
        problem
        for draft in drafts
        for problem in check_invoice(draft, max_lines=seller.max_lines, max_amount=limit)
    ]
    if problems:
        raise InvalidOrder(problems, source=order.source, order_ref=order.order_ref)
    return drafts


def line_discounts(order: Order) -> list[Decimal]:
    """Each line's whole discount in cents: its own plus its share of the order discount."""
    own = [money.cents(line.discount) for line in order.lines]
    net = [
        money.line_amount(line.quantity, line.unit_price) - discount
        for line, discount in zip(order.lines, own, strict=True)
    ]
    shares = money.allocate(money.cents(order.order_discount), net)
    return [a + b for a, b in zip(own, shares, strict=True)]


def _group(line: OrderLine, discount: Decimal) -> Group:
    """The invoice line for ``line``, followed by its discount line when it has a discount.

    Tax-exclusive lines get their tax in ``_tax_exclusive_lines``.
    """
    gross = money.line_amount(line.quantity, line.unit_price)
    excl, tax = money.split_amount(gross, line.tax_rate, includes_tax=line.price_includes_tax)
    main = InvoiceLine(
        line_no=0,  # numbered per invoice once split
        source_line_no=line.line_no,
        item_ref=line.item_ref,
        name=line.name.strip(),
        tax_code=line.tax_code,
        tax_rate=line.tax_rate,
        quantity=money.round_quantity(line.quantity),
        unit_price=money.round_quantity(line.unit_price),
        price_includes_tax=line.price_includes_tax,
        amount_excl_tax=excl,
        tax=tax,
        amount_incl_tax=excl + tax,
        spec=line.spec,
        unit=line.unit,
        short_name=line.short_name,
        policy_flag=line.policy_flag or None,
    )
    if discount == 0:
        return (main,)
    if line.price_includes_tax:
        net_excl = money.excl_from_incl(gross - discount, line.tax_rate)
        d_incl = -discount
        # A one-cent discount can leave the excl amount unchanged; a discount line needs a
        # negative amount (乐企), so take the cent from the amount instead of the tax.
        d_excl = min(net_excl - excl, -money.CENT)
    else:
        d_excl = d_incl = -discount
    disc = replace(
        main,
        quantity=None,
        unit_price=None,
        amount_excl_tax=d_excl,
        tax=d_incl - d_excl,
        amount_incl_tax=d_incl,
        property=LineProperty.DISCOUNT,
        spec=None,  # 乐企: spec, unit, quantity and price are empty on a discount line
        unit=None,
    )
    return (replace(main, property=LineProperty.DISCOUNTED), disc)


def _tax_exclusive_lines(groups: Sequence[Group]) -> list[Group]:
    """Tax for tax-exclusive lines by running rounding per rate, in document order (see module)."""
    exact: dict[Decimal, Decimal] = {}  # rate -> Σ excl × rate of the lines so far, unrounded
    result = []
    for group in groups:
        lines = []
        for line in group:
            if not line.price_includes_tax:
                before = exact.get(line.tax_rate, money.ZERO)
                after = exact[line.tax_rate] = before + money.mul(
                    line.amount_excl_tax, line.tax_rate
                )
                tax = money.cents(after) - money.cents(before)
                line = replace(line, tax=tax, amount_incl_tax=line.amount_excl_tax + tax)
            lines.append(line)
        result.append(tuple(lines))
    return result


def _draft(order: Order, groups: Sequence[Group], part: int, parts: int) -> InvoiceDraft:
    lines = _balance_tax([line for group in groups for line in group])
    lines = [replace(line, line_no=n) for n, line in enumerate(lines, 1)]
    return InvoiceDraft(
        source=order.source,
        order_ref=order.order_ref,
        buyer=order.buyer,
        invoice_line=order.invoice_line,
        lines=tuple(lines),
        total_excl_tax=sum((line.amount_excl_tax for line in lines), money.ZERO),
        total_tax=sum((line.tax for line in lines), money.ZERO),
        total_incl_tax=sum((line.amount_incl_tax for line in lines), money.ZERO),
        part=part,
        parts=parts,
        remark=order.remark,
    )


def _error(line: InvoiceLine) -> Decimal:
    """tax − amount × rate: what the line adds to the invoice's tax drift."""
    return line.tax - money.mul(line.amount_excl_tax, line.tax_rate)


def _balance_tax(lines: list[InvoiceLine]) -> list[InvoiceLine]:
    """Bring |Σ (tax − amount × rate)| under ``TAX_DRIFT_TARGET`` by moving cents (see module).

    First only on lines whose excl amount stays within 0.01 of price × quantity on the excl basis
    (a platform may check that too, unverified); if that cannot get under 1.27, on any line.
    """
    result = _move_cents(lines, strict=True)
    if abs(_drift(result)) > INVOICE_TAX_TOLERANCE:
        result = _move_cents(result, strict=False)
    return result


def _drift(lines: Sequence[InvoiceLine]) -> Decimal:
    return sum((_error(line) for line in lines), money.ZERO)


def _move_cents(lines: list[InvoiceLine], *, strict: bool) -> list[InvoiceLine]:
    drift = _drift(lines)
    if abs(drift) <= TAX_DRIFT_TARGET:
        return lines
    step = money.CENT if drift > 0 else -money.CENT  # added to the amount, taken from the tax
    # Most helpful first: lines whose own error has the drift's sign, largest first.
    order = sorted(range(len(lines)), key=lambda i: (-_error(lines[i]) * step, i))
    result = list(lines)
    for i in order:
        if abs(drift) <= TAX_DRIFT_TARGET:
            break
        moved = _shift(result, i, step, strict=strict)
        if moved is not None:
            drift += _error(moved) - _error(result[i])
            result[i] = moved
    return result


def _shift(
    lines: Sequence[InvoiceLine], i: int, step: Decimal, *, strict: bool
) -> InvoiceLine | None:
    """Line ``i`` with ``step`` moved from tax to amount, or None if a rule would break."""
    line = lines[i]
    if line.property == LineProperty.DISCOUNT or line.quantity is None or line.unit_price is None:
        return None
    moved = replace(line, amount_excl_tax=line.amount_excl_tax + step, tax=line.tax - step)
    if moved.amount_excl_tax <= 0 or moved.tax < 0 or abs(_error(moved)) > LINE_TAX_TOLERANCE:
        return None
    # Tax-exclusive: price × quantity must stay within 0.01 of the amount (the rule). Tax-inclusive:
    # the platform may derive the excl price as price / (1 + rate) and check the same (strict).
    ideal = money.mul(line.quantity, line.unit_price)
    if line.price_includes_tax:
        ideal = money.div(ideal, 1 + line.tax_rate) if strict else moved.amount_excl_tax
    if abs(ideal - moved.amount_excl_tax) > PRICE_TOLERANCE:
        return None
    if line.property == LineProperty.DISCOUNTED:
        disc = lines[i + 1]
        if -disc.amount_excl_tax > moved.amount_excl_tax or -disc.tax > moved.tax:
            return None
    return moved
