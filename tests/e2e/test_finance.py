"""What finance needs on a real invoice, through the real daemon and sandbox (issue 15).

Each rule is quoted from its source: Nuonuo requestBillingNew (PowerLms 诺诺网接口/数电发票/) and the
bureau's 乐企 基础版 capability document V4.000 (qinqiang2000/agent-harness …/reference/乐企/).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from cdc_invoice import harness

StartDaemon = Callable[..., harness.Proc]
D = Decimal


@pytest.fixture
def running(shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon) -> str:
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        # a purchase-order number on the order, shown to the view as its remark column
        conn.execute("ALTER TABLE shop.orders ADD COLUMN po_number text")
        conn.execute(
            "CREATE OR REPLACE VIEW invoicing.shop_document AS "
            "SELECT o.order_id AS order_ref, o.customer_id AS customer_ref, l.line_no, "
            "l.sku AS item_ref, p.name AS item_name, p.spec, p.unit, l.quantity, l.unit_price, "
            "true AS price_includes_tax, l.discount, o.po_number AS remark "
            "FROM shop.orders o JOIN shop.order_lines l ON l.order_id = o.order_id "
            "JOIN shop.products p ON p.sku = l.sku"
        )
    start_daemon(shop_dsn, sandbox, result_poll_seconds=0.1)
    return shop_dsn


def place(dsn: str, customer: str, lines: list[tuple[str, str, str]], po: str | None = None) -> str:
    """Ship an order (sku, quantity, price); its order_ref."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO shop.orders (customer_id, po_number) VALUES (%s, %s) RETURNING order_id",
            (customer, po),
        ).fetchone()
        assert row is not None
        for n, (sku, qty, price) in enumerate(lines, start=1):
            conn.execute(
                "INSERT INTO shop.order_lines VALUES (%s, %s, %s, %s, %s, 0)",
                (row[0], n, sku, qty, price),
            )
        conn.execute("UPDATE shop.orders SET status = 'shipped' WHERE order_id = %s", (row[0],))
    return str(row[0])


def settled(dsn: str, order_ref: str, kind: str = "issue", n: int = 1) -> list[dict[str, Any]]:
    """The order's first ``n`` requests of ``kind`` once finished (done/failed)."""
    deadline = time.monotonic() + 60
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
                rows = cur.execute(
                    "SELECT id, state, error_code, last_error, hint FROM cdc_invoice.request "
                    "WHERE order_ref = %s AND kind = %s AND state IN ('done', 'failed') "
                    "ORDER BY id",
                    (order_ref, kind),
                ).fetchall()
            if len(rows) >= n or time.monotonic() > deadline:
                assert len(rows) >= n, f"order {order_ref}: {rows}"
                return rows
            time.sleep(0.1)


def register(dsn: str, order_ref: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT invoice_number, kind, total_incl_tax, remark FROM cdc_invoice.report_register "
            "WHERE order_ref = %s ORDER BY issued_at, invoice_number",
            (order_ref,),
        ).fetchall()


def at_platform(sandbox: harness.Sandbox, number: str) -> dict[str, Any]:
    [found] = sandbox.invoices(number=number)
    return found


def test_remark_bank_accounts_payee_and_checker_reach_the_invoice(
    running: str, sandbox: harness.Sandbox
) -> None:
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute(
            "UPDATE cdc_invoice.seller SET remark_template = '订单 {order_ref}', "
            "show_bank_account = 'both', payee = '李四', checker = '王五', "
            "bank_account = '工商银行西湖支行 1202000000000000001'"
        )
    with_po = place(running, "C001", [("P-MOUSE", "1", "79.90")], po="采购订单 PO-2025-0188")
    without = place(running, "C001", [("P-MOUSE", "2", "79.90")])
    assert settled(running, with_po)[0]["state"] == "done"
    assert settled(running, without)[0]["state"] == "done"
    [(number, _, _, remark)] = register(running, with_po)
    assert remark == "采购订单 PO-2025-0188"  # the view's remark column wins
    header = at_platform(sandbox, number)["header"]
    assert header["remark"] == "采购订单 PO-2025-0188"
    # "传3：购销方开户行及账号都显示"
    assert (header["showBankAccountType"], header["payee"], header["checker"], header["clerk"]) == (
        "3", "李四", "王五", "张三",
    )  # fmt: skip
    [(number2, _, _, remark2)] = register(running, without)
    assert remark2 == f"订单 {without}"  # the seller's template
    assert at_platform(sandbox, number2)["header"]["remark"] == f"订单 {without}"


def test_a_seller_without_clerk_fails_with_the_fix_then_issues_once_set(running: str) -> None:
    # "clerk … 开票员（数电票时需要传入和开票登录账号对应的开票员姓名）": no guessed default
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute("UPDATE cdc_invoice.seller SET clerk = NULL")
    ref = place(running, "C001", [("P-MOUSE", "1", "79.90")])
    [failed] = settled(running, ref)
    assert failed["state"] == "failed" and "no clerk (开票人)" in failed["last_error"]
    assert "UPDATE cdc_invoice.seller SET clerk = '<开票员姓名>'" in failed["hint"]
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute("UPDATE cdc_invoice.seller SET clerk = '张三'")
        conn.execute("SELECT cdc_invoice.retry(%s)", (failed["id"],))
    deadline = time.monotonic() + 30
    while not register(running, ref) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(register(running, ref)) == 1


