"""The daemon's work queries: claims, results and records, each from sql/queries.sql by name.

(The LISTEN connection, listener.py, and the start-up and health checks open their own.)

psycopg errors are mapped here, once: OperationalError (connection lost, server restarting) is
``DatabaseUnavailable`` and the daemon retries; anything else is a bug and propagates.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool

from cdc_invoice.db.queries import q
from cdc_invoice.errors import CdcInvoiceError, RequestRefused
from cdc_invoice.invoice.model import Buyer, InvoiceLine, ItemTax, LineProperty, Seller

log = logging.getLogger(__name__)

# Detect a dead peer within ~30 s even when idle (half-open TCP after a failover or a cut link).
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "connect_timeout": 10,
}


# No unit of work of the daemon (a claim, a batch of results) takes seconds on a healthy server.
OPERATION_TIMEOUT = 30.0


class DatabaseUnavailable(CdcInvoiceError):
    """The database connection failed; the operation can be retried."""

    retryable = True


SCHEMA_GONE = (
    "the cdc_invoice schema is gone (was `cdc-invoice uninstall` run?): stopping; "
    "run `cdc-invoice install` before starting the daemon again"
)


def schema_gone(exc: BaseException) -> bool:
    """The daemon's own tables or functions no longer exist: the schema was dropped under it."""
    missing = (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)
    return isinstance(exc, missing) and "cdc_invoice" in str(exc)


def _json_default(o: object) -> str:
    if isinstance(o, Decimal):
        return str(o)
    if isinstance(o, datetime):
        return o.isoformat()
    raise TypeError(f"cannot serialise {type(o).__name__}")


json_dumps = partial(json.dumps, default=_json_default, ensure_ascii=False, separators=(",", ":"))
# Numbers in documents are money and quantities: never let them become floats.
json_loads = partial(json.loads, parse_float=Decimal)


async def configure_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    set_json_loads(json_loads, conn)
    set_json_dumps(json_dumps, conn)


def refused(exc: psycopg.Error) -> CdcInvoiceError:
    """A CI… error raised by our SQL functions, as a RequestRefused; anything else re-raised."""
    if exc.sqlstate and exc.sqlstate.startswith("CI"):
        return RequestRefused(
            exc.diag.message_primary, hint=exc.diag.message_hint, sqlstate=exc.sqlstate
        )
    raise exc


def _parts_at_platform(progress: dict[str, Any] | None) -> list[int]:
    """Parts of an issue request that reached the platform (any state but refused outright)."""
    parts = (progress or {}).get("parts") or []
    return [int(p["part"]) for p in parts if p.get("state", "accepted") != "refused"]


@dataclass(slots=True)
class ClaimedRequest:
    id: int
    source: str
    order_ref: str
    kind: str
    state: str  # 'claimed' (work to start) or 'submitted' (poll the platform)
    attempt: int
    retries: int
    document: list[dict[str, Any]] | None
    params: dict[str, Any] | None
    invoice_id: int | None
    platform_order_no: str
    progress: dict[str, Any] | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Fence:
    """Who holds a request: completions only apply while this is still true."""

    id: int
    attempt: int


