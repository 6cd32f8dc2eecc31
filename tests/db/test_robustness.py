"""Attach to inventory schemas as they come: odd key types, float and money columns, Chinese
identifiers, dates stored as text, lines written after the status, partitioned order tables
(by the order key: attach() requires it to be unique).

Each test builds a schema of its own (not ours), attaches it, completes orders through the
triggers and checks what was captured, what backfill adds and what preview computes.
"""

from __future__ import annotations

import uuid
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
import pytest

from cdc_invoice import capture
from cdc_invoice.capture import AttachArgs
from cdc_invoice.db.repository import json_loads

Conn = psycopg.Connection[tuple[Any, ...]]

SELLER = """INSERT INTO cdc_invoice.seller (seller_id, tax_number, name, clerk)
            VALUES ('main', '339902999999789113', '测试销方', '张三')"""
MAPPINGS = """INSERT INTO cdc_invoice.buyer (source, customer_ref, name) VALUES ('*', 'C1', '测试购方');
              INSERT INTO cdc_invoice.item_tax (source, item_ref, tax_code, tax_rate)
              VALUES ('*', 'ITEM', '1090511030000000000', 0.13)"""


def cents(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def requests(conn: Conn, source: str) -> dict[str, list[dict[str, Any]]]:
    """order_ref -> captured document rows (sorted by line_no), as the daemon would read them."""
    rows = conn.execute(
        "SELECT order_ref, document::text FROM cdc_invoice.request "
        "WHERE source = %s AND kind = 'issue'",
        (source,),
    ).fetchall()
    return {ref: sorted(json_loads(doc), key=lambda r: r["line_no"]) for ref, doc in rows}


def document_now(conn: Conn, source: str, order_ref: str) -> list[dict[str, Any]]:
    row = conn.execute(
        "SELECT document::text FROM cdc_invoice.order_document(%s, %s)", (source, order_ref)
    ).fetchone()
    assert row is not None
    return sorted(json_loads(row[0]), key=lambda r: r["line_no"])


def total(dsn: str, source: str, order_ref: str) -> Decimal:
    result = capture.preview(dsn, source, order_ref)
    assert result.ok, result.problems
    return sum((d.total_incl_tax for d in result.drafts), Decimal(0))


# --- order keys --------------------------------------------------------------------------

KEYS: dict[str, tuple[str, str, str]] = {
    # (completed before attach, completed by UPDATE, inserted complete with lines after)
    "smallint": ("-5", "7", "32000"),
    "integer": ("2147483647", "10", "9"),
    "bigint": ("9007199254740993", "9007199254740992", "1"),  # beyond float precision
    "text": ("so-2", "SO-10", "订单-1"),
    "varchar(5)": ("A-1", "b-22", "C-333"),
    "uuid": (str(uuid.UUID(int=1)), str(uuid.uuid4()), str(uuid.uuid4())),
}


@pytest.mark.parametrize("key_type", list(KEYS))
def test_order_keys_of_every_common_type(installed_dsn: str, key_type: str) -> None:
    before, updated, inserted = KEYS[key_type]
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute(f"""
            CREATE SCHEMA inv;
            CREATE TABLE inv.orders (k {key_type} PRIMARY KEY, status text NOT NULL, customer text);
            CREATE TABLE inv.lines (k {key_type}, line_no int, item text, qty numeric, price numeric);
            CREATE VIEW inv.doc AS
              SELECT o.k AS order_ref, o.customer AS customer_ref, l.line_no, l.item AS item_ref,
                     '商品' AS item_name, l.qty AS quantity, l.price AS unit_price
                FROM inv.orders o JOIN inv.lines l USING (k);
            {SELLER}; {MAPPINGS};
        """)
        conn.execute("INSERT INTO inv.orders VALUES (%s, 'shipped', 'C1')", (before,))
        conn.execute("INSERT INTO inv.lines VALUES (%s, 1, 'ITEM', 2, 10.5)", (before,))
        capture.attach(
            installed_dsn,
            AttachArgs(
                "k",
                "inv.orders",
                "k",
                "NEW.status = 'shipped' AND NEW.status IS DISTINCT FROM OLD.status",
                "inv.doc",
                "main",
            ),
        )
        conn.execute("INSERT INTO inv.orders VALUES (%s, 'new', 'C1')", (updated,))
        conn.execute(
            "INSERT INTO inv.lines VALUES (%s, 1, 'ITEM', 1, 3), (%s, 2, 'ITEM', 3, 0.99)",
            (updated, updated),
        )
        conn.execute("UPDATE inv.orders SET status = 'shipped' WHERE k = %s", (updated,))
        with conn.transaction():  # complete first, lines after: the snapshot is at commit
            conn.execute("INSERT INTO inv.orders VALUES (%s, 'shipped', 'C1')", (inserted,))
            conn.execute(
                "INSERT INTO inv.lines VALUES (%s, 1, 'ITEM', 4, 25), (%s, 2, 'ITEM', 1, 1)",
                (inserted, inserted),
            )
        texts = dict(
            conn.execute(
                "SELECT k::text, k::text FROM inv.orders WHERE k IN (%s, %s, %s)",
                (before, updated, inserted),
            ).fetchall()
        )
        captured = requests(conn, "k")
        assert set(captured) == {texts[updated], texts[inserted]}
        assert [r["quantity"] for r in captured[texts[inserted]]] == [4, 1]
        # The document the trigger took is the one order_document (preview, backfill) builds.
        assert captured[texts[updated]] == document_now(conn, "k", texts[updated])
        if key_type == "bigint":  # a JSON number, read back exactly (never via float)
            assert captured[texts[updated]][0]["order_ref"] == 9007199254740992

        # Backfill pages through the key in its own order, one row per batch.
        first = capture.backfill(installed_dsn, "k", batch_size=1)
        assert (first.scanned, first.eligible, first.queued_before, first.enqueued) == (3, 3, 2, 1)
        assert first.batches >= 3
        again = capture.backfill(installed_dsn, "k", batch_size=2)
        assert (again.queued_before, again.enqueued) == (3, 0)
        captured = requests(conn, "k")
        assert set(captured) == set(texts.values())
        assert captured[texts[before]] == document_now(conn, "k", texts[before])

    if key_type == "varchar(5)":  # a longer key is not cut down to an existing one
        with pytest.raises(capture.CaptureError, match="order 'C-3339' not found"):
            capture.preview(installed_dsn, "k", "C-3339")
    assert total(installed_dsn, "k", texts[inserted]) == Decimal("101.00")
    assert total(installed_dsn, "k", texts[updated]) == Decimal("5.97")


# --- money columns -------------------------------------------------------------------------

PRICES = [("19.99", "3"), ("0.1", "7"), ("1234.5", "1"), ("7.77", "0.5"), ("0.3", "3")]


@pytest.mark.parametrize("money_type", ["real", "double precision", "numeric(12,2)", "money"])
def test_money_in_real_double_numeric_and_money(installed_dsn: str, money_type: str) -> None:
    # The view casts money to numeric (attach refuses money columns, see the next test).
    price = "l.price::numeric" if money_type == "money" else "l.price"
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute(f"""
            CREATE SCHEMA inv;
            CREATE TABLE inv.orders (id int PRIMARY KEY, status text NOT NULL);
            CREATE TABLE inv.lines (id int, line_no int, qty real, price {money_type});
            CREATE VIEW inv.doc AS
              SELECT o.id AS order_ref, 'C1' AS customer_ref, l.line_no, 'ITEM' AS item_ref,
                     '商品' AS item_name, l.qty AS quantity, {price} AS unit_price
                FROM inv.orders o JOIN inv.lines l USING (id);
            {SELLER}; {MAPPINGS};
        """)
        capture.attach(
            installed_dsn,
            AttachArgs("m", "inv.orders", "id", "NEW.status = 'done'", "inv.doc", "main"),
        )
        conn.execute("INSERT INTO inv.orders VALUES (1, 'new')")
        for n, (p, q) in enumerate(PRICES, 1):
            conn.execute("INSERT INTO inv.lines VALUES (1, %s, %s, %s)", (n, q, p))
        conn.execute("UPDATE inv.orders SET status = 'done'")
        doc = conn.execute("SELECT document::text FROM cdc_invoice.request").fetchone()
        assert doc is not None
    # Each number arrives as the decimal that was stored: 0.1, never 0.100000001490116.
    rows = sorted(json_loads(doc[0]), key=lambda r: r["line_no"])
    assert [r["unit_price"] for r in rows] == [Decimal(p) for p, _ in PRICES]
    assert [Decimal(str(r["quantity"])) for r in rows] == [Decimal(q) for _, q in PRICES]
    expected = sum((cents(Decimal(p) * Decimal(q)) for p, q in PRICES), Decimal(0))
    assert total(installed_dsn, "m", "1") == expected == Decimal("1299.96")


def test_money_column_in_the_view_is_refused_with_the_cast_to_use(installed_dsn: str) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute(f"""
            CREATE SCHEMA inv;
            CREATE TABLE inv.orders (id int PRIMARY KEY, status text);
            CREATE TABLE inv.lines (id int, price money);
            CREATE VIEW inv.doc AS SELECT o.id AS order_ref, 'C1' AS customer_ref, 1 AS line_no,
                   'ITEM' AS item_ref, 'Item' AS item_name, 1 AS quantity, l.price AS unit_price
              FROM inv.orders o JOIN inv.lines l USING (id);
            {SELLER};
        """)
    with pytest.raises(capture.CaptureError) as exc:
        capture.attach(
            installed_dsn, AttachArgs("m", "inv.orders", "id", "true", "inv.doc", "main")
        )
    assert exc.value.sqlstate == "CI003"
    assert "money column(s): unit_price" in exc.value.message
    assert exc.value.hint is not None and "::numeric AS unit_price" in exc.value.hint


def test_money_as_text_reaches_the_domain_as_a_clear_problem(installed_dsn: str) -> None:
    """A view that turns money into text ('$19.99') passes attach; preview names the column."""
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute(f"""
            SET lc_monetary = 'C';
            CREATE SCHEMA inv;
            CREATE TABLE inv.orders (id int PRIMARY KEY, status text);
            CREATE TABLE inv.lines (id int, price money);
            CREATE VIEW inv.doc AS SELECT o.id AS order_ref, 'C1' AS customer_ref, 1 AS line_no,
                   'ITEM' AS item_ref, 'x' AS item_name, 1 AS quantity, l.price::text AS unit_price
              FROM inv.orders o JOIN inv.lines l USING (id);
            {SELLER}; {MAPPINGS};
            INSERT INTO inv.orders VALUES (1, 'done');
            INSERT INTO inv.lines VALUES (1, 1234.5);
        """)
    capture.attach(installed_dsn, AttachArgs("m", "inv.orders", "id", "true", "inv.doc", "main"))
    result = capture.preview(installed_dsn, "m", "1")
    assert not result.ok
    [problem] = result.problems
    assert problem.field == "unit_price" and "is not a number" in problem.message
    assert problem.fix is not None and "cast it there (e.g. unit_price::numeric)" in problem.fix


# --- Chinese identifiers and dates stored as text ----------------------------------------

CHINESE_SCHEMA = """
    CREATE SCHEMA "进销存";
    CREATE TABLE "进销存"."销售单" (
        "单号" text PRIMARY KEY, "客户" text NOT NULL, "开单日期" text NOT NULL, "发货日期" text);
    CREATE TABLE "进销存"."销售明细" (
        "单号" text REFERENCES "进销存"."销售单", "行号" int, "商品" text, "数量" numeric,
        "单价" numeric(12,2), "折扣额" numeric(12,2) DEFAULT 0);
    CREATE TABLE "进销存"."商品" ("编码" text PRIMARY KEY, "名称" text, "规格" text, "单位" text);
    CREATE SCHEMA "开票";
    CREATE VIEW "开票"."发票明细" AS
      SELECT d."单号" AS order_ref, h."客户" AS customer_ref, d."行号" AS line_no,
             d."商品" AS item_ref, g."名称" AS item_name, g."规格" AS spec, g."单位" AS unit,
             d."数量" AS quantity, d."单价" AS unit_price, d."折扣额" AS discount
        FROM "进销存"."销售明细" d
        JOIN "进销存"."销售单" h ON h."单号" = d."单号"
        JOIN "进销存"."商品" g ON g."编码" = d."商品";
    INSERT INTO "进销存"."商品" VALUES ('茶-01', '龙井茶', '250克', '盒'), ('纸-01', '复印纸', 'A4', '箱');
    INSERT INTO cdc_invoice.seller (seller_id, tax_number, name, clerk) VALUES ('main', '339902999999789113', '航信培训企业789113', '张三');
    INSERT INTO cdc_invoice.buyer (source, customer_ref, name, tax_number)
    VALUES ('进销存 主库', '客户甲', '杭州示例贸易有限公司', '91330106MA2B0001XY');
    INSERT INTO cdc_invoice.item_tax (source, item_ref, tax_code, tax_rate) VALUES
        ('进销存 主库', '茶-01', '1010115010000000000', 0.09),
        ('进销存 主库', '纸-01', '1060201010000000000', 0.13);
"""
# Shipped when the text date is filled in (NULL or '' before: an old system's convention).
CHINESE_WHEN = (
    """NEW."发货日期" IS NOT NULL AND NEW."发货日期" <> '' """
    """AND coalesce(OLD."发货日期", '') = '' """
)


def add_chinese_order(conn: Conn, ref: str, day: str, shipped: str | None) -> None:
    conn.execute(
        """INSERT INTO "进销存"."销售单" VALUES (%s, '客户甲', %s, %s)""", (ref, day, shipped)
    )
    conn.execute(
        """INSERT INTO "进销存"."销售明细" VALUES (%s, 1, '茶-01', 2, 268, 10), (%s, 2, '纸-01', 3, 125.5, 0)""",
        (ref, ref),
    )


def test_chinese_identifiers_and_text_dates(installed_dsn: str) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute(CHINESE_SCHEMA)
        add_chinese_order(conn, "销-001", "2024-01-15", "2024-01-20")
        add_chinese_order(conn, "销-002", "2024-03-02", "2024-03-05")
        add_chinese_order(conn, "销-003", "2024-03-09", "")  # not shipped: empty text date
        message = capture.attach(
            installed_dsn,
            AttachArgs(
                "进销存 主库",
                '"进销存"."销售单"',
                "单号",
                CHINESE_WHEN,
                '"开票"."发票明细"',
                "main",
            ),
        )
        assert "进销存" in message
        assert conn.execute("SELECT count(*) FROM cdc_invoice.request").fetchone() == (0,)
        conn.execute(
            """UPDATE "进销存"."销售单" SET "发货日期" = '2024-03-10' WHERE "单号" = '销-003'"""
        )
        assert set(requests(conn, "进销存 主库")) == {"销-003"}
        # Backfill since a date held in a text column: only 销-002 (销-001 is older).
        result = capture.backfill(
            installed_dsn, "进销存 主库", since=_date("2024-03-01"), since_column="开单日期"
        )
        assert (result.scanned, result.eligible, result.enqueued) == (2, 2, 1)
        assert set(requests(conn, "进销存 主库")) == {"销-002", "销-003"}
        doc = requests(conn, "进销存 主库")["销-002"]
        assert [r["item_name"] for r in doc] == ["龙井茶", "复印纸"]
        assert doc == document_now(conn, "进销存 主库", "销-002")
    # 2 × 268 − 10 at 9 %, plus 3 × 125.50 at 13 %.
    assert total(installed_dsn, "进销存 主库", "销-002") == Decimal("902.50")


def test_since_on_a_text_column_that_is_not_a_date_is_refused_clearly(installed_dsn: str) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute(CHINESE_SCHEMA)
        add_chinese_order(conn, "销-001", "2024年1月15日", "2024-01-20")
    capture.attach(
        installed_dsn,
        AttachArgs(
            "进销存 主库", '"进销存"."销售单"', "单号", CHINESE_WHEN, '"开票"."发票明细"', "main"
        ),
    )
    with pytest.raises(capture.CaptureError) as exc:
        capture.backfill(
            installed_dsn, "进销存 主库", since=_date("2024-01-01"), since_column="开单日期"
        )
    assert exc.value.sqlstate == "CI001"
    assert '"进销存"."销售单"."开单日期" is not a date' in exc.value.message
    assert "2024年1月15日" in exc.value.message


def _date(text: str) -> Any:
    from datetime import date

    return date.fromisoformat(text)


# --- partitioned order tables -------------------------------------------------------------


def test_partitioned_by_range_including_a_partition_added_after_attach(installed_dsn: str) -> None:
    """Partitioned by the order key: the only partitioned table whose key can be unique
    (PostgreSQL puts the partition key in every unique index; attach() requires one)."""
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute(f"""
            CREATE SCHEMA inv;
            CREATE TABLE inv.orders (id bigint PRIMARY KEY, day date, status text NOT NULL,
                                     customer text) PARTITION BY RANGE (id);
            CREATE TABLE inv.orders_1 PARTITION OF inv.orders FOR VALUES FROM (0) TO (100);
            CREATE TABLE inv.lines (id bigint, line_no int, qty numeric, price numeric);
            CREATE VIEW inv.doc AS
              SELECT o.id AS order_ref, o.customer AS customer_ref, l.line_no, 'ITEM' AS item_ref,
                     '商品' AS item_name, l.qty AS quantity, l.price AS unit_price
                FROM inv.orders o JOIN inv.lines l USING (id);
            {SELLER}; {MAPPINGS};
            INSERT INTO inv.orders VALUES (1, '2024-02-01', 'shipped', 'C1');
            INSERT INTO inv.lines VALUES (1, 1, 1, 100);
        """)
        capture.attach(
            installed_dsn,
            AttachArgs(
                "p",
                "inv.orders",
                "id",
                "NEW.status = 'shipped' AND NEW.status IS DISTINCT FROM OLD.status",
                "inv.doc",
                "main",
            ),
        )
        # A partition created after attach gets the triggers (PostgreSQL clones them) ...
        conn.execute(
            "CREATE TABLE inv.orders_2 PARTITION OF inv.orders FOR VALUES FROM (100) TO (200)"
        )
        # ... and so does a table attached as a partition.
        conn.execute("""CREATE TABLE inv.orders_3 (LIKE inv.orders INCLUDING ALL);
                        ALTER TABLE inv.orders ATTACH PARTITION inv.orders_3
                        FOR VALUES FROM (200) TO (300)""")
        with conn.transaction():  # shipped on insert, lines after, in a late partition
            conn.execute("INSERT INTO inv.orders VALUES (102, '2025-06-01', 'shipped', 'C1')")
            conn.execute("INSERT INTO inv.lines VALUES (102, 1, 2, 50), (102, 2, 1, 0.5)")
        conn.execute("INSERT INTO inv.orders VALUES (203, '2026-03-01', 'new', 'C1')")
        conn.execute("INSERT INTO inv.lines VALUES (203, 1, 3, 10)")
        conn.execute("UPDATE inv.orders SET status = 'shipped' WHERE id = 203")
        # Completed by an UPDATE that also moves the row to another partition (its key
        # changes): PostgreSQL runs it as DELETE + INSERT, so the INSERT trigger captures it
        # (OLD is NULL).
        conn.execute("INSERT INTO inv.orders VALUES (4, '2024-05-01', 'new', 'C1')")
        conn.execute("INSERT INTO inv.lines VALUES (104, 1, 1, 7)")
        conn.execute("UPDATE inv.orders SET status = 'shipped', id = 104 WHERE id = 4")
        captured = requests(conn, "p")
        assert set(captured) == {"102", "203", "104"}
        assert [r["quantity"] for r in captured["102"]] == [2, 1]
        clones = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid IN "
            "('inv.orders_1'::regclass, 'inv.orders_2'::regclass, 'inv.orders_3'::regclass)"
        ).fetchone()
        assert clones == (6,)  # issue_upd and issue_ins on each of the three partitions

        result = capture.backfill(installed_dsn, "p", batch_size=2)
        assert (result.scanned, result.enqueued) == (4, 1)
        assert set(requests(conn, "p")) == {"1", "102", "203", "104"}

        [info] = capture.sources(installed_dsn)
        assert info.trigger_state == "enabled"
        name = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'inv.orders_2'::regclass "
            "AND tgname LIKE '%%issue_upd'"
        ).fetchone()
        assert name is not None
        conn.execute(f'ALTER TABLE inv.orders_2 DISABLE TRIGGER "{name[0]}"')
        [info] = capture.sources(installed_dsn)
        assert info.trigger_state == "disabled on 1 partition(s)" and not info.healthy
    assert total(installed_dsn, "p", "102") == Decimal("100.50")


