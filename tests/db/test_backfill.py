"""Backfill: orders that completed before attach, enqueued once, in batches, with progress."""

from __future__ import annotations

import itertools
import json
from datetime import date
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from cdc_invoice import capture
from cdc_invoice.capture import AttachArgs, BackfillProgress
from cdc_invoice.cli import main
from cdc_invoice.db.repository import json_loads

Conn = psycopg.Connection[tuple[Any, ...]]

SHOP = AttachArgs(
    source="shop",
    order_table="shop.orders",
    order_key="order_id",
    issue_when="NEW.status = 'shipped' AND NEW.status IS DISTINCT FROM OLD.status",
    document="invoicing.shop_document",
    seller="main",
    reverse_when="NEW.status = 'returned' AND OLD.status = 'shipped'",
)


def existing_orders(dsn: str, orders: int, every_nth_open: int = 6) -> None:
    """``orders`` orders written while the shop was not attached; every nth is still 'new'."""
    capture.detach(dsn, "shop")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO shop.orders (customer_id, status, created_at)
               SELECT (ARRAY['C001', 'C002', 'C003', 'C004'])[1 + g %% 4],
                      CASE WHEN g %% %(nth)s = 0 THEN 'new' ELSE 'shipped' END,
                      timestamptz '2024-01-01 00:00+08' + g * interval '1 hour'
                 FROM generate_series(1, %(n)s) g""",
            {"n": orders, "nth": every_nth_open},
        )
        conn.execute(
            """INSERT INTO shop.order_lines (order_id, line_no, sku, quantity, unit_price, discount)
               SELECT o.order_id, n,
                      (ARRAY['P-LAPTOP', 'P-MOUSE', 'P-PAPER', 'P-TEA'])[1 + (o.order_id + n) % 4],
                      n, 79.90, CASE WHEN n = 2 THEN 5 ELSE 0 END
                 FROM shop.orders o, generate_series(1, 1 + (o.order_id % 3)::int) n"""
        )
    capture.attach(dsn, SHOP)


def shipped_ids(conn: Conn) -> set[str]:
    return {
        str(r[0]) for r in conn.execute("SELECT order_id FROM shop.orders WHERE status = 'shipped'")
    }


def issue_requests(conn: Conn) -> list[str]:
    return [
        str(r[0])
        for r in conn.execute(
            "SELECT order_ref FROM cdc_invoice.request WHERE source = 'shop' AND kind = 'issue'"
        )
    ]


@pytest.mark.slow
def test_10000_orders_in_batches_with_progress_enqueued_exactly_once(shop_dsn: str) -> None:
    existing_orders(shop_dsn, 12_000)  # 10,000 shipped, 2,000 still open
    seen: list[tuple[int, int, int]] = []

    def progress(p: BackfillProgress) -> None:
        seen.append((p.total, p.scanned, p.enqueued))

    with psycopg.connect(shop_dsn, autocommit=True) as listener:
        listener.execute("LISTEN cdc_invoice")
        first = capture.backfill(shop_dsn, "shop", batch_size=1000, progress=progress)
        notified = list(listener.notifies(timeout=1.0))
        second = capture.backfill(shop_dsn, "shop", batch_size=1000)
        notified_again = list(listener.notifies(timeout=0.5))
        requests = issue_requests(listener)
        expected = shipped_ids(listener)

    print(
        f"backfill: {first.scanned} orders read, {first.enqueued} enqueued in "
        f"{first.seconds:.2f}s ({first.rate:,.0f} orders/s); second run {second.seconds:.2f}s"
    )
    assert (first.total, first.scanned, first.eligible, first.enqueued) == (
        12_000,
        12_000,
        10_000,
        10_000,
    )
    assert first.batches == 13  # twelve full batches, then an empty one that ends the scan
    # Progress: reported before the first batch and after each, never going backwards.
    assert seen[0] == (12_000, 0, 0)
    assert [s[1] for s in seen] == [1000 * i for i in range(13)] + [12_000]
    assert all(a[2] <= b[2] for a, b in itertools.pairwise(seen))
    assert seen[-1] == (12_000, 12_000, 10_000)
    # One wake-up for the whole backfill; none when nothing was enqueued.
    assert len(notified) == 1 and notified_again == []
    # Exactly once each, only the shipped orders, and the second run adds nothing.
    assert len(requests) == len(set(requests)) == 10_000
    assert set(requests) == expected
    assert (second.eligible, second.queued_before, second.enqueued) == (10_000, 10_000, 0)


def test_backfilled_document_is_the_snapshot_the_trigger_takes(shop_dsn: str) -> None:
    existing_orders(shop_dsn, 30)
    capture.backfill(shop_dsn, "shop", batch_size=7)
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        backfilled = {
            ref: json_loads(doc)
            for ref, doc in conn.execute(
                "SELECT order_ref, document::text FROM cdc_invoice.request"
            ).fetchall()
        }
        assert len(backfilled) == 25
        # Let the trigger capture the same orders again, from scratch.
        conn.execute("DELETE FROM cdc_invoice.request")
        conn.execute("UPDATE shop.orders SET status = 'new' WHERE status = 'shipped'")
        conn.execute(
            "UPDATE shop.orders SET status = 'shipped' WHERE order_id::text = ANY(%s)",
            (list(backfilled),),
        )
        triggered = {
            ref: json_loads(doc)
            for ref, doc in conn.execute(
                "SELECT order_ref, document::text FROM cdc_invoice.request"
            ).fetchall()
        }

    def by_line(doc: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(doc, key=lambda r: r["line_no"])

    assert set(triggered) == set(backfilled)
    for ref, doc in backfilled.items():
        # Same rows, same JSON values (status differs: the order was re-shipped; not in the view).
        assert by_line(doc) == by_line(triggered[ref])
        assert any(r["discount"] for r in doc) == (len(doc) >= 2)


def test_conditions_on_old_see_old_as_null_and_can_be_replaced(shop_dsn: str) -> None:
    """`OLD.status <> 'shipped'` is NULL (false) when OLD is NULL: as for an INSERT, nothing
    qualifies; the DBA passes the condition for existing rows instead."""
    existing_orders(shop_dsn, 12)
    capture.attach(
        shop_dsn,
        AttachArgs(
            "shop",
            "shop.orders",
            "order_id",
            "NEW.status = 'shipped' AND OLD.status <> 'shipped'",
            "invoicing.shop_document",
            "main",
        ),
    )
    none = capture.backfill(shop_dsn, "shop")
    assert (none.scanned, none.eligible, none.enqueued) == (12, 0, 0)
    replaced = capture.backfill(shop_dsn, "shop", condition="NEW.status = 'shipped'")
    assert (replaced.eligible, replaced.enqueued) == (10, 10)
    with pytest.raises(capture.CaptureError) as exc:
        capture.backfill(shop_dsn, "shop", condition="NEW.nope = 1")
    assert (
        exc.value.sqlstate == "CI004" and "condition is not a valid condition" in exc.value.message
    )


def test_since_dry_run_and_the_sql_function(shop_dsn: str) -> None:
    existing_orders(shop_dsn, 48)  # created hourly from 2024-01-01 00:00+08: two days
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        dry = capture.backfill(
            shop_dsn, "shop", since=date(2024, 1, 2), since_column="created_at", dry_run=True
        )
        # timestamptz::date is the day in the session's TimeZone, the same in both sessions.
        day2 = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'shipped') FROM shop.orders "
            "WHERE created_at::date >= '2024-01-02'"
        ).fetchone()
        assert day2 is not None and 0 < day2[0] < 48
        assert (dry.scanned, dry.eligible, dry.enqueued) == (day2[0], day2[1], day2[1])
        assert issue_requests(conn) == []

        real = capture.backfill(shop_dsn, "shop", since=date(2024, 1, 2), since_column="created_at")
        assert real.enqueued == dry.enqueued and len(issue_requests(conn)) == dry.enqueued

        # The whole backfill in SQL, for psql users: the rest of the orders, one transaction.
        conn.execute("LISTEN cdc_invoice")
        row = conn.execute("SELECT * FROM cdc_invoice.backfill('shop', batch_size => 5)").fetchone()
        assert row == (48, 40, dry.enqueued, 40 - dry.enqueued)
        assert len(list(conn.notifies(timeout=1.0))) == 1
        assert len(issue_requests(conn)) == 40
        event = conn.execute(
            "SELECT detail FROM cdc_invoice.event WHERE event = 'source.backfilled' ORDER BY id"
        ).fetchall()
        assert [e[0]["enqueued"] for e in event] == [real.enqueued, 40 - dry.enqueued]


@pytest.mark.parametrize(
    ("kwargs", "message", "hint"),
    [
        ({"source": "nope"}, "source 'nope' is not attached", "cdc-invoice sources"),
        ({"since": date(2024, 1, 1)}, "since and since_column go together", "since_column"),
        (
            {"since": date(2024, 1, 1), "since_column": "nope"},
            "column 'nope' does not exist in shop.orders",
            "exact column name",
        ),
        (
            {"since": date(2024, 1, 1), "since_column": "customer_id"},
            "a value of shop.orders.customer_id is not a date",
            "YYYY-MM-DD",
        ),
        ({"batch_size": 0}, "batch_size must be at least 1", "1000"),
    ],
)
def test_backfill_errors_name_the_problem_and_the_fix(
    shop_dsn: str, kwargs: dict[str, Any], message: str, hint: str
) -> None:
    existing_orders(shop_dsn, 3)
    args: dict[str, Any] = {"source": "shop", **kwargs}
    source = args.pop("source")
    with pytest.raises(capture.CaptureError) as exc:
        capture.backfill(shop_dsn, source, **args)
    assert message in exc.value.message
    assert exc.value.hint is not None and hint in exc.value.hint
    assert exc.value.sqlstate is not None and exc.value.sqlstate.startswith("CI")


def test_cli_backfill_shows_progress_and_is_idempotent(shop_dsn: str) -> None:
    existing_orders(shop_dsn, 60)
    runner = CliRunner()
    args = ["backfill", "--dsn", shop_dsn, "--source", "shop", "--batch", "10"]
    dry = runner.invoke(main, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "60/60 orders read, 50 would enqueue" in dry.output
    assert "dry run: nothing was changed" in dry.output
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "60/60" in first.output and "50 enqueued" in first.output
    assert "60 order(s) read, 50 meet the condition, 0 already queued, 50 enqueued" in first.output
    second = runner.invoke(main, args)
    assert "50 already queued, 0 enqueued" in second.output
    usage = runner.invoke(main, [*args, "--since", "2024-01-01"])
    assert usage.exit_code == 2 and "--since and --since-column go together" in usage.output
    with psycopg.connect(shop_dsn) as conn:
        assert len(issue_requests(conn)) == 50
    listed = runner.invoke(main, ["sources", "--dsn", shop_dsn, "--json"])
    assert json.loads(listed.output)["queued"] == 50
