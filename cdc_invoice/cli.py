"""cdc-invoice command line. The only place that reads the environment and sets up logging."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click
import psycopg

from cdc_invoice import __version__, logs
from cdc_invoice.errors import CdcInvoiceError

DSN_HELP = (
    "libpq connection string of the inventory database (env CDC_INVOICE_DSN or PG* variables)"
)


def dsn_option(f: Any) -> Any:
    return click.option(
        "--dsn", envvar="CDC_INVOICE_DSN", default="", show_default=False, help=DSN_HELP
    )(f)


class Group(click.Group):
    """Turns our errors into a one-line message with the fix, and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CdcInvoiceError as exc:
            click.secho(f"error: {exc.message}", fg="red", err=True)
            if exc.hint:
                click.echo(f"  fix: {exc.hint}", err=True)
            sys.exit(2)
        except psycopg.OperationalError as exc:
            click.secho(f"error: cannot reach the database: {str(exc).strip()}", fg="red", err=True)
            click.echo(
                "  fix: check --dsn / CDC_INVOICE_DSN, and that PostgreSQL is running", err=True
            )
            sys.exit(2)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cdc-invoice")
@click.option("-v", "--verbose", count=True, help="-v: info, -vv: debug (secrets are never logged)")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="log lines as text or JSON (default: the config's daemon.log_format, else text)",
)
@click.pass_context
def main(ctx: click.Context, verbose: int, log_format: str | None) -> None:
    """E-invoices for completed orders, straight from your PostgreSQL inventory database.

    \b
    DBA:      install, sql, verify, uninstall     (then SELECT cdc_invoice.attach(...))
    Operator: run (the daemon), retry, failures
    Try it:   demo (embedded PostgreSQL + sandbox platform), sandbox
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    ctx.obj["log_format"] = log_format
    logs.setup(verbose, log_format or "text")


@main.command()
@dsn_option
def install(dsn: str) -> None:
    """Install or upgrade the cdc_invoice schema (idempotent; one transaction)."""
    from cdc_invoice.db import schema

    click.echo(schema.install(dsn).describe())


@main.command()
def sql() -> None:
    """Print the install SQL without connecting (review it, then: psql -f install.sql)."""
    from cdc_invoice.db import schema

    click.echo(schema.install_script(), nl=False)


@main.command()
@dsn_option
def verify(dsn: str) -> None:
    """Compare the installed schema with this version's; exit 1 and list any drift."""
    from cdc_invoice.db import schema

    problems = schema.verify(dsn)
    if problems:
        for line in problems:
            click.echo(line)
        click.secho(
            f"{len(problems)} difference(s); `cdc-invoice install` repairs functions and "
            "views, tables need a DBA",
            fg="red",
            err=True,
        )
        sys.exit(1)
    click.echo("cdc_invoice schema matches this version")


@main.command()
@dsn_option
@click.option("--yes", is_flag=True, help="really drop the schema with every request and invoice")
def uninstall(dsn: str, yes: bool) -> None:
    """Detach every source (drop its triggers) and DROP SCHEMA cdc_invoice CASCADE."""
    from cdc_invoice.db import schema

    if not yes:
        raise click.UsageError(
            "uninstall deletes every invoice record; add --yes if you mean it "
            "(export the invoices first: cdc-invoice report register --format csv)"
        )
    detached = schema.uninstall(dsn)
    click.echo(f"uninstalled (detached: {', '.join(detached) or 'none'}); roles cdc_invoice_* kept")


@main.command()
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
    """
    from cdc_invoice import config as cfg
    from cdc_invoice.daemon import runner

    config = cfg.load(config_path)
    logs.setup(ctx.obj["verbose"], ctx.obj["log_format"] or config.daemon.log_format)
    sys.exit(asyncio.run(runner.run(config)))


@main.command("config-reference")
def config_reference() -> None:
    """Print every configuration key with its default, meaning and environment variable."""
    from cdc_invoice import config as cfg

    click.echo(cfg.describe())


@main.command()
@dsn_option
@click.argument("request_id", type=int, required=False)
@click.option("--all", "all_", is_flag=True, help="every failed request")
@click.option("--source", default=None, help="with --all: only this source")
def retry(dsn: str, request_id: int | None, all_: bool, source: str | None) -> None:
    """Put a failed request (or --all) back in the queue once its cause is fixed."""
    if (request_id is None) == (not all_):
        raise click.UsageError("give a REQUEST_ID or --all")
    with psycopg.connect(dsn, autocommit=True) as conn:
        if all_:
            row = conn.execute("SELECT cdc_invoice.retry_failed(%s)", (source,)).fetchone()
            click.echo(f"{row[0] if row else 0} request(s) queued again")
        else:
            conn.execute("SELECT cdc_invoice.retry(%s)", (request_id,))
            click.echo(f"request {request_id} queued again")


@main.command()
@dsn_option
@click.option("--limit", default=50, show_default=True)
def failures(dsn: str, limit: int) -> None:
    """List failed requests with the reason and the fix."""
    from rich.console import Console
    from rich.table import Table

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT request_id, source, order_ref, kind, error_code, last_error, hint "
            "FROM cdc_invoice.report_failures ORDER BY failed_at DESC LIMIT %s",
            (limit,),
        ).fetchall()
    table = Table("id", "source", "order", "kind", "code", "error", "fix", show_lines=True)
    for r in rows:
        table.add_row(*[("" if v is None else str(v)) for v in r])
    Console().print(table if rows else "no failed requests")


@main.command()
@click.option(
    "--dsn",
    envvar="CDC_INVOICE_DSN",
    default="",
    help="an existing server to use (a database cdc_invoice_demo is created); "
    "default: an embedded PostgreSQL",
)
@click.option("--orders", default=25, show_default=True, help="orders to ship")
@click.option("--keep", is_flag=True, help="keep the demo's data directory and print how to look")
def demo(dsn: str, orders: int, keep: bool) -> None:
    """Run everything end to end: PostgreSQL, a sample shop, the sandbox platform, the daemon.

    Ships ORDERS orders from several connections and prints the invoices and the daily report.
    Exits 0 only if every order got exactly one invoice with matching totals.
    """
    from cdc_invoice import demo as demo_mod

    sys.exit(demo_mod.main(admin_dsn=dsn or None, orders=orders, keep=keep))


def _register_optional() -> None:
    try:
        from cdc_invoice.sandbox.cli import sandbox
    except ModuleNotFoundError:  # DEVTEMP: while the sandbox is being written
        return
    main.add_command(sandbox)


_register_optional()

if __name__ == "__main__":  # pragma: no cover
    main()