def test_partitioned_by_status_is_refused_its_key_cannot_be_unique(installed_dsn: str) -> None:
    """A table partitioned by another column (status, a date) cannot have a unique index on
    the order key alone: one key could name two orders, invoiced as one. attach() says so."""
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute(f"""
            CREATE SCHEMA inv;
            CREATE TABLE inv.orders (id int, status text NOT NULL, customer text,
                                     PRIMARY KEY (id, status)) PARTITION BY LIST (status);
            CREATE TABLE inv.orders_open PARTITION OF inv.orders FOR VALUES IN ('open');
            CREATE TABLE inv.orders_shipped PARTITION OF inv.orders FOR VALUES IN ('shipped');
            CREATE VIEW inv.doc AS
              SELECT o.id AS order_ref, o.customer AS customer_ref, 1 AS line_no,
                     'ITEM' AS item_ref, '商品' AS item_name, 1 AS quantity, 1 AS unit_price
                FROM inv.orders o;
            {SELLER}; {MAPPINGS};
        """)
        with pytest.raises(capture.CaptureError) as info:
            capture.attach(
                installed_dsn,
                AttachArgs("s", "inv.orders", "id", "NEW.status = 'shipped'", "inv.doc", "main"),
            )
        assert info.value.sqlstate == "CI001"
        assert "not unique" in info.value.message
        assert "partitioned by it" in str(info.value.hint)


