"""From the document snapshot (one JSON object per invoice line) to an ``Order``.

Document columns override the mapping tables: ``buyer_*`` override cdc_invoice.buyer (keyed by
customer_ref), ``tax_code``/``tax_rate`` override cdc_invoice.item_tax (keyed by item_ref). A
mapping row is needed only for what the document does not give: a customer without buyer_name, an
item without tax_code or tax_rate. Every unmapped customer and item is reported at once, each with
the INSERT that fixes it.

Values are only parsed here (numbers to ``Decimal``); the invoice rules live in validate.py.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any, TypeVar

from cdc_invoice.errors import InvalidOrder, MappingError, Problem
from cdc_invoice.invoice import money
from cdc_invoice.invoice.model import Buyer, ItemTax, Order, OrderLine, Seller

T = TypeVar("T")

_VIEW = "the document view"
_HEADER_TEXT = ("customer_ref", "buyer_name", "buyer_tax_number", "buyer_email", "buyer_phone")
_TRUE = frozenset({"t", "true", "1", "y", "yes", "on"})
_FALSE = frozenset({"f", "false", "0", "n", "no", "off"})


def document_refs(rows: Sequence[Mapping[str, Any]]) -> tuple[set[str], set[str]]:
    """(customer_refs, item_refs) named by the rows: the keys to look up in the mapping tables."""
    customers = {ref for row in rows if (ref := _text(row.get("customer_ref")))}
    items = {ref for row in rows if (ref := _text(row.get("item_ref")))}
    return customers, items


def build_order(
    source: str,
    order_ref: str,
    rows: Sequence[Mapping[str, Any]],
    buyers: Mapping[str, Buyer],
    items: Mapping[str, ItemTax],
    seller: Seller,
) -> Order:
    """Map and parse the document rows; ``MappingError`` if a mapping row is missing (its
    problems then include any others found), ``InvalidOrder`` if values cannot be parsed."""
    if not rows:
        raise InvalidOrder(
            [
                Problem(
                    "the order has no lines",
                    field="lines",
                    fix=f"make {_VIEW} return one row per invoice line for this order",
                )
            ],
            source=source,
            order_ref=order_ref,
        )
    unmapped: list[Problem] = []
    problems: list[Problem] = []
    header = _header(rows, problems)
    buyer = _buyer(source, header, buyers, unmapped, problems)
    lines = [
        line
        for position, row in enumerate(rows, 1)
        if (line := _line(position, row, items, problems)) is not None
    ]
    unmapped += _unmapped_items(source, rows, items)
    order_discount = _order_discount(rows, problems)
    remark = _remark(source, order_ref, rows, seller, problems)
    if unmapped:
        raise MappingError(unmapped + problems, source=source, order_ref=order_ref)
    if problems or buyer is None:
        raise InvalidOrder(problems, source=source, order_ref=order_ref)
    return Order(
        source=source,
        order_ref=order_ref,
        buyer=buyer,
        lines=tuple(sorted(lines, key=lambda line: line.line_no)),
        invoice_line=buyer.invoice_line or seller.invoice_line,
        order_discount=order_discount,
        remark=remark,
    )


REMARK_FIELDS = ("order_ref", "source")


def _remark(
    source: str,
    order_ref: str,
    rows: Sequence[Mapping[str, Any]],
    seller: Seller,
    problems: list[Problem],
) -> str | None:
    """备注: the first non-empty ``remark`` of the order's rows (in line order), else the
    seller's ``remark_template`` filled in ({order_ref}, {source}), else none."""
    for row in sorted(rows, key=_row_position):
        if text := _text(row.get("remark")):
            return text
    template = seller.remark_template
    if not template or not template.strip():
        return None
    fix = (
        f"UPDATE cdc_invoice.seller SET remark_template = '订单 {{order_ref}}' "
        f"WHERE seller_id = {sql_literal(seller.seller_id)};"
    )
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        unknown = sorted(names - set(REMARK_FIELDS))
        if unknown:
            raise ValueError(f"unknown field {{{unknown[0]}}}")
        return template.format(order_ref=order_ref, source=source).strip() or None
    except (ValueError, IndexError) as exc:
        problems.append(
            Problem(
                f"the seller's remark_template {template!r} cannot be filled in: {exc} "
                f"(it may use {', '.join('{' + f + '}' for f in REMARK_FIELDS)})",
                field="seller.remark_template",
                fix=fix,
            )
        )
        return None