def test_special_business_and_bad_credit_code_on_a_special_invoice_fail_before_the_platform(
    running: str, sandbox: harness.Sandbox
) -> None:
    with psycopg.connect(running, autocommit=True) as conn:
        # 建筑服务 3050300000000000000 (the 建筑服务 document's example): a special business
        conn.execute(
            "UPDATE cdc_invoice.item_tax SET tax_code = '3050300000000000000' "
            "WHERE item_ref = 'S-INSTALL'"
        )
        # C002's 91310115MA1K0002AB has check character B; GB 32100-2015 gives 4
        conn.execute("UPDATE cdc_invoice.buyer SET invoice_type = 'bs' WHERE customer_ref = 'C002'")
    before = len(sandbox.invoices())
    build = place(running, "C001", [("S-INSTALL", "1", "150.00")])
    special = place(running, "C002", [("P-MOUSE", "1", "79.90")])
    [b] = settled(running, build)
    assert b["state"] == "failed" and "is a 建筑服务 code" in b["last_error"]
    assert "特定要素 必须为空" in b["last_error"]
    [s] = settled(running, special)
    assert s["state"] == "failed" and "not a valid 统一社会信用代码" in s["last_error"]
    assert "GB 32100-2015 gives '4'" in s["last_error"]
    assert len(sandbox.invoices()) == before  # nothing reached the platform


def test_mixed_goods_and_services_reverse_a_goods_line_for_service_termination(
    running: str, sandbox: harness.Sandbox
) -> None:
    """兼营销售则不对红字原因进行控制: the sandbox would refuse 服务中止 on a goods code otherwise."""
    ref = place(running, "C001", [("P-MOUSE", "2", "79.90"), ("S-INSTALL", "1", "150.00")])
    settled(running, ref)
    [(blue, _, _, _)] = register(running, ref)
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute(
            "SELECT cdc_invoice.request_reversal(%s, 'service_termination', "
            """'[{"line_no": 1, "quantity": 1}]')""",
            (blue,),
        )
    [done] = settled(running, ref, "reverse")
    assert done["state"] == "done", done
    red = [r for r in register(running, ref) if r[1] == "red"]
    assert [r[2] for r in red] == [D("-79.90")]
    assert at_platform(sandbox, red[0][0])["lines"][0]["quantity"] == "-1"


def test_sales_return_after_an_allowance_keeps_the_blue_unit_price(
    running: str, sandbox: harness.Sandbox
) -> None:
    """“红冲原因”为“销货退回”时，只允许修改数量，不允许修改单价 (乐企 V4.000).

    Blue: 5 × 125.50 = 627.50 incl. 13 %. Allowance 100.00 leaves 527.50. Returning 4 at 125.50 =
    502.00 fits and keeps the price (the sandbox checks it against the blue 111.06195 excl.);
    returning 5 (627.50) does not: refused at the call with 527.50 − 502.00 = 25.50 to settle by
    amount. Before the fix the daemon repriced to 527.50 / 5 = 105.50 and the sandbox refused it.
    """
    ref = place(running, "C001", [("P-PAPER", "5", "125.50")])
    settled(running, ref)
    [(blue, _, _, _)] = register(running, ref)
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute(
            "SELECT cdc_invoice.request_reversal(%s, 'sales_allowance', "
            """'[{"line_no": 1, "amount": 100.00}]')""",
            (blue,),
        )
    assert settled(running, ref, "reverse")[0]["state"] == "done"
    with psycopg.connect(running, autocommit=True) as conn, pytest.raises(psycopg.Error) as err:
        conn.execute(
            "SELECT cdc_invoice.request_reversal(%s, 'sales_return', "
            """'[{"line_no": 1, "quantity": 5}]')""",
            (blue,),
        )
    assert err.value.sqlstate == "CI006"
    assert err.value.diag.message_hint == (
        "return at most 4 with sales_return, and reverse the remaining 25.50 with "
        'sales_allowance: [{"line_no": 1, "amount": 25.50}]'
    )
    with psycopg.connect(running, autocommit=True) as conn:
        conn.execute(
            "SELECT cdc_invoice.request_reversal(%s, 'sales_return', "
            """'[{"line_no": 1, "quantity": 4}]')""",
            (blue,),
        )
    second = settled(running, ref, "reverse", 2)[1]
    assert second["state"] == "done", second
    reds = [r for r in register(running, ref) if r[1] == "red"]
    assert sorted(r[2] for r in reds) == [D("-502.00"), D("-100.00")]
    ret = next(r for r in reds if r[2] == D("-502.00"))
    [platform_line] = at_platform(sandbox, ret[0])["lines"]
    # 125.50 / 1.13 = 111.06194690…: the blue's tax-exclusive unit price, unchanged
    assert abs(D(platform_line["price"]) - D("111.06194690")) <= D("0.01")
    assert platform_line["quantity"] == "-4"
