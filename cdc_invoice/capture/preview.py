"""`cdc-invoice preview`: the invoices one order would produce, without enqueuing anything.

The DBA's tool while writing a document view. Every step is the production one:
- the document comes from cdc_invoice.order_document(), which embeds the very expression the
  capture trigger embeds (cdc_invoice._document_sql: ``to_jsonb`` of the view's rows), and is
  parsed with the daemon's JSON loader (numbers to Decimal);
- the seller and the buyer / item mappings are loaded by the daemon's ``Repository``;
- the invoices are computed by the domain (``mapping.build_order``, ``compute.build_invoices``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cdc_invoice.capture._db import CaptureError, Q, database_errors
from cdc_invoice.daemon.drafts import draft_to_json
from cdc_invoice.db.repository import Repository, json_loads
from cdc_invoice.errors import OrderError, Problem
from cdc_invoice.invoice import compute, mapping
from cdc_invoice.invoice.model import Buyer, InvoiceDraft, ItemTax, LineProperty, Seller


@dataclass(slots=True)
class Preview:
    source: str
    order_ref: str
    document: str  # the document snapshot as JSON text, as the trigger would store it
    rows: list[dict[str, Any]]  # the same, parsed as the daemon parses it (numbers: Decimal)
    meets_issue_when: bool  # issue_when holds now (OLD all NULL, as backfill evaluates it)
    request_id: int | None  # the order's issue request, if it has one already
    request_state: str | None
    seller: Seller
    drafts: list[InvoiceDraft] = field(default_factory=list)
    error: OrderError | None = None
    warnings: list[Problem] = field(default_factory=list)  # allowed, but probably wrong

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def problems(self) -> list[Problem]:
        return list(self.error.problems) if self.error is not None else []

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "order_ref": self.order_ref,
            "ok": self.ok,
            "meets_issue_when": self.meets_issue_when,
            "request": None
            if self.request_id is None
            else {"id": self.request_id, "state": self.request_state},
            "seller_id": self.seller.seller_id,
            "invoices": [draft_to_json(d) for d in self.drafts],
            "error_code": self.error.code if self.error is not None else None,
            "problems": [
                {"line_no": p.line_no, "field": p.field, "message": p.message, "fix": p.fix}
                for p in self.problems
            ],
            "warnings": [
                {"field": p.field, "message": p.message, "fix": p.fix} for p in self.warnings
            ],
            "document": self.rows,
        }


def preview(dsn: str, source: str, order_ref: str) -> Preview:
    """What the daemon would make of ``order_ref`` of ``source`` if it were captured now."""
    with psycopg.connect(dsn) as conn, database_errors(f"cannot preview order {order_ref!r}"):
        row = conn.execute(Q("order_document"), {"source": source, "order_ref": order_ref})
        found = row.fetchone()
    assert found is not None
    document, meets, seller_id, request_id, request_state = found
    rows: list[dict[str, Any]] = list(json_loads(document))  # the daemon's loader: Decimal
    seller, buyers, items = asyncio.run(_reference_data(dsn, source, str(seller_id), rows))
    result = Preview(
        source=source,
        order_ref=order_ref,
        document=str(document),
        rows=rows,
        meets_issue_when=bool(meets),
        request_id=request_id,
        request_state=request_state,
        seller=seller,
    )
    try:
        order = mapping.build_order(source, order_ref, rows, buyers, items, seller)
        result.drafts = compute.build_invoices(order, seller, warn=result.warnings.append)
    except OrderError as exc:
        result.error = exc
    return result


async def _reference_data(
    dsn: str, source: str, seller_id: str, rows: Sequence[dict[str, Any]]
) -> tuple[Seller, dict[str, Buyer], dict[str, ItemTax]]:
    """Seller and mappings, loaded exactly as the daemon loads them."""
    repo = await Repository.open(dsn, "cdc-invoice-preview", size=1)
    try:
        seller = await repo.seller(seller_id)
        if seller is None:  # the foreign key makes this rare: a row deleted mid-preview
            raise CaptureError(
                f"seller {seller_id!r} of source {source!r} does not exist",
                hint="INSERT INTO cdc_invoice.seller (seller_id, tax_number, name) VALUES (...)",
            )
        customers, item_refs = mapping.document_refs(rows)
        buyers, items = await repo.mappings(source, sorted(customers), sorted(item_refs))
        return seller, buyers, items
    finally:
        await repo.close()


# --- rendering ---------------------------------------------------------------------------


def _money(x: Decimal | None) -> str:
    return "" if x is None else f"{x:,.2f}"


def _plain_number(x: Decimal | None) -> str:
    return "" if x is None else f"{x.normalize():f}"


def _rate(x: Decimal) -> str:
    return f"{(x * 100).normalize():f}%"


def render(result: Preview, console: Console) -> None:
    """Print the preview: the order's state, each invoice with its lines, or the problems."""
    # Names come from the inventory database: escape them so '[...]' is not read as markup.
    head = f"[bold]order {escape(result.order_ref)}[/] of source [bold]{escape(result.source)}[/]"
    console.print(
        f"{head} (seller {escape(result.seller.seller_id)}): {len(result.rows)} document row(s)"
    )
    if result.meets_issue_when:
        console.print("  issue_when holds now: capture (or backfill) would enqueue it")
    else:
        console.print(
            "  issue_when does not hold now (evaluated with OLD as NULL): "
            "not captured until the order completes"
        )
    if result.request_id is not None:
        console.print(
            f"  already captured: request {result.request_id} is {result.request_state} "
            "(preview changes nothing)"
        )
    for draft in result.drafts:
        _render_draft(draft, console)
    for w in result.warnings:
        console.print(f"[yellow]warning[/]: {escape(w.message)}; {escape(w.fix or '')}")
    if result.error is not None:
        table = Table(
            "line",
            "column",
            "problem",
            "fix",
            title=f"[red]the order would fail ({result.error.code}): "
            f"{len(result.problems)} problem(s)[/]",
            show_lines=True,
        )
        for p in result.problems:
            table.add_row(
                "" if p.line_no is None else str(p.line_no),
                escape(p.field or ""),
                escape(p.message),
                escape(p.fix or ""),
            )
        console.print(table)
    else:
        total = sum((d.total_incl_tax for d in result.drafts), Decimal(0))
        console.print(
            f"[green]ok[/]: {len(result.drafts)} invoice(s), {_money(total)} incl. tax; "
            "nothing was enqueued"
        )


