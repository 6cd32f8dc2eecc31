"""Platform callbacks are hints: the named request is polled at once; the content is not trusted."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg

from cdc_invoice import demo, harness

StartDaemon = Callable[..., harness.Proc]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_callback_makes_the_daemon_look_now(
    shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon
) -> None:
    port = free_port()
    # Results are polled only every 60 s: without the callback nothing would be recorded soon.
    start_daemon(
        shop_dsn,
        sandbox,
        result_poll_seconds=60.0,
        lease_seconds=90.0,
        metrics_listen=f"127.0.0.1:{port}",
        callback=True,
    )
    [order] = demo.ship_orders(shop_dsn, 1)
    deadline = time.monotonic() + 30
    row = None
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT platform_order_no, platform_serial FROM cdc_invoice.request "
                "WHERE state = 'submitted'"
            ).fetchone()
            if row:
                break
            time.sleep(0.1)
    assert row is not None
    time.sleep(0.5)  # the sandbox's issue delay: the invoice is ready at the platform now
    url = f"http://127.0.0.1:{port}/nuonuo/callback"
    # A forged or garbled callback changes nothing and still gets the documented answer.
    forged = httpx.post(
        url,
        data={"operater": "callback", "orderno": "NOT-OURS-000000000001", "content": "{not json"},
        timeout=10,
    )
    assert forged.json()["status"] == "0000"
    with psycopg.connect(shop_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM cdc_invoice.invoice").fetchone() == (0,)
    # The real one: orderno is our order number of part 1.
    answer = httpx.post(
        url,
        data={
            "operater": "callback",
            "orderno": f"{row[0]}01",
            "content": '{"c_status": "1", "c_fphm": "forged"}',
        },
        timeout=10,
    )
    assert answer.json() == {"status": "0000", "message": "同步成功"}
    deadline = time.monotonic() + 10
    while demo.verify_invoices(shop_dsn, [order], sandbox) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert demo.verify_invoices(shop_dsn, [order], sandbox) == []
    with psycopg.connect(shop_dsn) as conn:
        number = conn.execute("SELECT invoice_number FROM cdc_invoice.invoice").fetchone()
    assert number is not None and number[0] != "forged"  # recorded from the platform's query


def test_the_sandbox_sends_form_and_json_callbacks_and_the_daemon_reads_both(
    shop_dsn: str, tmp_path: Path, start_daemon: StartDaemon
) -> None:
    # 回传开票结果对接文档V1.1.1: §一 callback is FORM, §五 redConfirmCallback is JSON. The sandbox
    # sends both (opt-in --callback-url); results are polled only every 60 s, so the invoice and
    # the reversal are recorded this soon only because each callback was read.
    port = free_port()
    url = f"http://127.0.0.1:{port}/nuonuo/callback"
    sb = harness.start_sandbox(
        tmp_path / "sandbox", issue_delay_ms=200, extra=["--callback-url", url]
    )
    try:
        daemon = start_daemon(
            shop_dsn,
            sb,
            result_poll_seconds=60.0,
            lease_seconds=90.0,
            metrics_listen=f"127.0.0.1:{port}",
            callback=True,
        )
        [order] = demo.ship_orders(shop_dsn, 1)
        deadline = time.monotonic() + 30
        while demo.verify_invoices(shop_dsn, [order], sb) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert demo.verify_invoices(shop_dsn, [order], sb) == []
        with psycopg.connect(shop_dsn, autocommit=True) as conn:
            row = conn.execute("SELECT invoice_number FROM cdc_invoice.invoice").fetchone()
            assert row is not None
            conn.execute("SELECT cdc_invoice.request_reversal(%s, 'sales_return')", (row[0],))
            deadline = time.monotonic() + 30
            state = None
            while time.monotonic() < deadline:
                state = conn.execute(
                    "SELECT state FROM cdc_invoice.request WHERE kind = 'reverse'"
                ).fetchone()
                if state == ("done",):
                    break
                time.sleep(0.1)
        assert state == ("done",)
        sent = httpx.get(f"{sb.url}/_sandbox/callbacks", timeout=10).json()
        kinds = {(c["operater"], c["encoding"], c["answer"]) for c in sent}
        assert ("callback", "form", "0000") in kinds
        assert ("redConfirmCallback", "json", "0000") in kinds
        # the JSON one named our slip: the daemon polled its request (not "0 request(s)")
        assert re.search(r"callback redConfirmCallback: [1-9]", daemon.output()), daemon.output()
    finally:
        sb.proc.stop()
