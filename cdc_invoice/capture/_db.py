"""What the capture modules share: their named queries and the mapping of database errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import LiteralString

import psycopg

from cdc_invoice.db.queries import q
from cdc_invoice.errors import CdcInvoiceError


class CaptureError(CdcInvoiceError):
    """A capture function refused: the message names what is wrong, the hint how to fix it."""

    def __init__(
        self, message: str | None = None, *, hint: str | None = None, sqlstate: str | None = None
    ) -> None:
        self.sqlstate = sqlstate
        super().__init__(message, hint=hint)


def Q(name: str) -> LiteralString:
    """A named query of sql/capture_queries.sql."""
    return q(name, "capture_queries.sql")


@contextmanager
def database_errors(doing: str) -> Iterator[None]:
    """Turn a refusal by the database into a ``CaptureError`` with its message and hint.

    Connection failures (OperationalError) pass through: the CLI reports them as such. The
    cdc_invoice functions raise SQLSTATE class CI with a HINT; anything else (a missing schema,
    no privilege on the order table) gets a hint from its SQLSTATE.
    """
    try:
        yield
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        state = exc.sqlstate or ""
        primary = exc.diag.message_primary or str(exc).strip()
        hint = exc.diag.message_hint
        if hint is None:
            if state == "3F000" or (state == "42883" and "cdc_invoice." in primary):
                hint = "install cdc-invoice first: cdc-invoice install --dsn …"
            elif state == "42501":
                hint = (
                    "connect as the owner of the order table (creating triggers needs it) "
                    "or as the owner of the cdc_invoice schema"
                )
        message = primary if state.startswith("CI") else f"{doing}: {primary}"
        raise CaptureError(message, hint=hint, sqlstate=state) from exc
