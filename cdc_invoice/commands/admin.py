"""DBA commands: install, sql, verify, uninstall."""

from __future__ import annotations

import sys

import click

from cdc_invoice.commands.common import dsn_option

ROLE_PREFIX = click.option(
    "--role-prefix",
    default=None,
    metavar="PREFIX",
    help="name this database's roles PREFIXdaemon, PREFIXoperator, PREFIXreader "
    "(first install only; default cdc_invoice_, shared by every database of the cluster)",
)


@click.command()
@dsn_option
@ROLE_PREFIX
def install(dsn: str, role_prefix: str | None) -> None:
    """Install or upgrade the cdc_invoice schema (idempotent; one transaction)."""
    from cdc_invoice.db import schema

    click.echo(schema.install(dsn, role_prefix=role_prefix).describe())


@click.command()
@click.option(
    "--from-version",
    type=int,
    default=None,
    metavar="N",
    help="print the upgrade from installed schema version N instead of the fresh install",
)
@ROLE_PREFIX
def sql(from_version: int | None, role_prefix: str | None) -> None:
    """Print the install SQL without connecting (review it, then: psql -f install.sql)."""
    from cdc_invoice.db import schema

    if from_version is None:
        click.echo(schema.install_script(role_prefix), nl=False)
    else:
        click.echo(schema.upgrade_script(from_version), nl=False)


@click.command()
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


@click.command()
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


COMMANDS = [install, sql, verify, uninstall]
