"""The core promise, with real processes: PostgreSQL + `cdc-invoice sandbox` + `cdc-invoice run`."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from cdc_invoice import demo, harness
from cdc_invoice.invoice.model import Seller
from cdc_invoice.providers.nuonuo.adapter import NuonuoProvider
from cdc_invoice.providers.nuonuo.client import Credentials
from cdc_invoice.providers.nuonuo.token import MemoryTokenStore

StartDaemon = Callable[..., harness.Proc]


def wait_done(dsn: str, expected: int, timeout: float = 120.0) -> tuple[int, int]:
    return demo.wait_for_requests(dsn, expected, timeout, progress=False)


async def platform_invoices(sb: harness.Sandbox, order_nos: list[str]) -> dict[str, str]:
    """Ask the platform, through the protocol, what it issued under our order numbers."""
    seller = Seller(seller_id="main", tax_number=harness.SELLER_TAX_NUMBER, name="x", clerk="张三")
    provider = NuonuoProvider(
        base_url=sb.url,
        token_url=sb.token_url,
        token_store=MemoryTokenStore(),
        credentials={"main": Credentials(app_key=sb.app_key, app_secret=sb.app_secret)},
    )
    found: dict[str, str] = {}
    try:
        for i in range(0, len(order_nos), 50):
            for inv in await provider.query_by_order_nos(seller, order_nos[i : i + 50]):
                assert inv.order_no not in found
                found[inv.order_no] = inv.status
    finally:
        await provider.aclose()
    return found


@pytest.mark.slow
def test_500_orders_from_8_connections_get_exactly_500_invoices(
    shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(shop_dsn, sandbox, concurrency=32)
    orders = demo.ship_orders(shop_dsn, 500, connections=8)
    done, failed = wait_done(shop_dsn, 500)
    assert (done, failed) == (500, 0), daemon.output()[-3000:]
    assert demo.verify_invoices(shop_dsn, orders, sandbox) == []
    with psycopg.connect(shop_dsn) as conn:
        order_nos = [
            r[0] for r in conn.execute("SELECT platform_order_no FROM cdc_invoice.invoice")
        ]
        assert conn.execute(
            "SELECT count(*) FROM cdc_invoice.request WHERE state <> 'done'"
        ).fetchone() == (0,)
        # Lines add up to headers, and the daily report adds up to the invoices.
        assert conn.execute(
            "SELECT count(*) FROM cdc_invoice.invoice i WHERE total_incl_tax <> "
            "(SELECT sum(amount_incl_tax) FROM cdc_invoice.invoice_line l WHERE l.invoice_id = i.id)"
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT (SELECT sum(amount_incl_tax) FROM cdc_invoice.report_daily) = "
            "(SELECT sum(total_incl_tax) FROM cdc_invoice.invoice)"
        ).fetchone() == (True,)
    statuses = asyncio.run(platform_invoices(sandbox, order_nos))
    assert len(statuses) == 500 and set(statuses.values()) == {"issued"}


def test_completed_reopened_completed_again_gets_one_invoice(
    shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon
) -> None:
    start_daemon(shop_dsn, sandbox)
    [oid] = demo.ship_orders(shop_dsn, 1)
    assert wait_done(shop_dsn, 1) == (1, 0)
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute("UPDATE shop.orders SET status = 'new' WHERE order_id = %s", (oid,))
        conn.execute("UPDATE shop.orders SET status = 'shipped' WHERE order_id = %s", (oid,))
        time.sleep(1.5)
        assert conn.execute("SELECT count(*) FROM cdc_invoice.invoice").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM cdc_invoice.request").fetchone() == (1,)
    assert len(sandbox.invoices()) == 1


def test_bad_orders_are_parked_with_a_reason_and_the_others_flow(
    shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon
) -> None:
    start_daemon(shop_dsn, sandbox)
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO shop.products VALUES ('P-NEW', '新品', 'x', '个', NULL, 10)")
        empty = conn.execute(
            "INSERT INTO shop.orders (customer_id, status) VALUES ('C001', 'shipped') "
            "RETURNING order_id"
        ).fetchone()
        with conn.transaction():
            unmapped = conn.execute(
                "INSERT INTO shop.orders (customer_id, status) VALUES ('C002', "
                "'shipped') RETURNING order_id"
            ).fetchone()
            assert unmapped is not None
            conn.execute(
                "INSERT INTO shop.order_lines VALUES (%s, 1, 'P-NEW', 1, 10, 0), "
                "(%s, 2, 'P-TEA', 1, 268, 0)",
                (unmapped[0], unmapped[0]),
            )
    good = demo.ship_orders(shop_dsn, 10)
    assert wait_done(shop_dsn, 12) == (10, 2)
    assert empty is not None
    with psycopg.connect(shop_dsn) as conn:
        failures = dict(
            conn.execute(
                "SELECT order_ref, last_error FROM cdc_invoice.request WHERE state = 'failed'"
            ).fetchall()
        )
        hints = dict(
            conn.execute(
                "SELECT order_ref, hint FROM cdc_invoice.request WHERE state = 'failed'"
            ).fetchall()
        )
        assert set(failures) == {str(empty[0]), str(unmapped[0])}
        assert str(empty[0]) in failures[str(empty[0])] and "no lines" in failures[str(empty[0])]
        assert str(unmapped[0]) in failures[str(unmapped[0])]
        assert "P-NEW" in failures[str(unmapped[0])]
        assert "INSERT INTO cdc_invoice.item_tax" in (hints[str(unmapped[0])] or "")
        assert conn.execute("SELECT count(*) FROM cdc_invoice.invoice").fetchone() == (10,)
    assert demo.verify_invoices(shop_dsn, good, sandbox) == []


@pytest.mark.slow
def test_sigkill_mid_flight_then_restart_gives_exactly_one_invoice_each(
    shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon
) -> None:
    sandbox.configure(latency_ms=600)  # slow platform: the kill lands inside platform calls
    first = start_daemon(
        shop_dsn, sandbox, name="first", concurrency=16, lease_seconds=5.0, poll_interval=0.2
    )
    orders = demo.ship_orders(shop_dsn, 60, connections=4)
    in_flight = 0
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while in_flight == 0 and time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM cdc_invoice.request WHERE state = 'claimed'"
            ).fetchone()
            in_flight = int(row[0]) if row else 0
            time.sleep(0.05)
    # The sandbox acts half-way through its latency (0.3 s) and answers at 0.6 s: kill between
    # the two, when the first calls have acted and their answers are still on the way.
    time.sleep(0.45)
    first.kill()  # SIGKILL: no drain, claims held, issue calls in flight
    assert in_flight > 0, "the kill should land while requests are in flight:\n" + first.output()
    start_daemon(
        shop_dsn, sandbox, name="second", concurrency=16, lease_seconds=5.0, poll_interval=0.2
    )
    assert wait_done(shop_dsn, 60) == (60, 0)
    assert demo.verify_invoices(shop_dsn, orders, sandbox) == []
    with psycopg.connect(shop_dsn) as conn:
        adopted = conn.execute(
            "SELECT count(*) FROM cdc_invoice.event WHERE event = 'platform.submitted' "
            'AND detail @> \'{"parts": [{"adopted": true}]}\''
        ).fetchone()
    # The killed daemon's calls reached the platform: the second one adopted, not re-issued.
    assert adopted is not None and adopted[0] > 0


def test_a_result_is_polled_when_due_not_at_the_next_poll_interval(
    shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon
) -> None:
    """Once the platform has accepted an order nothing notifies the daemon again: it wakes
    itself when the result falls due, so one order is recorded in about result_poll_seconds
    + the issue delay, not at the next poll interval (30 s here)."""
    sandbox.configure(issue_delay_ms=200, latency_ms=0)
    start_daemon(shop_dsn, sandbox, poll_interval=30.0, result_poll_seconds=0.3)
    demo.ship_orders(shop_dsn, 1, connections=1)
    t0 = time.monotonic()
    assert wait_done(shop_dsn, 1, timeout=60) == (1, 0)
    assert time.monotonic() - t0 < 10, "the daemon waited for its poll interval"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_full_worker_waits_quietly_for_a_free_slot(
    shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon
) -> None:
    """Orders that arrive while every slot is busy wait without burning CPU (a NOTIFY while
    full once spun the claim loop until a slot freed up)."""
    # each issue call holds its slot 1.5 s (the harness's platform timeout is 2 s)
    sandbox.configure(latency_ms=1500)
    daemon = start_daemon(shop_dsn, sandbox, concurrency=2, poll_interval=30.0)
    demo.ship_orders(shop_dsn, 2, connections=1)
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM cdc_invoice.request WHERE state = 'claimed'"
            ).fetchone()
            if row and row[0] == 2:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the daemon never had both slots busy:\n" + daemon.output())
    demo.ship_orders(shop_dsn, 1, connections=1, seed=8)  # its NOTIFY arrives while full
    time.sleep(0.1)
    before = cpu_seconds(daemon.popen.pid)
    time.sleep(0.8)  # both slots are still busy
    used = cpu_seconds(daemon.popen.pid) - before
    assert used < 0.3, f"the full worker used {used:.2f} s of CPU in 0.8 s"
    assert wait_done(shop_dsn, 3, timeout=60) == (3, 0), daemon.output()[-3000:]


def test_sigterm_drains_and_exits_cleanly(
    shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(shop_dsn, sandbox)
    demo.ship_orders(shop_dsn, 5)
    assert wait_done(shop_dsn, 5) == (5, 0)
    assert daemon.stop() == 0
    assert "stopped: issued 5" in daemon.output()


def test_platform_failure_is_reissued_under_the_same_number_never_a_new_one(
    shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon
) -> None:
    """Status 22 (开票失败): the daemon re-issues it with reInvoice, same serial and order
    number (开票重试 doc); while it keeps failing the request is parked ISSUE_FAILED, and the
    operator's retry re-issues it again under that number. One invoice at the platform, ever."""
    sandbox.configure(fault_issue_fail=1.0)  # accepted, then status 22 (e.g. quota exhausted)
    start_daemon(shop_dsn, sandbox, result_poll_seconds=0.1)
    [order] = demo.ship_orders(shop_dsn, 1)
    assert wait_done(shop_dsn, 1) == (0, 1)
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT id, error_code, platform_order_no, hint FROM cdc_invoice.request"
        ).fetchone()
        assert row is not None and row[1] == "ISSUE_FAILED" and "same order number" in row[3]
        [failed] = sandbox.invoices()
        assert failed["status"] == "22" and failed["orderNo"] == row[2] + "01"
        sandbox.configure(fault_issue_fail=0.0)  # the cause is fixed
        conn.execute("SELECT cdc_invoice.retry(%s)", (row[0],))
    assert wait_done(shop_dsn, 1) == (1, 0)
    with psycopg.connect(shop_dsn) as conn:
        same = conn.execute("SELECT platform_order_no FROM cdc_invoice.request").fetchone()
    assert same is not None and same[0] == row[2]
    [issued] = sandbox.invoices()
    assert (issued["status"], issued["serial"]) == ("2", failed["serial"])
    assert demo.verify_invoices(shop_dsn, [order], sandbox) == []
    stats = sandbox_stats(sandbox)
    assert "nuonuo.OpeMplatform.reInvoice" in str(stats)


