"""cdc-invoice command line: the commands, their one-line errors, and logging set-up.

Settings reach the code from options, CDC_INVOICE_* variables (options' envvars and config.py's
overrides) and libpq's PG* variables; commands that pull in the sandbox or loadtest are
imported only when named (LAZY), so the daemon loads what it runs.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click
import psycopg

from cdc_invoice import __version__, logs
from cdc_invoice.commands.common import checked_dsn
from cdc_invoice.errors import CdcInvoiceError

# Commands whose modules pull in what the daemon never runs (the sandbox: aiohttp server, SQLAlchemy
# store; loadtest: Rich progress), imported only when named: `cdc-invoice run` stays light.
LAZY: dict[str, tuple[str, str, str]] = {
    # name: (module, attribute, the extra that installs its dependencies)
    "sandbox": ("cdc_invoice.sandbox.cli", "sandbox", "sandbox"),
    "loadtest": ("cdc_invoice.commands.loadtest", "loadtest", ""),
}


def _missing_extra(name: str, extra: str, exc: ModuleNotFoundError) -> click.Command:
    """A stand-in for a command whose optional dependencies are not installed."""
    fix = f"pip install 'cdc-invoice[{extra}]'" if extra else "reinstall cdc-invoice"

    def explain() -> None:
        click.secho(f"error: `{name}` needs the module {exc.name!r}", fg="red", err=True)
        click.echo(f"  fix: {fix}", err=True)
        sys.exit(2)

    return click.Command(
        name,
        callback=explain,
        help=f"(not installed: {fix})",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


class Group(click.Group):
    """Turns our errors into a one-line message with the fix, and exit code 2; loads LAZY
    commands when they are named (or listed by --help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY and cmd_name not in self.commands:
            module, attr, extra = LAZY[cmd_name]
            try:
                command: click.Command = getattr(importlib.import_module(module), attr)
            except ModuleNotFoundError as exc:
                if exc.name and exc.name.startswith("cdc_invoice"):
                    raise
                return _missing_extra(cmd_name, extra, exc)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

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
    callback=checked_dsn,
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
    from cdc_invoice.commands import admin, archive, operate, ops, sources

    for module in (admin, operate, ops, sources, archive):
        for command in module.COMMANDS:
            main.add_command(command)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