def _row_position(row: Mapping[str, Any]) -> Decimal:
    try:
        return money.to_decimal(row.get("line_no"), field="line_no")
    except (ValueError, TypeError):
        return Decimal("Infinity")  # unparsable line numbers are reported elsewhere


def sql_literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings: only quotes need doubling)."""
    return "'" + value.replace("'", "''") + "'"


# "*简称*名称": the platform prints the code's short name between asterisks before goodsName, so
# a name that already starts with one (copied from an earlier invoice) would print it twice.
_SHORT_NAME_PREFIX = re.compile(r"\*[^*]+\*")


def item_name(raw: object) -> str:
    """The item name to send: without a leading ``*简称*`` (the platform adds its own)."""
    text = _text(raw) or ""
    match = _SHORT_NAME_PREFIX.match(text)
    return text[match.end() :].strip() if match else text


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _header(rows: Sequence[Mapping[str, Any]], problems: list[Problem]) -> dict[str, str]:
    """Order-level text columns; every row must carry the same value (or none)."""
    header: dict[str, str] = {}
    for column in _HEADER_TEXT:
        values = sorted({v for row in rows if (v := _text(row.get(column)))})
        if len(values) > 1:
            problems.append(_disagree(column, values))
        elif values:
            header[column] = values[0]
    return header


def _disagree(column: str, values: Sequence[object]) -> Problem:
    shown = ", ".join(repr(v) for v in values[:5])
    return Problem(
        f"the rows disagree on {column}: {shown}",
        field=column,
        fix=f"make {_VIEW} repeat the order's single {column} on every line",
    )


def _buyer(
    source: str,
    header: Mapping[str, str],
    buyers: Mapping[str, Buyer],
    unmapped: list[Problem],
    problems: list[Problem],
) -> Buyer | None:
    ref, name = header.get("customer_ref"), header.get("buyer_name")
    mapped = buyers.get(ref) if ref else None
    if mapped is None and name is None:
        if ref is None:
            problems.append(
                Problem(
                    "the order has neither a customer_ref nor a buyer_name",
                    field="customer_ref",
                    fix=f"add a customer_ref (or buyer_name) column to {_VIEW}",
                )
            )
        else:
            tax_number = header.get("buyer_tax_number")
            values = ", ".join(
                [
                    sql_literal(source),
                    sql_literal(ref),
                    "'<buyer name>'",
                    sql_literal(tax_number) if tax_number else "NULL",
                ]
            )
            unmapped.append(
                Problem(
                    f"customer {ref!r} has no row in cdc_invoice.buyer",
                    field="customer_ref",
                    fix="INSERT INTO cdc_invoice.buyer (source, customer_ref, name, tax_number) "
                    f"VALUES ({values});",
                )
            )
        return None
    buyer = mapped or Buyer(name="")
    return replace(
        buyer,
        name=header.get("buyer_name", buyer.name),
        tax_number=header.get("buyer_tax_number", buyer.tax_number),
        email=header.get("buyer_email", buyer.email),
        phone=header.get("buyer_phone", buyer.phone),
    )


def _line(
    position: int, row: Mapping[str, Any], items: Mapping[str, ItemTax], problems: list[Problem]
) -> OrderLine | None:
    """One order line, or None after adding its parse problems to ``problems``."""
    before = len(problems)
    line_no = _parse(row.get("line_no"), _line_no, position, "line_no", position, problems)
    at = line_no if line_no is not None else position
    item_ref = _text(row.get("item_ref"))
    item = items.get(item_ref) if item_ref else None

    def number(column: str, default: Decimal | None = None) -> Decimal | None:
        return _parse(row.get(column), _number(column), default, column, at, problems)

    quantity, unit_price = number("quantity"), number("unit_price")
    discount = number("discount", money.ZERO)
    rate = number("tax_rate", item.tax_rate if item else None)
    includes_tax = _parse(
        row.get("price_includes_tax"), _flag, True, "price_includes_tax", at, problems
    )
    code = _text(row.get("tax_code")) or (item.tax_code if item else None)
    for column, value in (("quantity", quantity), ("unit_price", unit_price)):
        if value is None and _text(row.get(column)) is None:
            problems.append(
                Problem(f"{column} is missing", at, column, fix=f"give {column} in {_VIEW}")
            )
    if item is None and item_ref is None and (code is None or rate is None):
        problems.append(
            Problem(
                "the line has no item_ref and no tax_code/tax_rate",
                at,
                "item_ref",
                fix=f"add item_ref to {_VIEW} and map it in cdc_invoice.item_tax, "
                "or give tax_code and tax_rate columns",
            )
        )
    if len(problems) > before or _needs_item_row(row, items):
        return None  # an unmapped item is reported by _unmapped_items
    assert line_no is not None and quantity is not None and unit_price is not None
    assert (
        discount is not None and rate is not None and code is not None and includes_tax is not None
    )
    return OrderLine(
        line_no=line_no,
        item_ref=item_ref,
        name=item_name(row.get("item_name")),
        tax_code=code,
        tax_rate=rate,
        quantity=quantity,
        unit_price=unit_price,
        price_includes_tax=includes_tax,
        discount=discount,
        spec=_text(row.get("spec")),
        unit=_text(row.get("unit")),
        short_name=item.short_name if item else None,
        policy_flag=item.policy_flag if item else None,
        tax_from_view=_text(row.get("tax_code")) is not None
        or _text(row.get("tax_rate")) is not None,
    )


def _needs_item_row(row: Mapping[str, Any], items: Mapping[str, ItemTax]) -> str | None:
    """The row's item_ref if it has no item_tax row and the row lacks tax_code or tax_rate."""
    ref = _text(row.get("item_ref"))
    if ref is None or ref in items:
        return None
    if _text(row.get("tax_code")) is None or _text(row.get("tax_rate")) is None:
        return ref
    return None


