"""The work queue: claim with SKIP LOCKED and leases, fencing, recovery of abandoned work."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

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
