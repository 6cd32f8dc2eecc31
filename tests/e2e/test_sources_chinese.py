"""A Chinese inventory system end to end: Chinese identifiers everywhere, dates kept as text,
prices in the money type, attached, previewed and backfilled with the CLI, invoiced by the
daemon (sandbox and daemon as real processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal

import psycopg

from cdc_invoice import harness

StartDaemon = Callable[..., harness.Proc]
SOURCE = "进销存 主库"
SCHEMA = """
    SET lc_monetary = 'C';
    CREATE SCHEMA "进销存";
    CREATE TABLE "进销存"."客户" ("编号" text PRIMARY KEY, "名称" text NOT NULL, "税号" text);
    CREATE TABLE "进销存"."商品" ("编码" text PRIMARY KEY, "名称" text, "规格" text, "单位" text);
    CREATE TABLE "进销存"."销售单" (
        "单号" text PRIMARY KEY, "客户" text REFERENCES "进销存"."客户",
        "开单日期" text NOT NULL, "发货日期" text);
    CREATE TABLE "进销存"."销售明细" (
        "单号" text REFERENCES "进销存"."销售单", "行号" smallint, "商品" text REFERENCES "进销存"."商品",
        "数量" real, "单价" money, "折扣额" money DEFAULT 0);
    CREATE SCHEMA "开票";
    -- money is cast to numeric (exact: money is stored in cents); to_jsonb would write '$268.00'.
    CREATE VIEW "开票"."发票明细" AS
      SELECT d."单号" AS order_ref, h."客户" AS customer_ref, d."行号" AS line_no,
             d."商品" AS item_ref, g."名称" AS item_name, g."规格" AS spec, g."单位" AS unit,
             d."数量" AS quantity, d."单价"::numeric AS unit_price, d."折扣额"::numeric AS discount
        FROM "进销存"."销售明细" d
        JOIN "进销存"."销售单" h ON h."单号" = d."单号"
        JOIN "进销存"."商品" g ON g."编码" = d."商品";
    INSERT INTO "进销存"."客户" VALUES
        ('甲', '杭州示例贸易有限公司', '91330106MA2B0001XY'), ('乙', '上海样板科技有限公司', NULL);
    INSERT INTO "进销存"."商品" VALUES
        ('茶-01', '龙井茶', '250克', '盒'), ('纸-01', '复印纸', 'A4 70克', '箱'), ('服-01', '安装服务', NULL, '次');
    INSERT INTO cdc_invoice.seller (seller_id, tax_number, name, clerk)
    VALUES ('main', '339902999999789113', '航信培训企业789113', '张三');
    INSERT INTO cdc_invoice.buyer (source, customer_ref, name, tax_number)
    SELECT '进销存 主库', "编号", "名称", "税号" FROM "进销存"."客户";
    INSERT INTO cdc_invoice.item_tax (source, item_ref, tax_code, tax_rate) VALUES
        ('进销存 主库', '茶-01', '1010115010000000000', 0.09),
        ('进销存 主库', '纸-01', '1060201010000000000', 0.13),
        ('进销存 主库', '服-01', '3049900000000000000', 0.06);