def _unmapped_items(
    source: str, rows: Sequence[Mapping[str, Any]], items: Mapping[str, ItemTax]
) -> list[Problem]:
    """One problem per item that needs an item_tax row, listing the lines that use it."""
    needed: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for position, row in enumerate(rows, 1):
        ref = _needs_item_row(row, items)
        if ref is not None:
            at = _parse(row.get("line_no"), _line_no, position, "line_no", position, [])
            needed.setdefault(ref, []).append((at or position, row))
    problems = []
    for ref, uses in needed.items():
        row = uses[0][1]
        code = _text(row.get("tax_code"))
        try:
            rate = str(money.to_decimal(row.get("tax_rate"), field="tax_rate"))
        except ValueError:
            rate = "0.13"  # the standard rate, as a template to edit
        values = ", ".join(
            [sql_literal(source), sql_literal(ref), sql_literal(code or "<19-digit code>"), rate]
        )
        lines = ", ".join(str(at) for at, _ in uses)
        problems.append(
            Problem(
                f"item {ref!r} (line {lines}) has no row in cdc_invoice.item_tax",
                line_no=uses[0][0],
                field="item_ref",
                fix="INSERT INTO cdc_invoice.item_tax (source, item_ref, tax_code, tax_rate) "
                f"VALUES ({values});",
            )
        )
    return problems


def _order_discount(rows: Sequence[Mapping[str, Any]], problems: list[Problem]) -> Decimal:
    values: set[Decimal] = set()
    for row in rows:
        raw = row.get("order_discount")
        value = _parse(raw, _number("order_discount"), None, "order_discount", None, problems)
        if value is not None:
            values.add(value)
    if len(values) > 1:
        problems.append(_disagree("order_discount", sorted(values)))
    return values.pop() if len(values) == 1 else money.ZERO


def _parse(
    raw: object,
    parse: Callable[[object], T],
    default: T | None,
    column: str,
    line_no: int | None,
    problems: list[Problem],
) -> T | None:
    """``parse(raw)``, ``default`` when raw is None/empty, None after recording a problem."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        problems.append(
            Problem(
                str(exc),
                line_no,
                column,
                fix=f"correct {column} in {_VIEW}, or cast it there (e.g. {column}::numeric)",
            )
        )
        return None


def _number(column: str) -> Callable[[object], Decimal]:
    return lambda raw: money.to_decimal(raw, field=column)


def _line_no(raw: object) -> int:
    try:
        value = money.to_decimal(raw, field="line_no")
    except ValueError:
        raise ValueError(f"line_no {raw!r} is not a whole number") from None
    if value != value.to_integral_value():
        raise ValueError(f"line_no {raw!r} is not a whole number")
    return int(value)


def _flag(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int | str):
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError(f"price_includes_tax {raw!r} is not a boolean")
