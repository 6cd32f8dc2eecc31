"""The sandbox's state: an in-memory index written through to SQLite (SQLAlchemy Core).

Every read is served from memory. Writes are marked dirty and made durable by ``commit()``, which
is a group commit: all handlers that reach ``commit()`` in the same event-loop turn share one
SQLite transaction. A handler only answers after its commit, so anything the platform has
acknowledged survives a restart. SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit
costs no fsync (a power loss may drop the last transactions, a process crash does not).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.dialects.sqlite import Insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from cdc_invoice.sandbox.model import Invoice, RedSlip

# How long the first writer waits for others to join its transaction: a little latency buys
# batching under load (one SQLite commit for many requests).
COMMIT_WINDOW_S = 0.002

_metadata = MetaData()
invoice_table = Table(
    "invoice",
    _metadata,
    Column("serial", String, primary_key=True),
    Column("seller_tax", String, nullable=False),
    Column("order_no", String, nullable=False),
    Column("data", Text, nullable=False),
    UniqueConstraint("seller_tax", "order_no"),  # E9106 is also enforced by the database
)
slip_table = Table(
    "red_slip",
    _metadata,
    Column("bill_id", String, primary_key=True),
    Column("seller_tax", String, nullable=False),
    Column("data", Text, nullable=False),
)
token_table = Table(
    "token",
    _metadata,
    Column("token", String, primary_key=True),
    Column("app_key", String, nullable=False),
    Column("issued_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)
meta_table = Table(
    "meta",
    _metadata,
    Column("key", String, primary_key=True),
    Column("value", Text, nullable=False),
)


@dataclass(frozen=True, slots=True)
class Token:
    token: str
    app_key: str
    issued_at: float
    expires_at: float


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


class Store:
    """All sandbox state. Not thread-safe: used from the event loop only."""

    def __init__(self, path: str | Path) -> None:
        self._engine = create_engine(f"sqlite:///{path}")
        event.listen(self._engine, "connect", _sqlite_pragmas)
        _metadata.create_all(self._engine)
        self._conn: Connection = self._engine.connect()
        self.invoices: dict[str, Invoice] = {}
        self.by_order: dict[tuple[str, str], str] = {}
        self.by_number: dict[str, str] = {}
        self.slips: dict[str, RedSlip] = {}
        self.tokens: dict[str, Token] = {}
        self.meta: dict[str, str] = {}
        self._dirty_invoices: dict[str, Invoice] = {}
        self._dirty_slips: dict[str, RedSlip] = {}
        self._dirty_tokens: dict[str, Token] = {}
        self._dirty_meta: dict[str, str] = {}
        self._batch: asyncio.Future[None] | None = None
        self.commits = 0
        # Compiled once: the hot path then skips SQLAlchemy's per-statement compile and caching.
        dialect = self._engine.dialect
        self._upserts = {
            table.name: str(_upsert(table).compile(dialect=dialect))
            for table in (invoice_table, slip_table, token_table, meta_table)
        }
        self._load()

    # -- reads -------------------------------------------------------------------------------
    def invoice_by_order(self, seller_tax: str, order_no: str) -> Invoice | None:
        serial = self.by_order.get((seller_tax, order_no))
        return self.invoices.get(serial) if serial else None

    def invoice_by_number(self, number: str) -> Invoice | None:
        serial = self.by_number.get(number)
        return self.invoices.get(serial) if serial else None

    def order_taken(self, seller_tax: str, order_no: str) -> bool:
        return (seller_tax, order_no) in self.by_order

    def counter(self, name: str) -> int:
        return int(self.meta.get(name, "0"))

    # -- writes (durable after commit()) -----------------------------------------------------
    def next_counter(self, name: str) -> int:
        value = self.counter(name) + 1
        self.set_meta(name, str(value))
        return value

    def set_meta(self, name: str, value: str) -> None:
        self.meta[name] = value
        self._dirty_meta[name] = value

    def save_invoice(self, invoice: Invoice) -> None:
        self.invoices[invoice.serial] = invoice
        self.by_order[(invoice.seller_tax, invoice.order_no)] = invoice.serial
        if invoice.number:
            self.by_number[invoice.number] = invoice.serial
        self._dirty_invoices[invoice.serial] = invoice

    def save_slip(self, slip: RedSlip) -> None:
        self.slips[slip.bill_id] = slip
        self._dirty_slips[slip.bill_id] = slip

    def save_token(self, token: Token) -> None:
        self.tokens[token.token] = token
        self._dirty_tokens[token.token] = token

    def tokens_of(self, app_key: str) -> Iterable[Token]:
        return (t for t in self.tokens.values() if t.app_key == app_key)

    @property
    def dirty(self) -> bool:
        return bool(
            self._dirty_invoices or self._dirty_slips or self._dirty_tokens or self._dirty_meta
        )

    async def commit(self) -> None:
        """Make every write so far durable; concurrent callers share one transaction."""
        if not self.dirty and self._batch is None:
            return
        if self._batch is None:
            loop = asyncio.get_running_loop()
            self._batch = loop.create_future()
            loop.call_later(COMMIT_WINDOW_S, self._write_batch)
        # shield: a cancelled handler must not cancel the batch the others wait for
        await asyncio.shield(self._batch)

    def flush(self) -> None:
        """Synchronous commit (shutdown, tests)."""
        self._write_dirty()

    def close(self) -> None:
        self.flush()
        self._conn.close()
        self._engine.dispose()

    def _write_batch(self) -> None:
        batch, self._batch = self._batch, None
        assert batch is not None
        try:
            self._write_dirty()
        except Exception as exc:  # every waiter sees the failure and answers 500
            if not batch.done():
                batch.set_exception(exc)
            return
        if not batch.done():
            batch.set_result(None)

    def _write_dirty(self) -> None:
        if not self.dirty:
            return
        invoices, self._dirty_invoices = self._dirty_invoices, {}
        slips, self._dirty_slips = self._dirty_slips, {}
        tokens, self._dirty_tokens = self._dirty_tokens, {}
        meta, self._dirty_meta = self._dirty_meta, {}
        rows: list[tuple[str, list[tuple[Any, ...]]]] = [
            (
                "invoice",
                [
                    (i.serial, i.seller_tax, i.order_no, _dumps(i.to_json()))
                    for i in invoices.values()
                ],
            ),
            ("red_slip", [(x.bill_id, x.seller_tax, _dumps(x.to_json())) for x in slips.values()]),
            (
                "token",
                [(t.token, t.app_key, t.issued_at, t.expires_at) for t in tokens.values()],
            ),
            ("meta", list(meta.items())),
        ]
        with self._conn.begin():
            for table, values in rows:
                if values:
                    self._conn.exec_driver_sql(self._upserts[table], values)
        self.commits += 1

    def _load(self) -> None:
        with self._conn.begin():
            for row in self._conn.execute(select(invoice_table.c.data)):
                invoice = Invoice.from_json(json.loads(row.data))
                self.invoices[invoice.serial] = invoice
                self.by_order[(invoice.seller_tax, invoice.order_no)] = invoice.serial
                if invoice.number:
                    self.by_number[invoice.number] = invoice.serial
            for row in self._conn.execute(select(slip_table.c.data)):
                slip = RedSlip.from_json(json.loads(row.data))
                self.slips[slip.bill_id] = slip
            for row in self._conn.execute(select(token_table)):
                self.tokens[row.token] = Token(
                    row.token, row.app_key, row.issued_at, row.expires_at
                )
            for row in self._conn.execute(select(meta_table)):
                self.meta[row.key] = row.value


def _upsert(table: Table) -> Insert:
    """INSERT … ON CONFLICT (primary key) DO UPDATE: unlike INSERT OR REPLACE, a clash on another
    unique key (seller, orderNo) raises instead of silently deleting the older invoice."""
    stmt = sqlite_insert(table)
    keys = [c.name for c in table.primary_key.columns]
    return stmt.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