class Repository:
    def __init__(
        self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]], daemon_id: str
    ) -> None:
        self.pool = pool
        self.daemon_id = daemon_id

    @classmethod
    async def open(cls, dsn: str, daemon_id: str, size: int = 4) -> Repository:
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            dsn,
            min_size=size,
            max_size=size,
            kwargs={"autocommit": True, **KEEPALIVES},
            configure=configure_connection,
            open=False,
            # The database may be restarting or failing over: keep trying for an hour (the pool
            # also regrows whenever a caller waits for a connection).
            reconnect_timeout=3600,
        )
        await pool.open(wait=False)
        return cls(pool, daemon_id)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection for one short unit of work, bounded by ``OPERATION_TIMEOUT``.

        A link that stops answering without closing (a half-open TCP flow through a proxy or
        NAT) would otherwise hang the caller forever; on timeout psycopg cancels the query and
        the pool drops the connection.
        """
        try:
            async with asyncio.timeout(OPERATION_TIMEOUT), self.pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"database unavailable: {exc}".strip()) from exc
        except TimeoutError as exc:
            # Its idle siblings went through the same stalled link: replace them all at once
            # rather than let each time out in turn.
            await self.pool.drain()
            raise DatabaseUnavailable(
                f"database unavailable: no answer within {OPERATION_TIMEOUT:.0f}s"
            ) from exc

    # --- queue ---------------------------------------------------------------------------

    async def claim(
        self,
        limit: int,
        lease_seconds: float,
        kinds: Sequence[str] = ("issue",),
        poll_limit: int | None = None,
        sellers: Sequence[str] | None = None,
    ) -> list[ClaimedRequest]:
        """Up to ``poll_limit`` (default ``limit``) results to poll, plus up to ``limit`` new
        or retried requests; only of sources whose seller is in ``sellers`` (None: any)."""
        async with self.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                q("claim_requests"),
                {
                    "limit": limit,
                    "poll_limit": limit if poll_limit is None else poll_limit,
                    "daemon_id": self.daemon_id,
                    "lease_seconds": lease_seconds,
                    "kinds": list(kinds),
                    "sellers": None if sellers is None else list(sellers),
                },
            )
            return [ClaimedRequest(**row) for row in await cur.fetchall()]

    async def claim_one(self, request_id: int, lease_seconds: float) -> ClaimedRequest | None:
        """Take one known request that no live daemon holds (see claim_one in queries.sql)."""
        async with self.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                q("claim_one"),
                {"id": request_id, "daemon_id": self.daemon_id, "lease_seconds": lease_seconds},
            )
            row = await cur.fetchone()
            return ClaimedRequest(**row) if row else None

    async def fetch(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows of a named read-only query (reports, reconciliation)."""
        async with self.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(q(name), params)
            return await cur.fetchall()

    async def execute_many(self, name: str, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            async with self.connection() as conn, conn.transaction(), conn.cursor() as cur:
                await cur.executemany(q(name), rows)

    async def renew_leases(self, ids: Sequence[int], lease_seconds: float) -> None:
        async with self.connection() as conn:
            await conn.execute(
                q("renew_leases"),
                {"ids": list(ids), "daemon_id": self.daemon_id, "lease_seconds": lease_seconds},
            )

    async def _mark_done(self, conn: psycopg.AsyncConnection[Any], fence: Fence) -> bool:
        """Finish the request in ``conn``'s transaction, if it is still ours."""
        cur = await conn.execute(
            q("mark_done"),
            {"id": fence.id, "attempt": fence.attempt, "daemon_id": self.daemon_id},
        )
        return cur.rowcount == 1

    async def _fenced(
        self, query: str, fence: Fence, params: dict[str, Any], event: dict[str, Any]
    ) -> bool:
        """Apply a named completion and its audit event only while the request is still ours:
        one statement (see mark_submitted in queries.sql). False when another daemon took it
        over (lease expired)."""
        async with self.connection() as conn:
            cur = await conn.execute(
                q(query),
                {
                    "id": fence.id,
                    "attempt": fence.attempt,
                    "daemon_id": self.daemon_id,
                    "source": event.get("source"),
                    "order_ref": event.get("order_ref"),
                    "event": event["event"],
                    "detail": Jsonb(event["detail"]) if event.get("detail") is not None else None,
                    **params,
                },
            )
            return cur.rowcount == 1

    async def mark_submitted(
        self,
        fence: Fence,
        progress: dict[str, Any],
        serial: str | None,
        poll_after: float,
        event: dict[str, Any],
    ) -> bool:
        params = {"progress": Jsonb(progress), "serial": serial, "poll_after": poll_after}
        return await self._fenced("mark_submitted", fence, params, event)

    async def release_poll(self, fences: Sequence[Fence], poll_after: float) -> None:
        if not fences:
            return
        async with self.connection() as conn:
            await conn.execute(
                q("release_poll"),
                {
                    "ids": [f.id for f in fences],
                    "attempts": [f.attempt for f in fences],
                    "daemon_id": self.daemon_id,
                    "poll_after": poll_after,
                },
            )

    async def release_retry(
        self,
        fence: Fence,
        delay: float,
        error: str,
        code: str | None,
        hint: str | None,
        event: dict[str, Any],
    ) -> bool:
        params = {"delay": delay, "error": error, "code": code, "hint": hint}
        return await self._fenced("release_retry", fence, params, event)

    async def release_deferred(
        self, fence: Fence, delay: float, error: str, code: str | None, hint: str | None
    ) -> bool:
        """Put a request back to wait for the platform (throttling, quota), not as a retry."""
        params = {"delay": delay, "error": error, "code": code, "hint": hint}
        return await self._fenced("release_deferred", fence, params, {"event": None})

    async def release_unclaimed(self, ids: Sequence[int]) -> None:
        if ids:
            async with self.connection() as conn:
                await conn.execute(
                    q("release_unclaimed"), {"ids": list(ids), "daemon_id": self.daemon_id}
                )

    async def mark_failed(
        self,
        fence: Fence,
        error: str,
        code: str | None,
        hint: str | None,
        event: dict[str, Any],
        progress: dict[str, Any] | None = None,
    ) -> bool:
        """Park the request as failed; ``progress`` (when given) replaces what it recorded
        about the platform, e.g. which parts of a split order reached it."""
        params = {
            "error": error,
            "code": code,
            "hint": hint,
            "progress": Jsonb(progress) if progress is not None else None,
        }
        return await self._fenced("mark_failed", fence, params, event)

    async def record_invoices(
        self, batch: Sequence[tuple[Fence, list[dict[str, Any]]]]
    ) -> list[int]:
        """Record finished requests' invoices and mark them done, several per transaction.

        The whole batch goes in one statement (record_issued). Should that fail on a unique
        violation (an invoice recorded already), each request is recorded again in a savepoint
        of its own, so the one at fault is skipped without undoing the others. A request that
        lost its lease is skipped either way. Returns the ids recorded.
        """
        if not batch:
            return []
        rows = [{**inv, "attempt": fence.attempt} for fence, invoices in batch for inv in invoices]
        try:
            async with self.connection() as conn:
                cur = await conn.execute(
                    q("record_issued"), {"invoices": Jsonb(rows), "daemon_id": self.daemon_id}
                )
                done = {int(r[0]) for r in await cur.fetchall()}
        except psycopg.errors.UniqueViolation as exc:
            log.warning(
                "recording %d requests at once hit %s; recording them one by one",
                len(batch),
                exc.diag.constraint_name,
            )
            return await self._record_each(batch)
        for fence, _ in batch:
            if fence.id not in done:
                log.warning("request %s: lease lost before recording; skipped", fence.id)
        return [fence.id for fence, _ in batch if fence.id in done]

    async def _record_each(self, batch: Sequence[tuple[Fence, list[dict[str, Any]]]]) -> list[int]:
        done: list[int] = []
        async with self.connection() as conn, conn.transaction():
            for fence, invoices in batch:
                try:
                    async with conn.transaction():
                        if not await self._mark_done(conn, fence):
                            log.warning(
                                "request %s: lease lost before recording; skipped", fence.id
                            )
                            continue
                        for inv in invoices:
                            await self._insert_invoice(conn, fence, inv)
                        done.append(fence.id)
                except psycopg.errors.UniqueViolation as exc:
                    log.warning(
                        "request %s: invoice already recorded (%s); skipped",
                        fence.id,
                        exc.diag.constraint_name,
                    )
        return done

    async def _insert_invoice(
        self, conn: psycopg.AsyncConnection[Any], fence: Fence, original: dict[str, Any]
    ) -> int:
        inv = {"remark": None, **original}  # a copy: the caller may retry the batch
        inv.setdefault("seal_failed", False)
        lines = inv.pop("lines")
        event_detail = inv.pop("event_detail", {})
        row = await (await conn.execute(q("insert_invoice"), inv)).fetchone()
        assert row is not None
        invoice_id = int(row[0])
        async with conn.cursor() as cur:
            await cur.executemany(
                q("insert_invoice_line"), [{**line, "invoice_id": invoice_id} for line in lines]
            )
        await self._event(
            conn,
            request_id=fence.id,
            invoice_id=invoice_id,
            source=inv["source"],
            order_ref=inv["order_ref"],
            event="invoice.recorded",
            detail={"invoice_number": inv["invoice_number"], "kind": inv["kind"], **event_detail},
        )
        return invoice_id

    # --- lifecycle -------------------------------------------------------------------------

    async def update_progress(
        self, fence: Fence, progress: dict[str, Any], poll_after: float
    ) -> bool:
        async with self.connection() as conn:
            cur = await conn.execute(
                q("update_progress"),
                {
                    "id": fence.id,
                    "attempt": fence.attempt,
                    "daemon_id": self.daemon_id,
                    "progress": Jsonb(progress),
                    "poll_after": poll_after,
                },
            )
            return cur.rowcount == 1

    async def invoice(self, invoice_id: int) -> dict[str, Any] | None:
        async with self.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(q("load_invoice"), {"id": invoice_id})
            return await cur.fetchone()

    async def invoice_lines(self, invoice_id: int, *, reds: bool = False) -> list[InvoiceLine]:
        """The lines of an invoice, or with reds=True those of all its red invoices."""
        async with self.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(q("load_invoice_lines"), {"id": invoice_id, "reds": reds})
            return [
                InvoiceLine(
                    line_no=r["line_no"],
                    source_line_no=r["source_line_no"],
                    item_ref=r["item_ref"],
                    name=r["item_name"],
                    tax_code=r["tax_code"] or "",
                    tax_rate=r["tax_rate"],
                    quantity=r["quantity"],
                    unit_price=r["unit_price"],
                    price_includes_tax=r["price_includes_tax"],
                    amount_excl_tax=r["amount_excl_tax"],
                    tax=r["tax"],
                    amount_incl_tax=r["amount_incl_tax"],
                    property=LineProperty(r["line_property"]),
                )
                for r in await cur.fetchall()
            ]

    async def record_red(self, fence: Fence, red: dict[str, Any], blue_id: int) -> str | None:
        """Record a red invoice, settle its blue's status, finish the request: one transaction.

        Returns the blue's new status, or None when the request was no longer ours."""
        async with self.connection() as conn, conn.transaction():
            if not await self._mark_done(conn, fence):
                return None
            await self._insert_invoice(conn, fence, red)
            row = await (await conn.execute(q("settle_blue_status"), {"id": blue_id})).fetchone()
            return str(row[0]) if row else None

    async def finish(
        self,
        fence: Fence,
        updates: Sequence[tuple[str, dict[str, Any]]],
        event: dict[str, Any],
    ) -> bool:
        """Mark a request done with some named updates and an event, in one transaction."""
        async with self.connection() as conn, conn.transaction():
            if not await self._mark_done(conn, fence):
                return False
            for name, params in updates:
                await conn.execute(q(name), params)
            await self._event(conn, request_id=fence.id, **event)
            return True

    async def expand_order_reversal(
        self, fence: Fence, source: str, order_ref: str, reason: str
    ) -> list[str] | None:
        """A whole-order reversal (attach's reverse_when) becomes one request per blue invoice.

        What becomes of the order's issue requests (docs/reliability.md, "Lifecycle rules"):
        one still in the queue that never went out (pending, never claimed) or failed with
        nothing at the platform is cancelled, with an event; one in flight makes the reversal
        wait (None: try again later) and its invoices are reversed once recorded; one that failed
        with parts at the platform refuses the reversal (RequestRefused): those parts must be
        settled first, or they could never be reversed.
        """
        async with self.connection() as conn, conn.transaction():
            keys = {"source": source, "order_ref": order_ref}
            issues = await (await conn.execute(q("order_issue_requests"), keys)).fetchall()
            cancel: list[int] = []
            for rid, state, attempt, claimed_by, _code, progress in issues:
                if state == "pending" and attempt == 0 and claimed_by is None:
                    cancel.append(int(rid))
                elif state in ("pending", "claimed", "submitted"):
                    return None
                elif state == "failed":
                    reached = _parts_at_platform(progress)
                    if reached:
                        raise RequestRefused(
                            f"order {order_ref!r} was returned while its issue request {rid} "
                            f"is failed with part(s) {', '.join(map(str, reached))} at the "
                            "platform; they must be recorded before they can be reversed",
                            hint=f"SELECT cdc_invoice.retry({rid}) (it keeps their order "
                            "numbers and records them), then SELECT cdc_invoice.retry("
                            f"{fence.id}) to reverse the order",
                            sqlstate="ISSUE_UNSETTLED",
                        )
                    cancel.append(int(rid))
            numbers = [
                str(r[0])
                for r in await (await conn.execute(q("order_blue_invoices"), keys)).fetchall()
            ]
            if not await self._mark_done(conn, fence):
                return []
            for rid in cancel:
                await conn.execute(
                    q("cancel_returned_issue"),
                    {
                        "id": rid,
                        "daemon_id": self.daemon_id,
                        "error": f"order returned (reversal request {fence.id}) before it was "
                        "invoiced: nothing reached the platform, nothing to reverse",
                        "hint": "nothing to do: a returned order is not invoiced",
                        "detail": Jsonb({"reason": "returned", "reversal_request": fence.id}),
                    },
                )
            for number in numbers:
                try:
                    await conn.execute(
                        q("request_reversal"), {"invoice_number": number, "reason": reason}
                    )
                except psycopg.Error as exc:
                    raise refused(exc) from exc
            await self._event(
                conn,
                request_id=fence.id,
                source=source,
                order_ref=order_ref,
                event="reverse.expanded",
                detail={"invoices": numbers, "cancelled_issue_requests": cancel},
            )
            return numbers

    async def _event(
        self,
        conn: psycopg.AsyncConnection[Any],
        *,
        event: str,
        request_id: int | None = None,
        invoice_id: int | None = None,
        source: str | None = None,
        order_ref: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        await conn.execute(
            q("insert_event"),
            {
                "actor": self.daemon_id,
                "request_id": request_id,
                "invoice_id": invoice_id,
                "source": source,
                "order_ref": order_ref,
                "event": event,
                "detail": Jsonb(detail) if detail is not None else None,
            },
        )

    # --- reference data ----------------------------------------------------------------

    async def source_sellers(self) -> dict[str, str]:
        async with self.connection() as conn:
            rows = await (await conn.execute(q("load_source"))).fetchall()
            return {str(r[0]): str(r[1]) for r in rows}

    async def seller(self, seller_id: str) -> Seller | None:
        async with self.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(q("load_seller"), {"seller_id": seller_id})
            row = await cur.fetchone()
            if row is None:
                return None
            return Seller(**{k: v for k, v in row.items() if v is not None})

    async def mappings(
        self, source: str, customer_refs: Sequence[str], item_refs: Sequence[str]
    ) -> tuple[dict[str, Buyer], dict[str, ItemTax]]:
        buyers: dict[str, Buyer] = {}
        items: dict[str, ItemTax] = {}
        buyer_rows: list[dict[str, Any]] = []
        item_rows: list[dict[str, Any]] = []
        async with self.connection() as conn:
            bcur = conn.cursor(row_factory=dict_row)
            icur = conn.cursor(row_factory=dict_row)
            async with conn.pipeline():  # both lookups in one round trip
                if customer_refs:
                    await bcur.execute(
                        q("load_buyers"), {"refs": list(customer_refs), "source": source}
                    )
                if item_refs:
                    await icur.execute(q("load_items"), {"refs": list(item_refs), "source": source})
            if customer_refs:
                buyer_rows = await bcur.fetchall()
            if item_refs:
                item_rows = await icur.fetchall()
        for r in buyer_rows:
            buyers[r["customer_ref"]] = Buyer(
                name=r["name"],
                tax_number=r["tax_number"],
                email=r["email"],
                phone=r["phone"],
                address=r["address"],
                bank_account=r["bank_account"],
                natural_person=r["natural_person"],
                invoice_line=r["invoice_type"],
            )
        for r in item_rows:
            items[r["item_ref"]] = ItemTax(
                item_ref=r["item_ref"],
                tax_code=r["tax_code"],
                tax_rate=r["tax_rate"],
                short_name=r["short_name"],
                policy_flag=r["policy_flag"],
            )
        return buyers, items

    # --- daemons -------------------------------------------------------------------------

    async def register_daemon(
        self, host: str, pid: int, version: str, sellers: Sequence[str] | None = None
    ) -> None:
        async with self.connection() as conn:
            await conn.execute(
                q("daemon_register"),
                {
                    "daemon_id": self.daemon_id,
                    "host": host,
                    "pid": pid,
                    "version": version,
                    "sellers": None if sellers is None else sorted(sellers),
                },
            )

    async def heartbeat(self) -> None:
        async with self.connection() as conn:
            await conn.execute(q("daemon_heartbeat"), {"daemon_id": self.daemon_id})

    async def daemon_stopped(self) -> None:
        async with self.connection() as conn:
            await conn.execute(q("daemon_stopped"), {"daemon_id": self.daemon_id})
