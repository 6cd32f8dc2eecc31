"""Invoice lifecycle through real processes: reversal (full, partial, limits), void, delivery."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import httpx
import psycopg
import pytest

from cdc_invoice import harness

StartDaemon = Callable[..., harness.Proc]
CHINA = timezone(timedelta(hours=8))


def wait_requests(
    dsn: str, kind: str, n: int, timeout: float = 60.0
) -> list[tuple[str, str | None]]:
    """Wait until ``n`` requests of ``kind`` are finished; return their (state, last_error)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT state, last_error FROM cdc_invoice.request WHERE kind = %s "
                "AND state IN ('done', 'failed', 'cancelled') ORDER BY id",
                (kind,),
            ).fetchall()
            if len(rows) >= n or time.monotonic() > deadline:
                return [(str(r[0]), r[1]) for r in rows]
            time.sleep(0.2)


def ship(dsn: str, customer: str, lines: list[tuple[str, str, str]]) -> str:
    """Ship one order with lines (sku, quantity, unit price); wait for its invoice number."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO shop.orders (customer_id) VALUES (%s) RETURNING order_id", (customer,)
        ).fetchone()
        assert row is not None
        oid = row[0]
        for n, (sku, qty, price) in enumerate(lines, start=1):
            conn.execute(
                "INSERT INTO shop.order_lines VALUES (%s, %s, %s, %s, %s, 0)",
                (oid, n, sku, qty, price),
            )
        conn.execute("UPDATE shop.orders SET status = 'shipped' WHERE order_id = %s", (oid,))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            inv = conn.execute(
                "SELECT invoice_number FROM cdc_invoice.invoice WHERE order_ref = %s", (str(oid),)
            ).fetchone()
            if inv:
                return str(inv[0])
            time.sleep(0.1)
    raise AssertionError(f"order {oid} was not invoiced")


def sql_error(dsn: str, query: str, *args: object) -> psycopg.Error:
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error) as exc:
        conn.execute(query, args)
    return exc.value


def invoice(dsn: str, number: str) -> dict[str, object]:
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute(
            "SELECT * FROM cdc_invoice.invoice WHERE invoice_number = %s", (number,)
        ).fetchone()
        assert row is not None
        return row


def reds_of(dsn: str, number: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT r.invoice_number, r.total_incl_tax, r.kind, r.status FROM cdc_invoice.invoice r "
            "JOIN cdc_invoice.invoice b ON b.id = r.original_invoice_id WHERE b.invoice_number = %s "
            "ORDER BY r.id",
            (number,),
        ).fetchall()


@pytest.fixture
def running(shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon) -> str:
    start_daemon(shop_dsn, sandbox, result_poll_seconds=0.1)
    return shop_dsn


def test_full_reversal(running: str, sandbox: harness.Sandbox) -> None:
    number = ship(running, "C001", [("P-LAPTOP", "2", "3099.00"), ("P-MOUSE", "1", "79.90")])
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute("SELECT cdc_invoice.request_reversal(%s, 'sales_return')", (number,))
    assert wait_requests(running, "reverse", 1) == [("done", None)]
    [(red_number, red_total, kind, _)] = reds_of(running, number)
    assert kind == "red" and red_total == Decimal("-6277.90")
    assert invoice(running, number)["status"] == "reversed"
    at_platform = {i["number"]: i for i in sandbox.invoices() if i.get("number")}
    assert red_number in at_platform and at_platform[red_number]["kind"] == "red"
    err = sql_error(running, "SELECT cdc_invoice.request_reversal(%s, 'sales_return')", number)
    assert "already fully reversed" in str(err)


def test_two_partial_reversals_then_one_too_many(running: str) -> None:
    number = ship(running, "C002", [("P-PAPER", "3", "125.50"), ("P-TEA", "2", "268.00")])
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute(
            """SELECT cdc_invoice.request_reversal(%s, 'sales_return', '[{"line_no": 1, "quantity": 1}]')""",
            (number,),
        )
    assert wait_requests(running, "reverse", 1) == [("done", None)]
    assert invoice(running, number)["status"] == "partially_reversed"
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute(
            """SELECT cdc_invoice.request_reversal(%s, 'sales_return', '[{"line_no": 1, "quantity": 1}]')""",
            (number,),
        )
    assert wait_requests(running, "reverse", 2) == [("done", None), ("done", None)]
    assert [r[1] for r in reds_of(running, number)] == [Decimal("-125.50"), Decimal("-125.50")]
    err = sql_error(
        running,
        """SELECT cdc_invoice.request_reversal(%s, 'sales_return', '[{"line_no": 1, "quantity": 2}]')""",
        number,
    )
    assert "would exceed the invoiced quantity 3" in str(err)
    assert err.diag.message_hint == "at most 1.00000000 can still be reversed"
    # An allowance by amount on the other line still fits.
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute(
            """SELECT cdc_invoice.request_reversal(%s, 'sales_allowance', '[{"line_no": 2, "amount": 36.00}]')""",
            (number,),
        )
    assert [s for s, _ in wait_requests(running, "reverse", 3)] == ["done"] * 3
    assert reds_of(running, number)[-1][1] == Decimal("-36.00")


def test_void_electronic_is_refused_with_the_fix(running: str) -> None:
    number = ship(running, "C001", [("P-MOUSE", "1", "79.90")])
    err = sql_error(running, "SELECT cdc_invoice.request_void(%s, 'invoicing_error')", number)
    assert "cannot be voided" in str(err)
    assert err.diag.message_hint and "request_reversal" in err.diag.message_hint


def test_void_paper_invoice(running: str) -> None:
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute("UPDATE cdc_invoice.buyer SET invoice_type = 'ec' WHERE customer_ref = 'C004'")
    number = ship(running, "C004", [("P-TEA", "1", "268.00")])
    assert invoice(running, number)["invoice_line"] == "ec"
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute("SELECT cdc_invoice.request_void(%s, 'invoicing_error')", (number,))
    assert wait_requests(running, "void", 1) == [("done", None)]
    assert invoice(running, number)["status"] == "voided"


def test_redelivery(running: str) -> None:
    number = ship(running, "C003", [("P-TEA", "1", "268.00")])
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute("SELECT cdc_invoice.request_delivery(%s, 'new@example.com', NULL)", (number,))
    assert wait_requests(running, "deliver", 1) == [("done", None)]
    assert invoice(running, number)["delivery_status"] == "sent"
    err = sql_error(running, "SELECT cdc_invoice.request_delivery(%s, NULL, NULL)", number)
    assert "give an email or a phone" in str(err)


def test_returned_order_is_reversed_by_the_trigger(running: str) -> None:
    number = ship(running, "C002", [("P-LAPTOP", "1", "3099.00")])
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute(
            "UPDATE shop.orders SET status = 'returned' WHERE order_id = "
            "(SELECT order_ref::bigint FROM cdc_invoice.invoice WHERE invoice_number = %s)",
            (number,),
        )
    deadline = time.monotonic() + 30
    while invoice(running, number)["status"] != "reversed" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert invoice(running, number)["status"] == "reversed"
    assert [r[1] for r in reds_of(running, number)] == [Decimal("-3099.00")]


def awaiting_buyer(dsn: str, number: str, timeout: float = 30.0) -> str:
    """Wait until the reversal of ``number`` waits for the buyer; return the slip's bill_id."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT bill_id, slip_status FROM cdc_invoice.pending_red_slips "
                "WHERE invoice_number = %s",
                (number,),
            ).fetchone()
            if row and row[1] == "awaiting_buyer":
                return str(row[0])
            time.sleep(0.2)
    raise AssertionError("the slip never waited for the buyer")


