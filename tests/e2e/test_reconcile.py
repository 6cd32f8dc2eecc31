"""A response lost after issue: `cdc-invoice reconcile` adopts the platform's invoice, and no
second invoice is ever issued."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg

from cdc_invoice import demo, harness


def test_reconcile_adopts_an_invoice_whose_response_was_lost(
    shop_dsn: str, sandbox: harness.Sandbox, tmp_path: Path
) -> None:
    config = harness.write_config(
        tmp_path / "d.toml", dsn=shop_dsn, sandbox=sandbox, daemon={"max_backoff_seconds": 600.0}
    )
    sandbox.configure(fault_lost_response=1.0)  # the platform acts, the answer never arrives
    daemon = harness.start_daemon(config)
    [order] = demo.ship_orders(shop_dsn, 1)
    deadline = time.monotonic() + 30
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT retries, last_error FROM cdc_invoice.request").fetchone()
            if row and row[0] > 0:
                break
            time.sleep(0.1)
    daemon.stop()  # the daemon is gone before it could resolve the outcome itself
    assert row is not None and row[0] > 0, daemon.output()
    sandbox.configure(fault_lost_response=0.0)
    assert len(sandbox.invoices()) == 1  # issued at the platform, unknown to us
    with psycopg.connect(shop_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM cdc_invoice.invoice").fetchone() == (0,)

    def reconcile() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cdc_invoice", "reconcile", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    first = reconcile()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "adopted: 1" in first.stdout
    with psycopg.connect(shop_dsn) as conn:
        assert conn.execute("SELECT finding FROM cdc_invoice.report_reconciliation").fetchall() == [
            ("adopted",)
        ]
    assert demo.verify_invoices(shop_dsn, [order], sandbox) == []

    # The daemon comes back: nothing left to do, and still one invoice at the platform.
    daemon = harness.start_daemon(config)
    time.sleep(2)
    daemon.stop()
    assert len(sandbox.invoices()) == 1
    second = reconcile()
    assert second.returncode == 0 and "ok: 1" in second.stdout, second.stdout + second.stderr


def test_reconcile_flags_differences_and_exits_1(
    shop_dsn: str, sandbox: harness.Sandbox, tmp_path: Path
) -> None:
    config = harness.write_config(tmp_path / "d.toml", dsn=shop_dsn, sandbox=sandbox)
    daemon = harness.start_daemon(config)
    orders = demo.ship_orders(shop_dsn, 2)
    deadline = time.monotonic() + 30
    while demo.verify_invoices(shop_dsn, orders, sandbox) and time.monotonic() < deadline:
        time.sleep(0.2)
    daemon.stop()
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        # Someone edited a recorded amount by hand, and a completed order's request failed.
        # The records refuse such edits (sql/records.sql); a superuser can switch the guard
        # triggers off, and reconcile is what still catches it.
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "UPDATE cdc_invoice.invoice_line SET amount_incl_tax = amount_incl_tax + 1, "
            "amount_excl_tax = amount_excl_tax + 1 WHERE invoice_id = (SELECT min(id) FROM cdc_invoice.invoice) AND line_no = 1"
        )
        conn.execute(
            "UPDATE cdc_invoice.invoice SET total_incl_tax = total_incl_tax + 1, "
            "total_excl_tax = total_excl_tax + 1 WHERE id = (SELECT min(id) FROM cdc_invoice.invoice)"
        )
        conn.execute(
            "INSERT INTO cdc_invoice.request (source, order_ref, kind, state, last_error) "
            "VALUES ('shop', 'X-1', 'issue', 'failed', 'item P-X has no tax mapping')"
        )
    result = subprocess.run(
        [sys.executable, "-m", "cdc_invoice", "reconcile", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    with psycopg.connect(shop_dsn) as conn:
        findings = sorted(
            r[0] for r in conn.execute("SELECT finding FROM cdc_invoice.report_reconciliation")
        )
    assert findings == ["amount_mismatch", "not_invoiced", "ok"]
