"""Options shared by the command modules."""

from __future__ import annotations

from typing import Any

import click

DSN_HELP = (
    "libpq connection string of the inventory database (env CDC_INVOICE_DSN, or PG* variables)"
)


def dsn_option(f: Any) -> Any:
    return click.option("--dsn", envvar="CDC_INVOICE_DSN", default="", help=DSN_HELP)(f)
