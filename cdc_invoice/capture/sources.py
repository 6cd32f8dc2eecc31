"""attach, detach and the list of attached sources: thin wrappers around the SQL functions.

The SQL functions (sql/api.sql, sql/ops.sql) do the work and the checking, so a DBA who calls
``SELECT cdc_invoice.attach(...)`` in psql gets exactly what ``cdc-invoice attach`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from cdc_invoice.capture._db import Q, database_errors


@dataclass(frozen=True, slots=True)
class AttachArgs:
    """The arguments of cdc_invoice.attach(), with the same names."""

    source: str
    order_table: str
    order_key: str
    issue_when: str
    document: str
    seller: str
    reverse_when: str | None = None


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """A row of cdc_invoice.sources(): an attached source and the state of its triggers."""

    source: str
    order_table: str
    table_exists: bool
    order_key: str
    issue_when: str
    reverse_when: str | None
    document: str
    document_exists: bool
    seller_id: str
    trigger_state: str  # 'enabled', or what is wrong (see cdc_invoice.sources())
    triggers: list[dict[str, Any]]
    queued: int
    failed: int
    attached_at: datetime

    @property
    def healthy(self) -> bool:
        return self.trigger_state == "enabled" and self.table_exists and self.document_exists


def attach(dsn: str, args: AttachArgs) -> str:
    """Attach (or re-attach) a source; returns attach()'s one-line summary."""
    with psycopg.connect(dsn, autocommit=True) as conn, database_errors("attach failed"):
        row = conn.execute(
            Q("attach"),
            {
                "source": args.source,
                "order_table": args.order_table,
                "order_key": args.order_key,
                "issue_when": args.issue_when,
                "document": args.document,
                "seller": args.seller,
                "reverse_when": args.reverse_when,
            },
        ).fetchone()
    assert row is not None
    return str(row[0])


def detach(dsn: str, source: str) -> str:
    """Drop a source's triggers; its requests and invoices stay."""
    with psycopg.connect(dsn, autocommit=True) as conn, database_errors("detach failed"):
        row = conn.execute(Q("detach"), {"source": source}).fetchone()
    assert row is not None
    return str(row[0])


def sources(dsn: str) -> list[SourceInfo]:
    with (
        psycopg.connect(dsn) as conn,
        database_errors("cannot list sources"),
        conn.cursor(row_factory=dict_row) as cur,
    ):
        cur.execute(Q("sources"))
        return [SourceInfo(**row) for row in cur.fetchall()]
