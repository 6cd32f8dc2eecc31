"""Platform callbacks are hints: the named request is polled at once; the content is not trusted."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

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
