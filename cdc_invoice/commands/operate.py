"""Operator commands: run the daemon, inspect, retry or cancel failures, configuration
reference."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator
from datetime import datetime

import click
import psycopg

from cdc_invoice import logs
from cdc_invoice.commands.common import dsn_option
from cdc_invoice.errors import CdcInvoiceError

# daemon.log_level as the CLI's verbosity (-v = debug for our loggers).
LEVELS = {"warning": -1, "info": 0, "debug": 1}


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="CDC_INVOICE_CONFIG",
    help="TOML file; every key can also be set as CDC_INVOICE_<SECTION>__<KEY>",
)
@click.pass_context
def run(ctx: click.Context, config_path: str | None) -> None:
    """Run the daemon: issue an invoice for every captured order, until SIGTERM.

    One SIGTERM (or Ctrl-C) drains in-flight work within daemon.shutdown_grace_seconds;
    a second one exits at once (unfinished work is picked up again on restart).
    SIGHUP re-reads the config file: concurrency, intervals and logging apply at once,
    anything else is logged as needing a restart. Under systemd it speaks sd_notify.
    """
    from cdc_invoice import config as cfg
    from cdc_invoice.daemon import runner

    config = cfg.load(config_path)

    def reconfigure_logs(c: cfg.Config) -> None:
        # -v and --log-format on the command line win over the file (also on SIGHUP).
        verbosity = ctx.obj["verbose"] or LEVELS.get(c.daemon.log_level, 0)
        logs.setup(verbosity, ctx.obj["log_format"] or c.daemon.log_format)

    reconfigure_logs(config)
    sys.exit(asyncio.run(runner.run(config, config_path, reconfigure_logs=reconfigure_logs)))


@click.command("config-reference")
def config_reference() -> None:
    """Print every configuration key with its default, meaning and environment variable."""
    from cdc_invoice import config as cfg

    click.echo(cfg.describe())


@click.command()
@dsn_option
@click.argument("request_id", type=int, required=False)
@click.option("--all", "all_", is_flag=True, help="every failed request")
@click.option("--source", default=None, help="with --all: only this source")
def retry(dsn: str, request_id: int | None, all_: bool, source: str | None) -> None:
    """Put a failed request (or --all) back in the queue once its cause is fixed."""
    if (request_id is None) == (not all_):
        raise click.UsageError("give a REQUEST_ID or --all")
    with psycopg.connect(dsn, autocommit=True) as conn, _operator_errors("retrying"):
        if all_:
            row = conn.execute("SELECT cdc_invoice.retry_failed(%s)", (source,)).fetchone()
            click.echo(f"{row[0] if row else 0} request(s) queued again")
        else:
            conn.execute("SELECT cdc_invoice.retry(%s)", (request_id,))
            click.echo(f"request {request_id} queued again")


@click.command()
@dsn_option
@click.argument("request_id", type=int)
@click.option("--reason", required=True, help="why it is given up (kept with the request)")
def cancel(dsn: str, request_id: int, reason: str) -> None:
    """Give up on a failed request, or a pending one never sent (retry brings it back)."""
    with psycopg.connect(dsn, autocommit=True) as conn, _operator_errors("cancelling"):
        conn.execute("SELECT cdc_invoice.cancel(%s, %s)", (request_id, reason))
        click.echo(f"request {request_id} cancelled")


@contextlib.contextmanager
def _operator_errors(doing: str) -> Iterator[None]:
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        raise CdcInvoiceError(
            f"not allowed: {exc.diag.message_primary}",
            hint=f"{doing} needs the cdc_invoice_operator role: GRANT cdc_invoice_operator "
            "TO <your login>",
        ) from exc
    except psycopg.DatabaseError as exc:
        if not (exc.diag.sqlstate or "").startswith("CI"):
            raise
        # Our SQL functions' own errors (CI0xx) say what is wrong and how to look.
        raise CdcInvoiceError(
            exc.diag.message_primary or str(exc), hint=exc.diag.message_hint
        ) from exc


@click.command()
@dsn_option
@click.option("--limit", default=50, show_default=True)
def failures(dsn: str, limit: int) -> None:
    """List failed requests with the reason and the fix."""
    from rich.console import Console

    from cdc_invoice.commands.render import print_rows

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT request_id, source, order_ref, kind, error_code, last_error, hint "
            "FROM cdc_invoice.report_failures ORDER BY failed_at DESC LIMIT %s",
            (limit,),
        ).fetchall()
    if not rows:
        click.echo("no failed requests")
        return
    print_rows(
        Console(highlight=False),
        ("id", "source", "order", "kind", "code", "error", "fix"),
        [[("" if v is None else str(v)) for v in r] for r in rows],
        show_lines=True,
    )


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="CDC_INVOICE_CONFIG",
    help="the daemon's TOML file (database and platform credentials)",
)
@click.option(
    "--date",
    "day",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="the day to reconcile (Asia/Shanghai); default: today",
)
def reconcile(config_path: str | None, day: datetime | None) -> None:
    """Compare a day's invoices at the platform with ours; adopt what we never recorded.

    Writes every finding to cdc_invoice.reconciliation (see cdc_invoice.report_reconciliation)
    and exits 1 if anything still differs: amounts, buyers, invoices missing on either side,
    completed orders without an invoice.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from cdc_invoice import config as cfg
    from cdc_invoice.daemon.reconcile import CHINA
    from cdc_invoice.daemon.reconcile import reconcile as run_reconcile

    config = cfg.load(config_path)
    the_day = day.date() if day else datetime.now(CHINA).date()
    summary = asyncio.run(run_reconcile(config, the_day))
    console = Console()
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(summary.counts.items())) or "nothing"
    console.print(f"reconciliation of {the_day}: {counts}")
    odd = [f for f in summary.findings if f["finding"] not in ("ok", "foreign")]
    if odd:
        table = Table("finding", "order no", "invoice", "order", "ours", "platform", "detail")
        for f in odd:
            table.add_row(
                *(
                    escape(str(f[k] if f[k] is not None else ""))
                    for k in (
                        "finding",
                        "order_no",
                        "invoice_number",
                        "order_ref",
                        "local_total",
                        "platform_total",
                        "detail",
                    )
                )
            )
        console.print(table)
    sys.exit(0 if summary.clean else 1)


COMMANDS = [run, config_reference, retry, cancel, failures, reconcile]