# --- quoted identifiers -------------------------------------------------------------------


@pytest.mark.parametrize("order_ref", ['o."Order No"', 'o."Order No"::text'])
def test_quoted_mixed_case_names_with_spaces_and_quotes(installed_dsn: str, order_ref: str) -> None:
    """Names only double quotes can express; order_ref of the key's type or cast to text."""
    cust = '"Cust ""Code"""'  # a column named: Cust "Code"
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute(f"""
            CREATE SCHEMA "Sales Dept";
            CREATE TABLE "Sales Dept"."Order Header" (
                "Order No" bigint PRIMARY KEY, "Status" text NOT NULL, {cust} text);
            CREATE TABLE "Sales Dept"."Order Line" (
                "Order No" bigint, "Line#" int, "Qty" numeric, "Price" numeric);
            CREATE VIEW "Sales Dept"."Invoice Doc" AS
              SELECT {order_ref} AS order_ref, o.{cust} AS customer_ref,
                     l."Line#" AS line_no, 'ITEM' AS item_ref, 'Widget' AS item_name,
                     l."Qty" AS quantity, l."Price" AS unit_price
                FROM "Sales Dept"."Order Header" o JOIN "Sales Dept"."Order Line" l USING ("Order No");
            {SELLER}; {MAPPINGS};
            INSERT INTO "Sales Dept"."Order Header" VALUES (1, 'Shipped', 'C1'), (2, 'Open', 'C1');
            INSERT INTO "Sales Dept"."Order Line" VALUES (1, 1, 2, 5), (2, 1, 1, 8), (2, 2, 3, 1.5);
        """)
        capture.attach(
            installed_dsn,
            AttachArgs(
                "Sales 'Dept'",
                '"Sales Dept"."Order Header"',
                "Order No",
                """NEW."Status" = 'Shipped' AND OLD."Status" IS DISTINCT FROM 'Shipped'""",
                '"Sales Dept"."Invoice Doc"',
                "main",
            ),
        )
        conn.execute(
            """UPDATE "Sales Dept"."Order Header" SET "Status" = 'Shipped' WHERE "Order No" = 2"""
        )
        assert [len(doc) for doc in requests(conn, "Sales 'Dept'").values()] == [2]
        assert capture.backfill(installed_dsn, "Sales 'Dept'").enqueued == 1
        captured = requests(conn, "Sales 'Dept'")
        assert set(captured) == {"1", "2"}
        assert captured["2"] == document_now(conn, "Sales 'Dept'", "2")
        # The capture function compares order_ref natively when it can (the key's index).
        body = conn.execute(
            "SELECT prosrc FROM pg_proc WHERE proname = "
            "(SELECT capture_fn FROM cdc_invoice.source WHERE source = %s)",
            ("Sales 'Dept'",),
        ).fetchone()
        assert body is not None
        native = 'd.order_ref = NEW."Order No"' in body[0]
        assert native == (order_ref == 'o."Order No"'), body[0]
    assert total(installed_dsn, "Sales 'Dept'", "2") == Decimal("12.50")
