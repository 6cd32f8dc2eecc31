"""The work queue: claim with SKIP LOCKED and leases, fencing, recovery of abandoned work."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest

from cdc_invoice.db.queries import q
from cdc_invoice.db.repository import Fence, Repository


def enqueue(dsn: str, n: int, source: str = "shop") -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO cdc_invoice.request (source, order_ref, kind, document) "
            "SELECT %s, g::text, 'issue', '[]' FROM generate_series(1, %s) g",
            (source, n),
        )


async def open_repo(dsn: str, daemon_id: str) -> Repository:
    repo = await Repository.open(dsn, daemon_id, size=2)
    await repo.pool.wait()
    return repo


async def test_claim_takes_at_most_the_limit_and_sets_order_numbers(installed_dsn: str) -> None:
    enqueue(installed_dsn, 10)
    repo = await open_repo(installed_dsn, "d1")
    try:
        got = await repo.claim(4, 30)
        assert len(got) == 4
        assert all(r.state == "claimed" and r.attempt == 1 for r in got)
        assert len({r.platform_order_no for r in got}) == 4
        assert all(
            len(r.platform_order_no) == 18 and r.platform_order_no.startswith("CI") for r in got
        )
        assert len(await repo.claim(100, 30)) == 6
        assert await repo.claim(100, 30) == []  # all leased
    finally:
        await repo.close()


async def test_two_daemons_never_claim_the_same_row(installed_dsn: str) -> None:
    enqueue(installed_dsn, 500)
    a, b = await open_repo(installed_dsn, "a"), await open_repo(installed_dsn, "b")
    try:
        seen: list[int] = []

        async def drain(repo: Repository) -> None:
            while batch := await repo.claim(7, 30):
                seen.extend(r.id for r in batch)

        await asyncio.gather(drain(a), drain(b), drain(a), drain(b))
        assert len(seen) == 500 and len(set(seen)) == 500
    finally:
        await a.close()
        await b.close()


async def test_expired_lease_is_reclaimed_and_the_old_holder_is_fenced(installed_dsn: str) -> None:
    enqueue(installed_dsn, 1)
    old, new = await open_repo(installed_dsn, "old"), await open_repo(installed_dsn, "new")
    try:
        [first] = await old.claim(1, 0.2)
        await asyncio.sleep(0.4)  # the "old" daemon died or stalled: its lease runs out
        [again] = await new.claim(1, 30)
        assert again.id == first.id and again.attempt == first.attempt + 1
        assert again.platform_order_no == first.platform_order_no  # same idempotency key
        event = {"event": "test"}
        stale = Fence(first.id, first.attempt)
        assert not await old.mark_failed(stale, "late", None, None, event)
        assert not await old.release_retry(stale, 1.0, "late", None, None, event)
        assert await old.record_invoices([(stale, [])]) == []
        assert await new.mark_failed(
            Fence(again.id, again.attempt), "bad order", "INVALID", "fix", event
        )
        with psycopg.connect(installed_dsn) as conn:
            assert conn.execute(
                "SELECT state, last_error, claimed_by FROM cdc_invoice.request"
            ).fetchone() == ("failed", "bad order", None)
    finally:
        await old.close()
        await new.close()


async def test_retry_backs_off_and_retry_function_requeues(installed_dsn: str) -> None:
    enqueue(installed_dsn, 1)
    repo = await open_repo(installed_dsn, "d")
    try:
        [req] = await repo.claim(1, 30)
        assert await repo.release_retry(
            Fence(req.id, req.attempt),
            3600,
            "platform down",
            "503",
            None,
            {"event": "request.retry"},
        )
        assert await repo.claim(1, 30) == []  # not due for an hour
        with psycopg.connect(installed_dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT state, retries, last_error FROM cdc_invoice.request"
            ).fetchone()
            assert row == ("pending", 1, "platform down")
            with pytest.raises(psycopg.Error, match="not failed or cancelled"):
                conn.execute("SELECT cdc_invoice.retry(%s)", (req.id,))
            conn.execute("UPDATE cdc_invoice.request SET state = 'failed'")
            assert conn.execute("SELECT cdc_invoice.retry_failed()").fetchone() == (1,)
        [again] = await repo.claim(1, 30)
        assert again.id == req.id
    finally:
        await repo.close()


def test_claim_uses_the_due_index(installed_dsn: str) -> None:
    """A large finished history must not slow the claim: it scans the partial index only."""
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO cdc_invoice.request (source, order_ref, kind, state) "
            "SELECT 's', g::text, 'issue', 'done' FROM generate_series(1, 20000) g"
        )
        enqueue(installed_dsn, 100)
        conn.execute("ANALYZE cdc_invoice.request")
        plan = conn.execute(
            "EXPLAIN SELECT id FROM cdc_invoice.request WHERE state IN ('pending','claimed') "
            "AND run_after <= now() AND kind = ANY('{issue}') ORDER BY run_after, id LIMIT 10 "
            "FOR NO KEY UPDATE SKIP LOCKED"
        ).fetchall()
        text = "\n".join(str(r[0]) for r in plan)
        assert "request_due_idx" in text, text


def test_claim_query_never_scans_the_whole_queue(installed_dsn: str) -> None:
    """The daemon's own claim over a backlog and a history: index scans only, whatever the
    planner guesses of the CTEs' sizes (a hash join over a Seq Scan once made each claim cost
    O(queue))."""
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO cdc_invoice.request (source, order_ref, kind, state) "
            "SELECT 's', 'h' || g, 'issue', 'done' FROM generate_series(1, 20000) g"
        )
        enqueue(installed_dsn, 20000)
        conn.execute("ANALYZE cdc_invoice.request")
        params = {
            "limit": 8,
            "poll_limit": 400,
            "daemon_id": "d",
            "lease_seconds": 30.0,
            "kinds": ["issue"],
            "sellers": ["main"],
        }
        plan = "\n".join(
            str(r[0]) for r in conn.execute("EXPLAIN " + q("claim_requests"), params).fetchall()
        )
        # the sellers' sources: an InitPlan over the (small) source table, once per claim
        assert "Seq Scan on request" not in plan, plan
        assert "request_pkey" in plan and "request_due_idx" in plan, plan


def invoice(request_id: int, number: str, order_no: str) -> dict[str, object]:
    """An invoice row as the issuer builds it (drafts.invoice_row), with two lines."""
    line = {
        "line_no": 1,
        "source_line_no": 1,
        "line_property": 0,
        "item_ref": "P1",
        "item_name": "*电子计算机*笔记本",
        "tax_code": "1090511030000000000",
        "quantity": Decimal("3"),
        "unit_price": Decimal("33.33333333"),
        "price_includes_tax": True,
        "amount_excl_tax": Decimal("88.50"),
        "tax_rate": Decimal("0.13"),
        "tax": Decimal("11.50"),
        "amount_incl_tax": Decimal("100.00"),
    }
    return {
        "request_id": request_id,
        "part": 1,
        "source": "shop",
        "order_ref": str(request_id),
        "seller_id": "s1",
        "invoice_number": number,
        "kind": "blue",
        "invoice_line": "pc",
        "original_invoice_id": None,
        "platform_serial": "S" + number,
        "platform_order_no": order_no,
        "issued_at": datetime(2026, 11, 27, 8, 0, tzinfo=UTC),
        "buyer_name": "某某公司",
        "buyer_tax_number": None,
        "buyer_email": None,
        "buyer_phone": None,
        "total_excl_tax": Decimal("177.00"),
        "total_tax": Decimal("23.00"),
        "total_incl_tax": Decimal("200.00"),
        "pdf_url": None,
        "ofd_url": None,
        "xml_url": None,
        "delivery_status": None,
        "paper_code": None,
        "paper_number": None,
        "lines": [line, {**line, "line_no": 2, "source_line_no": 2}],
        "event_detail": {"order_no": order_no, "serial": "S" + number},
    }


async def test_record_invoices_in_one_statement_and_one_by_one_on_conflict(
    installed_dsn: str,
) -> None:
    enqueue(installed_dsn, 6)
    repo = await open_repo(installed_dsn, "d")
    try:
        reqs = sorted(await repo.claim(6, 30), key=lambda r: r.id)
        fences = [Fence(r.id, r.attempt) for r in reqs]
        rows = [
            invoice(r.id, f"2611000000000000{i:04d}", r.platform_order_no + "01")
            for i, r in enumerate(reqs)
        ]
        stale = Fence(fences[2].id, fences[2].attempt - 1)  # a lease lost meanwhile

        # The common case: one statement; the stale request is left out.
        batch = [(fences[0], [rows[0]]), (fences[1], [rows[1]]), (stale, [rows[2]])]
        assert sorted(await repo.record_invoices(batch)) == [fences[0].id, fences[1].id]

        # A conflict (request 4's invoice number is request 0's): the batch is recorded again
        # one request at a time, and only the request at fault is skipped.
        clash = {**rows[4], "invoice_number": rows[0]["invoice_number"]}
        batch = [(fences[3], [rows[3]]), (fences[4], [clash]), (fences[5], [rows[5]])]
        assert sorted(await repo.record_invoices(batch)) == [fences[3].id, fences[5].id]

        with psycopg.connect(installed_dsn) as conn:
            states = conn.execute(
                "SELECT id, state FROM cdc_invoice.request ORDER BY id"
            ).fetchall()
            assert [s for _, s in states] == ["done", "done", "claimed", "done", "claimed", "done"]
            recorded = conn.execute(
                "SELECT request_id, total_incl_tax, count(l.*), sum(l.amount_incl_tax), "
                "       min(l.unit_price), min(l.item_name) "
                "  FROM cdc_invoice.invoice i JOIN cdc_invoice.invoice_line l "
                "    ON l.invoice_id = i.id GROUP BY i.id ORDER BY request_id"
            ).fetchall()
            assert recorded == [
                (
                    fences[i].id,
                    Decimal("200.00"),
                    2,
                    Decimal("200.00"),
                    Decimal("33.33333333"),
                    "*电子计算机*笔记本",
                )
                for i in (0, 1, 3, 5)
            ]
            events = conn.execute(
                "SELECT e.request_id, e.actor, e.detail FROM cdc_invoice.event e "
                " WHERE e.event = 'invoice.recorded' AND e.invoice_id = "
                "       (SELECT id FROM cdc_invoice.invoice i WHERE i.request_id = e.request_id)"
                " ORDER BY e.request_id"
            ).fetchall()
            assert [e[0] for e in events] == [fences[i].id for i in (0, 1, 3, 5)]
            assert events[0][1] == "d"
            assert events[0][2] == {
                "invoice_number": rows[0]["invoice_number"],
                "kind": "blue",
                "order_no": rows[0]["platform_order_no"],
                "serial": "S" + str(rows[0]["invoice_number"]),
            }
    finally:
        await repo.close()


async def test_fenced_completions_write_their_event_only_when_still_ours(
    installed_dsn: str,
) -> None:
    enqueue(installed_dsn, 1)
    repo = await open_repo(installed_dsn, "d")
    try:
        [req] = await repo.claim(1, 30)
        event = {
            "event": "platform.submitted",
            "source": "shop",
            "order_ref": "1",
            "detail": {"parts": [{"serial": "X1"}]},
        }
        assert not await repo.mark_submitted(Fence(req.id, req.attempt + 1), {}, "X1", 1, event)
        assert await repo.mark_submitted(Fence(req.id, req.attempt), {"parts": []}, "X1", 1, event)
        with psycopg.connect(installed_dsn) as conn:
            assert conn.execute(
                "SELECT r.state, r.platform_serial, e.actor, e.source, e.order_ref, e.detail "
                "  FROM cdc_invoice.request r JOIN cdc_invoice.event e ON e.request_id = r.id"
            ).fetchall() == [("submitted", "X1", "d", "shop", "1", event["detail"])]
    finally:
        await repo.close()
