"""cdc-invoice command line. The only place that reads the environment and sets up logging."""

from __future__ import annotations

import sys
from typing import Any

import click
import psycopg

from cdc_invoice import __version__, logs
from cdc_invoice.errors import CdcInvoiceError


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
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="-v: debug, -vv: debug for libraries too (info by default; secrets are never logged)",
)
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
    DBA:      install, sql, verify, uninstall, attach, detach, sources, preview, backfill
    Operator: run (the daemon), systemd-unit, health, status, failures, retry, reconcile,
              config-reference, loadtest
    Finance:  report (or SQL: cdc_invoice.report_* views, cdc_invoice.request_reversal(...)),
              archive (the invoice files: verify, export a month)
    Try it:   demo (embedded PostgreSQL + sandbox platform), sandbox
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    ctx.obj["log_format"] = log_format
    logs.setup(verbose, log_format or "text")


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


def _register() -> None:
    from cdc_invoice.commands import admin, archive, loadtest, operate, ops, sources
    from cdc_invoice.sandbox.cli import sandbox

    for module in (admin, operate, ops, sources, loadtest, archive):
        for command in module.COMMANDS:
            main.add_command(command)
    main.add_command(sandbox)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