def _render_draft(draft: InvoiceDraft, console: Console) -> None:
    buyer = draft.buyer
    title = escape(
        f"invoice {draft.part}/{draft.parts} ({draft.invoice_line}) to {buyer.name}"
        + (f", tax number {buyer.tax_number}" if buyer.tax_number else "")
        + (f", {buyer.email}" if buyer.email else "")
    )
    table = Table(title=title, show_footer=True)
    for header in ("#", "src", "item", "tax code"):
        table.add_column(header)
    for header in ("rate", "qty", "price", "excl. tax", "tax", "incl. tax"):
        table.add_column(header, justify="right")
    for line in draft.lines:
        name = line.name + (" (discount)" if line.property == LineProperty.DISCOUNT else "")
        table.add_row(
            str(line.line_no),
            "" if line.source_line_no is None else str(line.source_line_no),
            escape(name),
            escape(line.tax_code),
            _rate(line.tax_rate),
            _plain_number(line.quantity),
            _plain_number(line.unit_price),
            _money(line.amount_excl_tax),
            _money(line.tax),
            _money(line.amount_incl_tax),
        )
    footer = ["", "", "total", "", "", "", "", *map(_money, _totals(draft))]
    for column, text in zip(table.columns, footer, strict=True):
        column.footer = text
    console.print(table)
    if draft.remark:
        console.print(f"  备注 (remark): {escape(draft.remark)}")


def _totals(draft: InvoiceDraft) -> tuple[Decimal, Decimal, Decimal]:
    return draft.total_excl_tax, draft.total_tax, draft.total_incl_tax
