"""request_reversal() refuses at the call what the bureau's red-letter rules refuse later.

乐企 基础版 V4.000, 红字确认单 业务校验: "“红冲原因”为“销货退回”时，只允许修改数量，不允许修改单价";
a red line needs an amount (issue 15, items 7 and 10).
"""

from __future__ import annotations

from datetime import datetime

import psycopg
import pytest

BLUE = "25330000000000000004"


def blue_and_allowance(conn: psycopg.Connection[tuple[object, ...]], allowance: bool) -> None:
    """Blue: 5 × 113.00 incl. 13 % = 565.00 (500.00 + 65.00); optionally a recorded 销售折让 of
    100.00 incl. on its line 1 (no quantity), leaving 465.00."""
    conn.execute("INSERT INTO cdc_invoice.seller (seller_id, tax_number, name, clerk) "
                 "VALUES ('main', '339902999999789113', 's', '张三')")  # fmt: skip
    req = conn.execute(
        "INSERT INTO cdc_invoice.request (source, order_ref, kind, state) "
        "VALUES ('shop', '1004', 'issue', 'done') RETURNING id"
    ).fetchone()
    assert req is not None
    blue = conn.execute(
        "INSERT INTO cdc_invoice.invoice (request_id, source, order_ref, seller_id, invoice_number, "
        "kind, platform_serial, platform_order_no, issued_at, buyer_name, total_excl_tax, "
        "total_tax, total_incl_tax, status) VALUES (%s, 'shop', '1004', 'main', %s, 'blue', 'S1', "
        "'O1', %s, 'b', 500.00, 65.00, 565.00, %s) RETURNING id",
        (req[0], BLUE, datetime.fromisoformat("2025-02-05 10:00+08"),
         "partially_reversed" if allowance else "issued"),
    ).fetchone()  # fmt: skip
    assert blue is not None
    conn.execute(
        "INSERT INTO cdc_invoice.invoice_line (invoice_id, line_no, item_name, tax_code, quantity, "
        "unit_price, amount_excl_tax, tax_rate, tax, amount_incl_tax) VALUES "
        "(%s, 1, '复印纸', '1060201010000000000', 5, 113, 500.00, 0.13, 65.00, 565.00)",
        (blue[0],),
    )
    if not allowance:
        return
    red_req = conn.execute(
        "INSERT INTO cdc_invoice.request (source, order_ref, kind, seq, state, invoice_id) "
        "VALUES ('shop', '1004', 'reverse', 2, 'done', %s) RETURNING id",
        (blue[0],),
    ).fetchone()
    assert red_req is not None
    red = conn.execute(
        "INSERT INTO cdc_invoice.invoice (request_id, source, order_ref, seller_id, invoice_number, "
        "kind, original_invoice_id, platform_serial, platform_order_no, issued_at, buyer_name, "
        "total_excl_tax, total_tax, total_incl_tax) VALUES (%s, 'shop', '1004', 'main', "
        "'25330000000000000009', 'red', %s, 'S2', 'O2', now(), 'b', -88.50, -11.50, -100.00) "
        "RETURNING id",
        (red_req[0], blue[0]),
    ).fetchone()
    assert red is not None
    conn.execute(
        "INSERT INTO cdc_invoice.invoice_line (invoice_id, line_no, item_name, tax_code, quantity, "
        "unit_price, amount_excl_tax, tax_rate, tax, amount_incl_tax) VALUES "
        "(%s, 1, '复印纸', '1060201010000000000', NULL, NULL, -88.50, 0.13, -11.50, -100.00)",
        (red[0],),
    )


def refused(dsn: str, reason: str, lines: str | None) -> psycopg.Error:
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT cdc_invoice.request_reversal(%s, %s, %s)", (BLUE, reason, lines))
    return err.value


def test_a_return_that_rounds_to_nothing_is_refused_at_the_call(installed_dsn: str) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        blue_and_allowance(conn, allowance=False)
    # 0.0000001 × 113.00 = 0.0000113 → 0.00
    err = refused(installed_dsn, "sales_return", '[{"line_no": 1, "quantity": 0.0000001}]')
    assert err.sqlstate == "CI001"
    assert "0.0000001 at the unit price 113.00000000 comes to 0.00" in str(err)
    assert err.diag.message_hint == "reverse a larger quantity"


def test_sales_return_after_an_allowance_is_refused_when_it_would_change_the_price(
    installed_dsn: str,
) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        blue_and_allowance(conn, allowance=True)
    # 5 × 113.00 = 565.00 > 465.00 left: at most 4 (452.00), and 465.00 − 452.00 = 13.00 by amount
    err = refused(installed_dsn, "sales_return", '[{"line_no": 1, "quantity": 5}]')
    assert err.sqlstate == "CI006"
    assert "returning 5 at the blue unit price 113.00000000 comes to 565.00" in str(err)
    assert "more than the 465.00" in str(err)
    assert err.diag.message_hint == (
        "return at most 4 with sales_return, and reverse the remaining 13.00 with "
        'sales_allowance: [{"line_no": 1, "amount": 13.00}]'
    )
    err = refused(installed_dsn, "sales_return", None)
    assert err.sqlstate == "CI006" and "a full sales_return would change the unit price" in str(err)
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        # what the hint says is accepted
        conn.execute(
            "SELECT cdc_invoice.request_reversal(%s, 'sales_return', %s)",
            (BLUE, '[{"line_no": 1, "quantity": 4}]'),
        )
        params = conn.execute(
            "SELECT params -> 'lines' FROM cdc_invoice.request WHERE kind = 'reverse' "
            "AND state = 'pending'"
        ).fetchone()
    assert params == ([{"line_no": 1, "quantity": 4}],)