def sandbox_stats(sb: harness.Sandbox) -> object:
    import httpx

    return httpx.get(f"{sb.url}/_sandbox/stats", timeout=10).json()


def test_sign_failed_invoice_is_recorded_once_as_issued(
    shop_dsn: str, tmp_path: Path, start_daemon: StartDaemon
) -> None:
    """--fault-sign-failed 1: every invoice ends in 24 (开票成功签章失败, 发票详情查询 doc): it
    exists, so it is recorded at once with its number and date, flagged, and never re-issued."""
    sb = harness.start_sandbox(tmp_path / "sb24", extra=["--fault-sign-failed", "1"])
    try:
        start_daemon(shop_dsn, sb, result_poll_seconds=0.1)
        orders = demo.ship_orders(shop_dsn, 3)
        assert wait_done(shop_dsn, 3) == (3, 0)
        at_platform = sb.invoices()
        assert sorted(i["status"] for i in at_platform) == ["24"] * 3
        with psycopg.connect(shop_dsn) as conn:
            rows = conn.execute(
                "SELECT invoice_number, seal_failed FROM cdc_invoice.invoice ORDER BY id"
            ).fetchall()
            alerts = conn.execute(
                "SELECT count(*) FROM cdc_invoice.event WHERE event = 'invoice.seal_failed'"
            ).fetchone()
        assert sorted(r[0] for r in rows) == sorted(i["number"] for i in at_platform)
        assert all(r[1] is True for r in rows) and alerts == (3,)
        # The runtime knob turns it off again: the next invoice is a plain 2.
        sb.configure(fault_sign_failed=0.0)
        more = demo.ship_orders(shop_dsn, 1)
        assert wait_done(shop_dsn, 4) == (4, 0)
        assert sorted(i["status"] for i in sb.invoices()) == ["2", "24", "24", "24"]
        assert demo.verify_invoices(shop_dsn, orders + more, sb) == []
    finally:
        sb.proc.stop()