"""
ISSUE_WHEN = "NEW.\"发货日期\" IS NOT NULL AND NEW.\"发货日期\" <> '' AND coalesce(OLD.\"发货日期\", '') = ''"
LINES = [
    ("茶-01", "2", "268.00", "10.00"),
    ("纸-01", "3", "125.50", "0"),
    ("服-01", "1", "99.99", "0"),
]


def cents(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


EXPECTED = sum((cents(Decimal(q) * Decimal(p)) - Decimal(d) for _, q, p, d in LINES), Decimal(0))


def add_order(
    conn: psycopg.Connection[tuple[object, ...]], ref: str, day: str, shipped: str | None
) -> None:
    conn.execute(
        """INSERT INTO "进销存"."销售单" VALUES (%s, %s, %s, %s)""",
        (ref, "甲" if ref.endswith(("1", "3", "5", "7", "9")) else "乙", day, shipped),
    )
    for n, (item, qty, price, discount) in enumerate(LINES, 1):
        conn.execute(
            """INSERT INTO "进销存"."销售明细" VALUES (%s, %s, %s, %s, %s::numeric, %s::numeric)""",
            (ref, n, item, qty, price, discount),
        )


def cli(*args: str, expect: int = 0) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cdc_invoice", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == expect, done.stdout + done.stderr
    return done.stdout


def test_chinese_schema_text_dates_and_money_through_the_daemon(
    installed_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon
) -> None:
    dsn = installed_dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
        # Before attach: two shipped in February, three in March, one not shipped ('').
        for n, (day, shipped) in enumerate(
            [
                ("2024-02-01", "2024-02-03"),
                ("2024-02-20", "2024-02-21"),
                ("2024-03-01", "2024-03-02"),
                ("2024-03-05", "2024-03-06"),
                ("2024-03-09", "2024-03-10"),
                ("2024-03-12", ""),
            ],
            1,
        ):
            add_order(conn, f"销-{n:03d}", day, shipped)

    out = cli(
        "attach", "--dsn", dsn, "--source", SOURCE, "--order-table", '"进销存"."销售单"',
        "--order-key", "单号", "--issue-when", ISSUE_WHEN, "--document", '"开票"."发票明细"',
        "--seller", "main",
    )  # fmt: skip
    assert f'attached {SOURCE} to "进销存"."销售单"' in out

    shown = json.loads(
        cli("preview", "--dsn", dsn, "--source", SOURCE, "--order", "销-003", "--json")
    )
    assert shown["ok"] and shown["meets_issue_when"] and shown["request"] is None
    [draft] = shown["invoices"]
    assert Decimal(draft["total_incl_tax"]) == EXPECTED
    assert [line["name"] for line in draft["lines"]][:2] == ["龙井茶", "龙井茶"]  # + discount line
    unshipped = cli("preview", "--dsn", dsn, "--source", SOURCE, "--order", "销-006")
    assert "issue_when does not hold now" in unshipped

    out = cli(
        "backfill", "--dsn", dsn, "--source", SOURCE, "--since", "2024-03-01",
        "--since-column", "开单日期",
    )  # fmt: skip
    assert "4 order(s) read, 3 meet the condition, 0 already queued, 3 enqueued" in out

    daemon = start_daemon(dsn, sandbox, concurrency=8)

    def ship_new(refs: list[str]) -> None:
        with psycopg.connect(dsn) as conn:
            for ref in refs:
                with conn.transaction():  # the shipped date first, the lines after it
                    conn.execute(
                        """INSERT INTO "进销存"."销售单" VALUES (%s, '甲', '2024-04-01', '2024-04-02')""",
                        (ref,),
                    )
                    for n, (item, qty, price, discount) in enumerate(LINES, 1):
                        conn.execute(
                            """INSERT INTO "进销存"."销售明细"
                               VALUES (%s, %s, %s, %s, %s::numeric, %s::numeric)""",
                            (ref, n, item, qty, price, discount),
                        )

    def ship_existing() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                """UPDATE "进销存"."销售单" SET "发货日期" = '2024-04-03' WHERE "单号" = '销-006'"""
            )

    threads = [
        threading.Thread(target=ship_new, args=(["新-001", "新-002"],)),
        threading.Thread(target=ship_new, args=(["新-003"],)),
        threading.Thread(target=ship_existing),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    deadline = time.monotonic() + 60
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE state IN ('done', 'failed')) FROM cdc_invoice.request"
            ).fetchone()
            if row == (7,):
                break
            time.sleep(0.2)
        states = conn.execute(
            "SELECT order_ref, state, last_error FROM cdc_invoice.request ORDER BY order_ref"
        ).fetchall()
        assert [(r, s) for r, s, _ in states] == [
            (ref, "done")
            for ref in ["新-001", "新-002", "新-003", "销-003", "销-004", "销-005", "销-006"]
        ], (states, daemon.output()[-3000:])
        invoices = conn.execute(
            "SELECT i.order_ref, i.buyer_name, i.total_incl_tax, "
            "array_agg(l.item_name ORDER BY l.line_no) FROM cdc_invoice.invoice i "
            "JOIN cdc_invoice.invoice_line l ON l.invoice_id = i.id GROUP BY 1, 2, 3 ORDER BY 1"
        ).fetchall()
    assert len(invoices) == 7
    assert {total for _, _, total, _ in invoices} == {EXPECTED}
    assert {name for _, name, _, _ in invoices} == {"杭州示例贸易有限公司", "上海样板科技有限公司"}
    assert all(names[0] == "龙井茶" and "安装服务" in names for *_, names in invoices)
    sources = json.loads(cli("sources", "--dsn", dsn, "--json"))
    assert sources["source"] == SOURCE and sources["trigger_state"] == "enabled"
