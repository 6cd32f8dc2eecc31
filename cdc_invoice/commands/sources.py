"""DBA commands for order sources: attach, detach, sources, preview, backfill.

Each wraps a SQL function (sql/api.sql, sql/ops.sql) of the same name and arguments, so what
the DBA guide shows in psql and on the command line is the same thing.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict
from datetime import date, datetime
from typing import Any

import click

from cdc_invoice.commands.common import dsn_option


def _console() -> Any:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        # Piped or captured: wide enough that tables do not fold every column.
        console = Console(highlight=False, width=160)
    return console


@click.command()
@dsn_option
@click.option("--source", required=True, help="a name for this order stream (1–40 characters)")
@click.option("--order-table", required=True, help="the order table as regclass text: schema.table")
@click.option("--order-key", required=True, help="the key column's exact name (no quotes)")
@click.option(
    "--issue-when",
    required=True,
    help="SQL boolean over NEW (and OLD on update): when an order is complete",
)
@click.option("--document", required=True, help="the document view (one row per invoice line)")
@click.option("--seller", required=True, help="cdc_invoice.seller.seller_id")
@click.option("--reverse-when", default=None, help="optional SQL boolean: full reversal wanted")
def attach(
    dsn: str,
    source: str,
    order_table: str,
    order_key: str,
    issue_when: str,
    document: str,
    seller: str,
    reverse_when: str | None,
) -> None:
    """Put capture triggers on an order table: SELECT cdc_invoice.attach(...).

    Idempotent: attaching again replaces the triggers. Nothing else in the inventory schema
    changes. Orders that completed before this are not enqueued: see `backfill`.
    """
    from cdc_invoice.capture import AttachArgs
    from cdc_invoice.capture import attach as do_attach

    message = do_attach(
        dsn,
        AttachArgs(source, order_table, order_key, issue_when, document, seller, reverse_when),
    )
    click.echo(message)
    name = shlex.quote(source)
    click.echo(
        f"next: cdc-invoice preview --source {name} --order <key> (check one order), "
        f"cdc-invoice backfill --source {name} --dry-run (orders completed before now)"
    )


@click.command()
@dsn_option
@click.option("--source", required=True, help="the attached source to detach")
def detach(dsn: str, source: str) -> None:
    """Drop a source's triggers (SELECT cdc_invoice.detach(...)); requests and invoices stay."""
    from cdc_invoice.capture import detach as do_detach

    click.echo(do_detach(dsn, source))


@click.command()
@dsn_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object per source")
def sources(dsn: str, as_json: bool) -> None:
    """List attached sources with the state of their triggers; exit 1 if one is not capturing.

    A trigger can be disabled (ALTER TABLE … DISABLE TRIGGER), fire only in replica sessions,
    be missing, or the order table can be gone: each shows in the state column.
    """
    from rich.markup import escape
    from rich.table import Table

    from cdc_invoice.capture import sources as list_sources

    found = list_sources(dsn)
    if as_json:
        for s in found:
            click.echo(json.dumps(_plain(asdict(s)), ensure_ascii=False))
    else:
        table = Table(
            "source",
            "order table",
            "key",
            "issue when",
            "document",
            "seller",
            "triggers",
            "queued",
            "failed",
            title=f"{len(found)} attached source(s)",
        )
        for s in found:  # names and conditions are the DBA's text, not rich markup
            state = escape(s.trigger_state)
            table.add_row(
                escape(s.source),
                escape(s.order_table) + ("" if s.table_exists else " [red](gone)[/]"),
                escape(s.order_key),
                escape(s.issue_when),
                escape(s.document) + ("" if s.document_exists else " [red](gone)[/]"),
                escape(s.seller_id),
                state if s.trigger_state == "enabled" else f"[red]{state}[/]",
                str(s.queued),
                str(s.failed),
            )
        _console().print(table if found else "no attached sources: see cdc-invoice attach --help")
    if any(not s.healthy for s in found):
        sys.exit(1)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@click.command()
@dsn_option
@click.option("--source", required=True, help="the attached source")
@click.option("--order", "order_ref", required=True, help="the order key, as the table stores it")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.option("--raw", is_flag=True, help="also print the document rows the trigger would store")
def preview(dsn: str, source: str, order_ref: str, as_json: bool, raw: bool) -> None:
    """Show the invoice(s) an order would produce, or why it would fail; enqueue nothing.

    Reads the order's rows from the source's document view exactly as the capture trigger
    would, loads the seller and mappings as the daemon does, and runs the invoice rules.
    Exit 1 if the order would fail (each problem is listed with its fix).
    """
    from cdc_invoice.capture import preview as do_preview
    from cdc_invoice.capture.preview import render
    from cdc_invoice.db.repository import json_dumps

    result = do_preview(dsn, source, order_ref)
    if as_json:
        click.echo(json_dumps(result.to_json()))
    else:
        console = _console()
        if raw:  # as stored: numbers exactly as to_jsonb wrote them
            click.echo(result.document)
        render(result, console)
    if not result.ok:
        sys.exit(1)


@click.command()
@dsn_option
@click.option("--source", required=True, help="the attached source")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="only orders whose --since-column is on or after this date (YYYY-MM-DD)",
)
@click.option(
    "--since-column",
    default=None,
    help="with --since: the order table's date column (date, timestamp or YYYY-MM-DD text)",
)
@click.option("--dry-run", is_flag=True, help="count what would be enqueued; change nothing")
@click.option("--batch", "batch_size", default=1000, show_default=True, type=click.IntRange(1))
@click.option(
    "--when",
    "condition",
    default=None,
    help="use this condition instead of the source's issue_when (OLD is NULL in it)",
)
def backfill(
    dsn: str,
    source: str,
    since: datetime | None,
    since_column: str | None,
    dry_run: bool,
    batch_size: int,
    condition: str | None,
) -> None:
    """Enqueue orders that completed before the source was attached.

    An order qualifies when the source's issue_when holds with OLD as NULL (what the INSERT
    trigger would decide for the order as it is now) and it has no issue request yet: a second
    run enqueues nothing. Each request carries the document the trigger would have taken.
    Works in batches (one transaction each) and wakes the daemons once at the end.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from cdc_invoice.capture import BackfillProgress
    from cdc_invoice.capture import backfill as do_backfill

    if (since is None) != (since_column is None):
        raise click.UsageError(
            "--since and --since-column go together: --since-column names the order table's "
            "date column that --since compares with (e.g. --since 2024-01-01 --since-column "
            "order_date)"
        )
    verb = "would enqueue" if dry_run else "enqueued"
    console = _console()
    with Progress(
        TextColumn("[bold]backfill[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("orders read, {task.fields[enqueued]} " + verb),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(source, total=None, enqueued=0)

        def show(p: BackfillProgress) -> None:
            bar.update(task, total=p.total, completed=p.scanned, enqueued=p.enqueued)

        result = do_backfill(
            dsn,
            source,
            since=since.date() if since else None,
            since_column=since_column,
            batch_size=batch_size,
            dry_run=dry_run,
            condition=condition,
            progress=show,
        )
    console.print(
        f"{source}: {result.scanned} order(s) read, {result.eligible} meet the condition, "
        f"{result.queued_before} already queued, {result.enqueued} {verb} "
        f"in {result.seconds:.1f}s ({result.rate:,.0f} orders/s, {result.batches} batch(es))"
    )
    if dry_run:
        console.print("dry run: nothing was changed")
    elif result.enqueued:
        console.print("the daemons were notified; follow with: cdc-invoice sources")


COMMANDS = [attach, detach, sources, preview, backfill]
