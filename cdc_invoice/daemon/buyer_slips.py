"""Red-letter slips the BUYER applied for (红字确认单 03 购方录入待销方确认).

Once a buyer has booked an invoice it is often the buyer who starts the slip; the seller must
confirm or refuse it within 72 hours of the slip's own time (红字确认单查询/确认 docs). Every
``daemon.buyer_slip_poll_seconds`` the daemon lists the slips waiting for each seller and copies
them into ``cdc_invoice.buyer_red_slip`` (view ``pending_buyer_red_slips``); finance answers with
``cdc_invoice.confirm_red_slip(bill_id, agree)``, and daemon/lifecycle.py carries the answer out.
Listing is read-only: a failed listing is logged and tried again next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb

from cdc_invoice.db.queries import q
from cdc_invoice.db.repository import SCHEMA_GONE, DatabaseUnavailable, Repository, schema_gone
from cdc_invoice.errors import ProviderError
from cdc_invoice.invoice.model import InvoiceLine, LineProperty
from cdc_invoice.providers.base import BuyerSlip, Provider

log = logging.getLogger(__name__)

# 72 hours plus the day boundary: billTimeStart/End are dates (China time).
LOOKBACK = timedelta(days=4)


def _line_json(slip: BuyerSlip) -> list[dict[str, Any]]:
    return [
        {
            "blue_line_no": ln.blue_line_no,
            "name": ln.name,
            "tax_code": ln.tax_code,
            "tax_rate": str(ln.tax_rate),
            "quantity": None if ln.quantity is None else str(ln.quantity),
            "amount_excl_tax": str(ln.amount_excl_tax),
            "tax": str(ln.tax),
        }
        for ln in slip.lines
    ]


async def sync_once(repo: Repository, provider: Provider, now: datetime | None = None) -> int:
    """Copy every seller's waiting buyer slips; returns how many new ones were seen."""
    since = (now or datetime.now(UTC)) - LOOKBACK
    seller_ids = sorted(set((await repo.source_sellers()).values()))
    new = 0
    for seller_id in seller_ids:
        seller = await repo.seller(seller_id)
        if seller is None:
            continue
        listed_at = datetime.now(UTC)
        try:
            slips = await provider.list_buyer_slips(seller, since)
        except ProviderError as exc:
            log.warning("buyer red-letter slips of seller %s: %s", seller_id, exc)
            continue
        async with repo.connection() as conn, conn.transaction():
            for slip in slips:
                cur = await conn.execute(
                    q("upsert_buyer_slip"),
                    {
                        "bill_id": slip.bill_id,
                        "seller_id": seller_id,
                        "bill_no": slip.bill_no,
                        "bill_uuid": slip.bill_uuid,
                        "blue_number": slip.blue_number,
                        "red_reason": slip.red_reason,
                        "slip_time": slip.bill_time,
                        "total_excl_tax": slip.total_excl_tax,
                        "total_tax": slip.total_tax,
                        "lines": Jsonb(_line_json(slip)),
                        "status": slip.status_code,
                    },
                )
                row = await cur.fetchone()
                if row is not None and row[0] and row[1] is not None:
                    new += 1
                    detail = {
                        "bill_id": slip.bill_id,
                        "invoice": slip.blue_number,
                        "total": str(slip.total_excl_tax + slip.total_tax),
                        "expires_at": (slip.bill_time + timedelta(hours=72)).isoformat(),
                    }
                    await conn.execute(
                        q("buyer_slip_event"), {"invoice_id": row[1], "detail": Jsonb(detail)}
                    )
                    log.warning(
                        "buyer red-letter slip %s for invoice %s waits for the seller's answer "
                        "until %s: SELECT cdc_invoice.confirm_red_slip('%s', true|false)",
                        slip.bill_id,
                        slip.blue_number,
                        detail["expires_at"],
                        slip.bill_id,
                    )
            await conn.execute(
                q("buyer_slips_gone"),
                {
                    "seller_id": seller_id,
                    "listed": [s.bill_id for s in slips],
                    "listed_at": listed_at,
                },
            )
    return new


async def run(
    repo: Repository,
    provider: Provider,
    interval: Callable[[], float],
    stop: asyncio.Event,
    hint: asyncio.Event | None = None,
) -> None:
    """Sync every ``interval()`` seconds, and at once when ``hint`` is set (a red-letter
    callback), until ``stop``; an interval of 0 turns the sync off."""
    while not stop.is_set():
        seconds = interval()
        if seconds > 0:
            started = time.monotonic()
            try:
                await sync_once(repo, provider)
            except DatabaseUnavailable as exc:
                log.warning("buyer red-letter slips: %s", exc)
            except Exception as exc:  # a poller must neither die silently nor take the daemon down
                if schema_gone(exc):  # uninstalled under us: the worker stops the daemon
                    log.warning("buyer red-letter slips: %s", SCHEMA_GONE)
                else:
                    log.exception("buyer red-letter slips: the sync failed; trying again later")
            seconds = max(seconds - (time.monotonic() - started), 0.1)
        else:
            seconds = 5.0  # off: look again later (SIGHUP may turn it on)
        await _sleep(stop, hint, seconds)


async def _sleep(stop: asyncio.Event, hint: asyncio.Event | None, seconds: float) -> None:
    waits = [asyncio.ensure_future(stop.wait())]
    if hint is not None:
        waits.append(asyncio.ensure_future(hint.wait()))
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        if hint is not None:
            hint.clear()


def red_lines(slip_lines: list[dict[str, Any]], blue: list[InvoiceLine]) -> list[InvoiceLine]:
    """The red invoice the platform issues for a buyer's slip, as we record it: each slip line
    against its blue line (blueDetailIndex), the blue's unit price kept (销货退回时只允许修改数量,
    不允许修改单价), the slip's own (negative) amounts."""
    by_no = {ln.line_no: ln for ln in blue}
    out: list[InvoiceLine] = []
    for item in slip_lines:
        base = by_no.get(int(item["blue_line_no"]))
        if base is None:
            raise ValueError(f"the slip names blue line {item['blue_line_no']}, which we lack")
        ex, tax = Decimal(item["amount_excl_tax"]), Decimal(item["tax"])
        qty = None if item.get("quantity") in (None, "") else Decimal(item["quantity"])
        with_quantity = qty is not None and qty != 0
        out.append(
            InvoiceLine(
                line_no=base.line_no,
                source_line_no=base.source_line_no,
                item_ref=base.item_ref,
                name=base.name,
                tax_code=base.tax_code,
                tax_rate=base.tax_rate,
                quantity=-abs(qty) if with_quantity and qty is not None else None,
                unit_price=base.unit_price if with_quantity else None,
                price_includes_tax=base.price_includes_tax,
                amount_excl_tax=-abs(ex),
                tax=-abs(tax),
                amount_incl_tax=-abs(ex) - abs(tax),
                property=LineProperty.NORMAL,
                spec=base.spec,
                unit=base.unit,
                short_name=base.short_name,
                policy_flag=base.policy_flag,
            )
        )
    return out
