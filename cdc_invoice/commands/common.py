"""Options shared by the command modules."""

from __future__ import annotations

from typing import Any

import click

DSN_HELP = (
    "libpq connection string of the inventory database (env CDC_INVOICE_DSN, or PG* variables)"
)


def checked_dsn(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """--dsn's callback: a malformed string fails here, with the fix, before any command runs."""
    from cdc_invoice.config import check_dsn

    if value:
        check_dsn(value, "--dsn" if param.name == "dsn" else str(param.name))
    return value


def dsn_option(f: Any) -> Any:
    return click.option(
        "--dsn", envvar="CDC_INVOICE_DSN", default="", help=DSN_HELP, callback=checked_dsn
    )(f)
