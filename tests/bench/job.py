"""The daemon's work for one order as a plain job, for the peers (procrastinate, PgQueuer).

The same code the daemon runs, minus the daemon: the mappings through ``Repository.mappings``,
``mapping.build_order`` + ``compute.build_invoices``, ``NuonuoProvider.issue`` against the same
sandbox, ``query_by_serials`` every ``poll_seconds`` until issued (a plain job has no batched
poller: it waits in its slot), then the invoice row and its lines in one transaction, with the
daemon's own INSERT statements aimed at ``peer.invoice`` / ``peer.invoice_line`` (copies of
cdc_invoice.invoice / invoice_line with the same columns, checks and indexes, minus the FK to
cdc_invoice.request, which peers do not use). The token is shared through the database as the
daemon shares it (PgTokenStore).
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from functools import partial
from typing import Any

from psycopg_pool import AsyncConnectionPool

from cdc_invoice.daemon.drafts import invoice_row, order_no
from cdc_invoice.db.queries import q
from cdc_invoice.db.repository import Repository, configure_connection
from cdc_invoice.db.token_store import PgTokenStore, fernet_for
from cdc_invoice.invoice import compute, mapping
from cdc_invoice.invoice.model import Seller
from cdc_invoice.providers.nuonuo.adapter import NuonuoProvider
from cdc_invoice.providers.nuonuo.client import Credentials

PEER_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS peer;
DROP TABLE IF EXISTS peer.invoice_line, peer.invoice;
CREATE TABLE peer.invoice (LIKE cdc_invoice.invoice INCLUDING ALL);
CREATE TABLE peer.invoice_line (LIKE cdc_invoice.invoice_line INCLUDING ALL);
-- LIKE copies no foreign keys: the peers' lines are checked against their invoices as ours are.
ALTER TABLE peer.invoice_line ADD FOREIGN KEY (invoice_id) REFERENCES peer.invoice ON DELETE CASCADE;
"""

json_loads = partial(json.loads, parse_float=Decimal)


def insert_sql() -> tuple[str, str]:
    inv = q("insert_invoice").replace("INTO cdc_invoice.invoice ", "INTO peer.invoice ", 1)
    line = q("insert_invoice_line").replace(
        "INTO cdc_invoice.invoice_line ", "INTO peer.invoice_line ", 1
    )
    assert "peer.invoice " in inv and "peer.invoice_line " in line
    return inv, line


class InvoiceJob:
    def __init__(
        self,
        dsn: str,
        *,
        base_url: str,
        app_key: str,
        app_secret: str,
        tag: str,
        poll_seconds: float = 0.2,
        pool_size: int = 4,
        max_connections: int = 64,
    ) -> None:
        self.dsn = dsn
        self.tag = tag
        self.poll_seconds = poll_seconds
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn,
            min_size=pool_size,
            max_size=pool_size,
            kwargs={"autocommit": True},
            configure=configure_connection,
            open=False,
        )
        self.repo = Repository(self.pool, f"peer-{tag}")
        self.provider = NuonuoProvider(
            base_url=base_url,
            token_url=base_url + "/accessToken",  # the sandbox's own token endpoint
            credentials={"main": Credentials(app_key=app_key, app_secret=app_secret)},
            token_store=PgTokenStore(self.repo, {app_key: fernet_for(app_secret)}),
            timeout=10.0,
            max_connections=max_connections,
        )
        self.seller: Seller | None = None
        self.insert_invoice, self.insert_line = insert_sql()
        self.done = 0

    async def open(self) -> None:
        await self.pool.open(wait=True)
        seller = await self.repo.seller("main")
        assert seller is not None
        self.seller = seller

    async def close(self) -> None:
        await self.provider.aclose()
        await self.pool.close()

    async def run(self, job_id: int, order_ref: str, document: str) -> None:
        seller = self.seller
        assert seller is not None
        rows = json_loads(document)
        customers, items = mapping.document_refs(rows)
        buyers, taxes = await self.repo.mappings("shop", sorted(customers), sorted(items))
        order = mapping.build_order("shop", order_ref, rows, buyers, taxes, seller)
        drafts = compute.build_invoices(order, seller)
        base = f"PB{self.tag}{job_id:012d}"
        submitted = []
        for draft in drafts:
            number = order_no(base, draft.part)
            accepted = await self.provider.issue(seller, draft, number)
            submitted.append((draft, number, accepted.serial))
        while True:
            await asyncio.sleep(self.poll_seconds)
            found = {
                inv.serial: inv
                for inv in await self.provider.query_by_serials(
                    seller, [s for _, _, s in submitted]
                )
            }
            states = [found.get(s) for _, _, s in submitted]
            if all(s is not None and s.status == "issued" for s in states):
                break
            if any(s is not None and s.status == "failed" for s in states):
                raise RuntimeError(f"order {order_ref}: the platform failed the invoice")
        async with self.pool.connection() as conn, conn.transaction():
            for (draft, number, _), result in zip(submitted, states, strict=True):
                assert result is not None
                inv = invoice_row(
                    request_id=job_id, seller=seller, draft=draft, order_no=number, result=result
                )
                lines = inv.pop("lines")
                inv.pop("event_detail", None)
                row = await (await conn.execute(self.insert_invoice, inv)).fetchone()
                assert row is not None
                async with conn.cursor() as cur:
                    await cur.executemany(
                        self.insert_line, [{**ln, "invoice_id": row[0]} for ln in lines]
                    )
        self.done += 1
