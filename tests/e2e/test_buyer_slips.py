"""Buyer-initiated 红字确认单 (issue 15 item 9) through real processes.

The buyer, having booked the invoice, starts the slip (the sandbox plays the buyer: status 03
购方录入待销方确认, 红字确认单查询 doc); the daemon copies it into pending_buyer_red_slips; finance
answers with confirm_red_slip() as the operator role; the daemon calls confirm (红字确认单确认
doc); on agreement the platform issues the red invoice, recorded against its blue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row
from test_callback import free_port
from test_lifecycle import invoice, reds_of, ship, sql_error, wait_requests

from cdc_invoice import harness

StartDaemon = Callable[..., harness.Proc]


@pytest.fixture
def running(shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon) -> str:
    start_daemon(shop_dsn, sandbox, result_poll_seconds=0.1, buyer_slip_poll_seconds=0.3)
    return shop_dsn


def buyer_applies(sb: harness.Sandbox, number: str, **body: Any) -> dict[str, Any]:
    answer = httpx.post(
        f"{sb.url}/_sandbox/slips/buyer",
        json={"blueInvoiceNumber": number, "redReason": "1", **body},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    slip: dict[str, Any] = answer.json()
    assert (slip["billStatus"], slip["applySource"]) == ("03", "1")
    return slip


def pending(dsn: str, bill_id: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        while time.monotonic() < deadline:
            row = cur.execute(
                "SELECT * FROM cdc_invoice.pending_buyer_red_slips WHERE bill_id = %s", (bill_id,)
            ).fetchone()
            if row is not None:
                return row
            time.sleep(0.1)
    raise AssertionError(f"slip {bill_id} never appeared in pending_buyer_red_slips")


def as_operator(dsn: str, query: str, *args: object) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET ROLE cdc_invoice_operator")
        row = conn.execute(query, args).fetchone()
        return None if row is None else row[0]


def sandbox_slip(sb: harness.Sandbox, bill_id: str) -> dict[str, Any]:
    slips = httpx.get(f"{sb.url}/_sandbox/slips", timeout=10).json()
    return next(s for s in slips if s["billId"] == bill_id)


def test_an_agreed_buyer_slip_records_the_red_invoice_against_its_blue(
    running: str, sandbox: harness.Sandbox
) -> None:
    number = ship(running, "C001", [("P-LAPTOP", "2", "3099.00"), ("P-MOUSE", "1", "79.90")])
    slip = buyer_applies(sandbox, number)
    row = pending(running, slip["billId"])
    # the view: the blue invoice and the slip's amounts (negative), 72 h from the slip's time
    assert row["invoice_number"] == number
    assert row["blue_total_incl_tax"] == Decimal("6277.90")
    assert row["total_incl_tax"] == Decimal("-6277.90")
    assert row["total_excl_tax"] == Decimal(slip["taxExcludedAmount"])
    assert (row["expires_at"] - row["slip_time"]).total_seconds() == 72 * 3600
    # the operator role (finance) answers
    request_id = as_operator(
        running, "SELECT cdc_invoice.confirm_red_slip(%s, true)", slip["billId"]
    )
    assert isinstance(request_id, int)
    assert wait_requests(running, "confirm_slip", 1) == [("done", None)]
    assert sandbox_slip(sandbox, slip["billId"])["billStatus"] == "04"
    [(red_number, total, kind, _)] = reds_of(running, number)
    assert (total, kind) == (Decimal("-6277.90"), "red")
    assert invoice(running, number)["status"] == "reversed"
    platform_red = sandbox.invoices(number=str(red_number))
    assert platform_red and platform_red[0]["originalNumber"] == number
    # answered: gone from the view; a second answer is refused with the reason and a fix
    with psycopg.connect(running) as conn:
        gone = conn.execute(
            "SELECT count(*) FROM cdc_invoice.pending_buyer_red_slips WHERE bill_id = %s",
            (slip["billId"],),
        ).fetchone()
    assert gone == (0,)
    err = sql_error(running, "SELECT cdc_invoice.confirm_red_slip(%s, false)", slip["billId"])
    assert err.sqlstate == "CI006" and "already answered" in str(err)
    assert err.diag.message_hint is not None


def test_a_refused_buyer_slip_issues_nothing(running: str, sandbox: harness.Sandbox) -> None:
    number = ship(running, "C002", [("P-MOUSE", "3", "79.90")])
    slip = buyer_applies(sandbox, number)
    pending(running, slip["billId"])
    as_operator(running, "SELECT cdc_invoice.confirm_red_slip(%s, false)", slip["billId"])
    assert wait_requests(running, "confirm_slip", 1) == [("done", None)]
    assert sandbox_slip(sandbox, slip["billId"])["billStatus"] == "06"
    assert reds_of(running, number) == []
    assert invoice(running, number)["status"] == "issued"


def test_bad_answers_are_refused_with_a_hint(running: str, sandbox: harness.Sandbox) -> None:
    number = ship(running, "C001", [("P-MOUSE", "1", "79.90")])
    slip = buyer_applies(sandbox, number)
    pending(running, slip["billId"])
    unknown = sql_error(running, "SELECT cdc_invoice.confirm_red_slip('NO-SUCH-SLIP', true)")
    assert unknown.sqlstate == "CI005" and "pending_buyer_red_slips" in str(
        unknown.diag.message_hint
    )
    null = sql_error(running, "SELECT cdc_invoice.confirm_red_slip(%s, NULL)", slip["billId"])
    assert null.sqlstate == "CI001"
    # 72 h count from the slip's own time (billTime), not from when we saw it
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute(
            "UPDATE cdc_invoice.buyer_red_slip SET slip_time = now() - interval '72 hours 1 second'"
            " WHERE bill_id = %s",
            (slip["billId"],),
        )
        listed = conn.execute(
            "SELECT count(*) FROM cdc_invoice.pending_buyer_red_slips WHERE bill_id = %s",
            (slip["billId"],),
        ).fetchone()
    assert listed == (0,)
    expired = sql_error(running, "SELECT cdc_invoice.confirm_red_slip(%s, true)", slip["billId"])
    assert expired.sqlstate == "CI006" and "expired" in str(expired)
    assert invoice(running, number)["status"] == "issued"


def test_a_partial_buyer_slip_keeps_the_blue_unit_price(
    running: str, sandbox: harness.Sandbox
) -> None:
    # The buyer sends back one of two laptops (销货退回: 只允许修改数量，不允许修改单价).
    number = ship(running, "C001", [("P-LAPTOP", "2", "3099.00"), ("P-MOUSE", "1", "79.90")])
    [blue] = sandbox.invoices(number=number)
    laptop = blue["lines"][0]
    slip = buyer_applies(
        sandbox,
        number,
        detail=[
            {
                "blueDetailIndex": "1",
                "goodsName": laptop["name"],
                "goodsCode": laptop["goodsCode"],
                "taxRate": laptop["taxRate"],
                "num": "-1",
                "taxExcludedPrice": "2742.47787611",
                "taxExcludedAmount": "-2742.48",
                "taxAmount": "-356.52",
            }
        ],
    )
    row = pending(running, slip["billId"])
    assert row["total_incl_tax"] == Decimal("-3099.00")
    as_operator(running, "SELECT cdc_invoice.confirm_red_slip(%s, true)", slip["billId"])
    assert wait_requests(running, "confirm_slip", 1) == [("done", None)]
    assert invoice(running, number)["status"] == "partially_reversed"
    with psycopg.connect(running) as conn:
        lines = conn.execute(
            "SELECT l.line_no, l.quantity, l.unit_price, l.amount_incl_tax "
            "FROM cdc_invoice.invoice_line l JOIN cdc_invoice.invoice r ON r.id = l.invoice_id "
            "WHERE r.kind = 'red'"
        ).fetchall()
    assert lines == [(1, Decimal("-1"), Decimal("3099.00"), Decimal("-3099.00"))]
    # what is left can still be reversed by finance: the cumulative rule sees the red line
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute(
            "SELECT cdc_invoice.request_reversal(%s, 'sales_return', "
            """'[{"line_no": 1, "quantity": 1}]')""",
            (number,),
        )
    assert wait_requests(running, "reverse", 1) == [("done", None)]


def test_a_red_letter_callback_brings_the_buyer_slip_in_at_once(
    shop_dsn: str, tmp_path: Path, start_daemon: StartDaemon
) -> None:
    # Listing runs every hour here: the slip arrives this soon only because the sandbox's
    # redConfirmCallback (JSON, 回传开票结果 V1.1.1 §五) made the daemon list slips now.
    port = free_port()
    sb = harness.start_sandbox(
        tmp_path / "sandbox",
        issue_delay_ms=200,
        extra=["--callback-url", f"http://127.0.0.1:{port}/nuonuo/callback"],
    )
    try:
        start_daemon(
            shop_dsn,
            sb,
            result_poll_seconds=0.1,
            buyer_slip_poll_seconds=3600.0,
            metrics_listen=f"127.0.0.1:{port}",
            callback=True,
        )
        number = ship(shop_dsn, "C001", [("P-MOUSE", "1", "79.90")])
        slip = buyer_applies(sb, number)
        assert pending(shop_dsn, slip["billId"], timeout=10)["invoice_number"] == number
    finally:
        sb.proc.stop()
