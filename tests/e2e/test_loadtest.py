"""`cdc-invoice loadtest` against the demo shop, the sandbox and a running daemon."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from click.testing import CliRunner

from cdc_invoice import harness
from cdc_invoice.cli import main

StartDaemon = Callable[..., harness.Proc]

# Completes one order the way the shop's application would: an order created already shipped,
# with its lines, in one transaction (the deferred trigger snapshots it at commit).
COMPLETE_SQL = """
WITH o AS (INSERT INTO shop.orders (customer_id, status, shipped_at)
           VALUES (CASE WHEN %(n)s %% 2 = 0 THEN 'C001' ELSE 'C003' END, 'shipped', now())
           RETURNING order_id),
     l AS (INSERT INTO shop.order_lines (order_id, line_no, sku, quantity, unit_price)
           SELECT order_id, 1, 'P-MOUSE', 2, 79.90 FROM o
           UNION ALL SELECT order_id, 2, 'P-TEA', 1, 268.00 FROM o)
SELECT order_id FROM o
"""


def test_loadtest_completes_orders_and_reports_latency(
    shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon
) -> None:
    start_daemon(shop_dsn, sandbox, concurrency=16)
    runner = CliRunner()
    args = ["loadtest", "--dsn", shop_dsn, "--source", "shop", "--yes", "--timeout", "30"]
    result = runner.invoke(
        main, [*args, "--orders", "20", "--rate", "40", "--complete-sql", COMPLETE_SQL]
    )
    assert result.exit_code == 0, result.output
    assert "orders completed" in result.output and "20/20" in result.output
    assert "invoices recorded" in result.output
    assert "p99" in result.output
    with psycopg.connect(shop_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM cdc_invoice.invoice i JOIN shop.orders o "
            "ON o.order_id::text = i.order_ref"
        ).fetchone()
    assert row is not None and row[0] == 20

    # --replay: no SQL; clones the latest captured document into new requests
    result = runner.invoke(main, [*args, "--orders", "10", "--replay"])
    assert result.exit_code == 0, result.output
    assert "10/10" in result.output
    with psycopg.connect(shop_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM cdc_invoice.invoice WHERE order_ref LIKE 'loadtest-%'"
        ).fetchone()
    assert row is not None and row[0] == 10


def test_loadtest_refuses_an_unknown_source_and_bad_usage(shop_dsn: str) -> None:
    runner = CliRunner()
    base = ["loadtest", "--dsn", shop_dsn, "--yes", "--orders", "1"]
    result = runner.invoke(main, [*base, "--source", "nope", "--replay"])
    assert result.exit_code == 2
    assert "not attached" in result.output
    result = runner.invoke(main, [*base, "--source", "shop"])
    assert result.exit_code == 2
    assert "exactly one of" in result.output
    result = runner.invoke(
        main, [*base, "--source", "shop", "--complete-sql", "SELECT NULL::bigint"]
    )
    assert result.exit_code == 2
    assert "returned no order key" in result.output