def nudge(dsn: str) -> None:
    """What time would do: make waiting requests due now (slips are polled every 30 s)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE cdc_invoice.request SET run_after = now() WHERE state = 'submitted'")


def test_slip_waits_for_the_buyer_then_the_red_invoice_follows(
    running: str, sandbox: harness.Sandbox
) -> None:
    sandbox.configure(red_requires_confirmation=True)  # the buyer has used the blue invoice
    number = ship(running, "C001", [("P-LAPTOP", "1", "3099.00")])
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute("SELECT cdc_invoice.request_reversal(%s, 'sales_return')", (number,))
    bill_id = awaiting_buyer(running, number)
    httpx.post(
        f"{sandbox.url}/_sandbox/slips/{bill_id}/confirm", json={"agree": True}, timeout=10
    ).raise_for_status()
    nudge(running)
    assert wait_requests(running, "reverse", 1) == [("done", None)]
    assert invoice(running, number)["status"] == "reversed"


def test_a_waiting_slip_expires_72_hours_after_its_own_time_not_our_request(
    running: str, sandbox: harness.Sandbox
) -> None:
    # 红字确认单查询 doc: 07 作废（超72小时未确认） — counted from the slip (billTime). The sandbox
    # clock runs an hour ahead, so the slip's time and our request's time differ by an hour.
    sandbox.configure(red_requires_confirmation=True)
    number = ship(running, "C001", [("P-MOUSE", "1", "79.90")])
    httpx.post(
        f"{sandbox.url}/_sandbox/clock", json={"advance_seconds": 3600}, timeout=10
    ).raise_for_status()
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute("SELECT cdc_invoice.request_reversal(%s, 'sales_return')", (number,))
    bill_id = awaiting_buyer(running, number)
    slips = httpx.get(f"{sandbox.url}/_sandbox/slips", timeout=10).json()
    bill_time = next(s["billTime"] for s in slips if s["billId"] == bill_id)
    slip_time = datetime.strptime(bill_time, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA)
    with psycopg.connect(running) as conn:
        row = conn.execute(
            "SELECT expires_at, requested_at FROM cdc_invoice.pending_red_slips WHERE bill_id = %s",
            (bill_id,),
        ).fetchone()
    assert row is not None
    assert row[0] == slip_time + timedelta(hours=72)
    assert row[0] - row[1] > timedelta(hours=72, minutes=59)


def test_unconfirmed_slip_expires_after_72_hours(running: str, sandbox: harness.Sandbox) -> None:
    sandbox.configure(red_requires_confirmation=True)
    number = ship(running, "C001", [("P-MOUSE", "2", "79.90")])
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute("SELECT cdc_invoice.request_reversal(%s, 'sales_return')", (number,))
    awaiting_buyer(running, number)
    httpx.post(
        f"{sandbox.url}/_sandbox/clock", json={"advance_seconds": 73 * 3600}, timeout=10
    ).raise_for_status()
    nudge(running)
    [(state, error)] = wait_requests(running, "reverse", 1)
    assert state == "failed" and error is not None and "(07)" in error, error
    assert invoice(running, number)["status"] == "issued"
    with psycopg.connect(running) as conn:
        hint = conn.execute(
            "SELECT hint FROM cdc_invoice.request WHERE kind = 'reverse'"
        ).fetchone()
    assert hint and "72 hours" in str(hint[0])


def test_paper_invoice_reversal_goes_through_fast_invoice_red(
    running: str, sandbox: harness.Sandbox
) -> None:
    """A paper 数电 invoice (ec) is not red-issued by the platform itself: the daemon asks for it."""
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute("UPDATE cdc_invoice.buyer SET invoice_type = 'ec' WHERE customer_ref = 'C004'")
    number = ship(running, "C004", [("P-TEA", "2", "268.00")])
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute("SELECT cdc_invoice.request_reversal(%s, 'sales_return')", (number,))
    assert wait_requests(running, "reverse", 1) == [("done", None)]
    [(_red_number, red_total, _, _)] = reds_of(running, number)
    assert red_total == Decimal("-536.00") and invoice(running, number)["status"] == "reversed"
    stats = httpx.get(f"{sandbox.url}/_sandbox/stats", timeout=10).json()
    assert "nuonuo.OpeMplatform.fastInvoiceRed" in str(stats)


def test_delivery_to_a_bad_phone_fails_with_the_fix_instead_of_looping(running: str) -> None:
    """Every request ends: 'abc' is no mobile number; the request fails once, saying so.
    request_delivery() refuses it now; a request queued before that check (or written by
    hand) still reaches the daemon, which must fail it instead of crashing on every lease."""
    number = ship(running, "C001", [("P-MOUSE", "1", "79.90")])
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO cdc_invoice.request (source, order_ref, kind, seq, invoice_id, params) "
            "SELECT source, order_ref, 'deliver', 2, id, "
            """'{"email": null, "phone": "abc"}'::jsonb """
            "FROM cdc_invoice.invoice WHERE invoice_number = %s",
            (number,),
        )
        conn.execute("NOTIFY cdc_invoice")
    [(state, error)] = wait_requests(running, "deliver", 1, timeout=20)
    assert state == "failed" and error is not None and "not a mainland mobile" in error
    with psycopg.connect(running) as conn:
        row = conn.execute("SELECT hint FROM cdc_invoice.request WHERE kind = 'deliver'").fetchone()
    assert row is not None and "request_delivery" in str(row[0])


def test_refresh_rereads_the_invoice(running: str) -> None:
    number = ship(running, "C001", [("P-MOUSE", "1", "79.90")])
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute(
            "UPDATE cdc_invoice.invoice SET pdf_url = NULL WHERE invoice_number = %s", (number,)
        )
        conn.execute("SELECT cdc_invoice.request_refresh(%s)", (number,))
    assert wait_requests(running, "refresh", 1) == [("done", None)]
    assert str(invoice(running, number)["pdf_url"]).startswith("http")
