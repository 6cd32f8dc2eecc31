"""Splitting an order's invoice lines over several invoices.

A group is one line, or a discounted line with its discount line: groups are never cut. Parts are
filled greedily in document order (so part 1 holds the first lines and a finance user finds a line
where they expect it); a part is closed when the next group would exceed the line limit (discount
lines count) or the per-invoice amount limit (tax-inclusive, net of discounts). This may use one
part more than an optimal packing; order is worth more than that.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from cdc_invoice.errors import Problem
from cdc_invoice.invoice import money
from cdc_invoice.invoice.model import InvoiceLine

Group = tuple[InvoiceLine, ...]


def group_amount(group: Group) -> Decimal:
    """What a group adds to an invoice's tax-inclusive total."""
    return sum((line.amount_incl_tax for line in group), money.ZERO)


def split_problems(groups: Sequence[Group], *, max_amount: Decimal | None) -> list[Problem]:
    """Groups that cannot fit on any invoice because their amount alone exceeds the limit."""
    if max_amount is None:
        return []
    return [
        Problem(
            f"the line's amount {group_amount(group)} (tax included) exceeds the seller's "
            f"per-invoice limit {max_amount}, and a line cannot be split across invoices",
            line_no=group[0].source_line_no,
            field="quantity",
            fix="split the line into several lines of smaller quantity in the order, or raise "
            "cdc_invoice.seller.max_invoice_amount",
        )
        for group in groups
        if group_amount(group) > max_amount
    ]


def plan_parts(
    groups: Sequence[Group], *, max_lines: int, max_amount: Decimal | None
) -> list[list[Group]]:
    """Consecutive runs of ``groups`` within both limits (``split_problems`` must be empty)."""
    parts: list[list[Group]] = [[]]
    lines, amount = 0, money.ZERO
    for group in groups:
        size, value = len(group), group_amount(group)
        full = lines + size > max_lines
        too_much = max_amount is not None and amount + value > max_amount
        if parts[-1] and (full or too_much):
            parts.append([])
            lines, amount = 0, money.ZERO
        parts[-1].append(group)
        lines += size
        amount += value
    return _no_zero_parts(parts, max_lines=max_lines, max_amount=max_amount)


def _no_zero_parts(
    parts: list[list[Group]], *, max_lines: int, max_amount: Decimal | None
) -> list[list[Group]]:
    """A part worth nothing (only lines discounted to zero) cannot be an invoice: the platform
    refuses a blue invoice whose total is not positive. Pull the previous part's trailing groups
    into it, up to and including one with value, while both limits hold (order is kept)."""
    for n in range(1, len(parts)):
        part, previous = parts[n], parts[n - 1]
        if sum((group_amount(g) for g in part), money.ZERO) > 0:
            continue
        moved: list[Group] = []
        while previous:
            moved.insert(0, previous.pop())
            if group_amount(moved[0]) > 0:
                break
        candidate = moved + part
        lines = sum(len(g) for g in candidate)
        amount = sum((group_amount(g) for g in candidate), money.ZERO)
        fits = lines <= max_lines and (max_amount is None or amount <= max_amount)
        if fits and amount > 0 and any(group_amount(g) > 0 for g in previous):
            parts[n] = candidate
        else:
            previous.extend(moved)  # cannot: check_invoice reports the zero part
    return parts
