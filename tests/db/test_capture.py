"""attach()/detach() and the capture trigger, against a real PostgreSQL."""

from __future__ import annotations

import threading

import psycopg
import pytest

ATTACH = """SELECT cdc_invoice.attach(source => %(source)s, order_table => %(table)s,
    order_key => %(key)s, issue_when => %(when)s, document => %(doc)s, seller => %(seller)s)"""


def attach_args(**over: str) -> dict[str, str]:
    args = {
        "source": "shop",
        "table": "shop.orders",
        "key": "order_id",
        "when": "NEW.status = 'shipped' AND NEW.status IS DISTINCT FROM OLD.status",
        "doc": "invoicing.shop_document",
        "seller": "main",
    }
    args.update(over)
    return args


def new_order(
    conn: psycopg.Connection[tuple[object, ...]], status: str = "new", lines: int = 2
) -> int:
    row = conn.execute(
        "INSERT INTO shop.orders (customer_id, status) VALUES ('C001', %s) RETURNING order_id",
        (status,),
    ).fetchone()
    assert row is not None
    for n in range(1, lines + 1):
        conn.execute(
            "INSERT INTO shop.order_lines VALUES (%s, %s, 'P-MOUSE', %s, 79.90, 0)", (row[0], n, n)
        )
    return int(row[0])


def requests(conn: psycopg.Connection[tuple[object, ...]]) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT order_ref, kind, state, json_array_length(document) "
        "FROM cdc_invoice.request ORDER BY id"
    ).fetchall()


def test_completed_order_is_captured_with_its_document(shop_dsn: str) -> None:
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        oid = new_order(conn)
        assert requests(conn) == []
        conn.execute("UPDATE shop.orders SET status = 'shipped' WHERE order_id = %s", (oid,))
        assert requests(conn) == [(str(oid), "issue", "pending", 2)]
        doc = conn.execute("SELECT document FROM cdc_invoice.request").fetchone()
        assert doc is not None
        assert {line["item_ref"] for line in doc[0]} == {"P-MOUSE"}  # type: ignore[index]


def test_completed_reopened_completed_again_is_one_request(shop_dsn: str) -> None:
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        oid = new_order(conn)
        for status in ("shipped", "new", "shipped", "new", "shipped"):
            conn.execute("UPDATE shop.orders SET status = %s WHERE order_id = %s", (status, oid))
        assert len(requests(conn)) == 1


def test_snapshot_sees_lines_written_after_the_status_in_the_same_transaction(
    shop_dsn: str,
) -> None:
    with psycopg.connect(shop_dsn) as conn:
        oid = new_order(conn, status="shipped", lines=0)  # INSERT already complete, no lines yet
        conn.execute(
            "INSERT INTO shop.order_lines VALUES (%s, 1, 'P-TEA', 3, 268, 0), "
            "(%s, 2, 'P-PAPER', 1, 125.5, 0)",
            (oid, oid),
        )
        conn.commit()
        assert requests(conn) == [(str(oid), "issue", "pending", 2)]


def test_rolled_back_completion_leaves_nothing(shop_dsn: str) -> None:
    with psycopg.connect(shop_dsn) as conn:
        oid = new_order(conn)
        conn.commit()
        conn.execute("UPDATE shop.orders SET status = 'shipped' WHERE order_id = %s", (oid,))
        conn.rollback()
        assert requests(conn) == []


def test_non_qualifying_update_calls_no_trigger_function(shop_dsn: str) -> None:
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        quals = conn.execute(
            "SELECT tgname, tgqual IS NOT NULL FROM pg_trigger "
            "WHERE tgrelid = 'shop.orders'::regclass AND tgname LIKE '%%_upd' ORDER BY tgname"
        ).fetchall()
        assert quals and all(has_when for _, has_when in quals), quals
        conn.execute("SET track_functions = 'all'")
        fn = conn.execute(
            "SELECT capture_fn FROM cdc_invoice.source WHERE source = 'shop'"
        ).fetchone()
        assert fn is not None

        def calls() -> int:
            conn.execute("SELECT pg_stat_force_next_flush()")
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions "
                "WHERE schemaname = 'cdc_invoice' AND funcname = %s",
                (fn[0],),
            ).fetchone()
            return int(row[0]) if row else 0

        oid = new_order(conn)
        start = calls()
        for _ in range(20):  # touch the order without completing it
            conn.execute("UPDATE shop.orders SET created_at = now() WHERE order_id = %s", (oid,))
        assert calls() == start
        conn.execute("UPDATE shop.orders SET status = 'shipped' WHERE order_id = %s", (oid,))
        assert calls() == start + 1


def test_concurrent_completions_send_one_coalesced_notification(shop_dsn: str) -> None:
    """While one completing transaction holds the wake-up lock, others commit without NOTIFY."""
    n = 12
    with (
        psycopg.connect(shop_dsn, autocommit=True) as listener,
        psycopg.connect(shop_dsn) as holder,
    ):
        ids = [new_order(listener) for _ in range(n + 1)]
        listener.execute("LISTEN cdc_invoice")
        holder.execute("UPDATE shop.orders SET status = 'shipped' WHERE order_id = %s", (ids[0],))
        holder.execute("SET CONSTRAINTS ALL IMMEDIATE")  # fire the capture now: holds the lock

        def complete(order_ids: list[int]) -> None:
            with psycopg.connect(shop_dsn, autocommit=True) as c:
                for oid in order_ids:
                    c.execute(
                        "UPDATE shop.orders SET status = 'shipped' WHERE order_id = %s", (oid,)
                    )

        threads = [threading.Thread(target=complete, args=(ids[1 + i :: 4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        holder.commit()
        received = list(listener.notifies(timeout=1.0))
        assert len(received) == 1, received
        assert listener.execute("SELECT count(*) FROM cdc_invoice.request").fetchone() == (n + 1,)


def test_many_concurrent_completions_send_far_fewer_notifications(shop_dsn: str) -> None:
    per_conn, conns = 40, 8
    with psycopg.connect(shop_dsn, autocommit=True) as listener:
        ids = [new_order(listener, lines=1) for _ in range(per_conn * conns)]
        listener.execute("LISTEN cdc_invoice")

        def complete(order_ids: list[int]) -> None:
            with psycopg.connect(shop_dsn, autocommit=True) as c:
                for oid in order_ids:
                    c.execute(
                        "UPDATE shop.orders SET status = 'shipped' WHERE order_id = %s", (oid,)
                    )

        threads = [threading.Thread(target=complete, args=(ids[i::conns],)) for i in range(conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        received = list(listener.notifies(timeout=1.0))
        assert listener.execute("SELECT count(*) FROM cdc_invoice.request").fetchone() == (
            len(ids),
        )
        # Every transaction that did not overlap another one notifies; overlapping ones skip.
        assert 0 < len(received) < len(ids), len(received)
        print(f"{len(received)} notifications for {len(ids)} completions")


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"table": "shop.nope"}, "order table 'shop.nope' does not exist"),
        ({"table": "invoicing.shop_document"}, "is not a table"),
        ({"key": "id"}, "column 'id' does not exist in shop.orders"),
        ({"doc": "invoicing.nope"}, "document view 'invoicing.nope' does not exist"),
        (
            {"doc": "shop.customers"},
            "lacks column(s): order_ref, line_no, item_name, quantity, unit_price",
        ),
        ({"seller": "ghost"}, "seller 'ghost' does not exist"),
        ({"when": "NEW.status = "}, "issue_when is not a valid condition"),
        ({"when": "NEW.nope = 1"}, "issue_when is not a valid condition"),
        ({"when": "NEW.status"}, "issue_when is not a valid condition"),
        ({"when": "true; DROP TABLE shop.orders"}, "single boolean expression"),
        ({"when": "true -- comment"}, "single boolean expression"),
        ({"when": " "}, "issue_when must not be empty"),
        ({"source": ""}, "source name must be 1 to 40 characters"),
        ({"source": "x" * 41}, "source name must be 1 to 40 characters"),
    ],
)
def test_attach_rejects_bad_arguments_clearly(
    shop_dsn: str, over: dict[str, str], message: str
) -> None:
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(ATTACH, attach_args(**over))
        assert message in str(exc.value)
        assert exc.value.sqlstate is not None and exc.value.sqlstate.startswith("CI")
        assert exc.value.diag.message_hint, "every attach error carries a hint"
        assert conn.execute("SELECT to_regclass('shop.orders')").fetchone() != (None,)


def test_attach_is_idempotent_and_detach_removes_triggers(shop_dsn: str) -> None:
    def triggers(conn: psycopg.Connection[tuple[object, ...]]) -> list[tuple[object, ...]]:
        return conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'shop.orders'::regclass "
            "AND NOT tgisinternal ORDER BY 1"
        ).fetchall()

    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        before = triggers(conn)
        assert len(before) == 3  # issue on insert, issue on update, reverse on update
        conn.execute(ATTACH, attach_args())
        conn.execute(ATTACH, attach_args())
        assert len(triggers(conn)) == 2  # re-attached without reverse_when
        conn.execute("SELECT cdc_invoice.detach('shop')")
        assert triggers(conn) == []
        with pytest.raises(psycopg.Error, match="is not attached"):
            conn.execute("SELECT cdc_invoice.detach('shop')")
        oid = new_order(conn)
        conn.execute("UPDATE shop.orders SET status = 'shipped' WHERE order_id = %s", (oid,))
        assert requests(conn) == []


def test_chinese_identifiers_text_keys_and_odd_source_names(installed_dsn: str) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute("""
            CREATE SCHEMA "进销存";
            CREATE TABLE "进销存"."销售单" ("单号" text PRIMARY KEY, "状态" text NOT NULL, "客户" text);
            CREATE TABLE "进销存"."销售明细" ("单号" text, "行号" int, "商品" text, "数量" numeric, "单价" numeric);
            CREATE VIEW "进销存"."发票视图" AS
              SELECT d."单号" AS order_ref, h."客户" AS customer_ref, d."行号" AS line_no,
                     d."商品" AS item_ref, d."商品" AS item_name, d."数量" AS quantity, d."单价" AS unit_price
                FROM "进销存"."销售明细" d JOIN "进销存"."销售单" h USING ("单号");
            INSERT INTO cdc_invoice.seller (seller_id, tax_number, name) VALUES ('main', '339902999999789113', 'x');
        """)
        conn.execute(
            ATTACH,
            attach_args(
                source="销售 'quoted\"",
                table='"进销存"."销售单"',
                key="单号",
                when="NEW.\"状态\" = '已发货'",
                doc='"进销存"."发票视图"',
            ),
        )
        conn.execute("""INSERT INTO "进销存"."销售单" VALUES ('SO-001', '新建', 'C1');
                        INSERT INTO "进销存"."销售明细" VALUES ('SO-001', 1, '茶叶', 2, 99.5);
                        UPDATE "进销存"."销售单" SET "状态" = '已发货'""")
        row = conn.execute(
            "SELECT source, order_ref, json_array_length(document) FROM cdc_invoice.request"
        ).fetchone()
        assert row == ("销售 'quoted\"", "SO-001", 1)


def test_a_failing_snapshot_never_blocks_the_inventory_commit(shop_dsn: str) -> None:
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        # The DBA's view divides by zero for a line without quantity.
        conn.execute("""CREATE OR REPLACE VIEW invoicing.shop_document AS
            SELECT o.order_id AS order_ref, o.customer_id AS customer_ref, l.line_no,
                   l.sku AS item_ref, p.name AS item_name, p.spec, p.unit, l.quantity,
                   (l.unit_price * (l.quantity / l.quantity))::numeric(12,2) AS unit_price,
                   true AS price_includes_tax, l.discount
              FROM shop.orders o JOIN shop.order_lines l ON l.order_id = o.order_id
              JOIN shop.products p ON p.sku = l.sku""")
        oid = new_order(conn, lines=0)
        conn.execute("INSERT INTO shop.order_lines VALUES (%s, 1, 'P-MOUSE', 0, 79.90, 0)", (oid,))
        conn.execute(
            "UPDATE shop.orders SET status = 'shipped' WHERE order_id = %s", (oid,)
        )  # commits
        assert conn.execute(
            "SELECT status FROM shop.orders WHERE order_id = %s", (oid,)
        ).fetchone() == ("shipped",)
        row = conn.execute(
            "SELECT id, state, error_code, last_error, params ? 'row' FROM cdc_invoice.request"
        ).fetchone()
        assert (
            row is not None
            and row[1:3] == ("failed", "CAPTURE")
            and "division by zero" in row[3]
            and row[4]
        )
        with pytest.raises(psycopg.Error, match="division by zero"):
            conn.execute("SELECT cdc_invoice.retry(%s)", (row[0],))  # still broken: says why
        conn.execute("UPDATE shop.order_lines SET quantity = 1 WHERE order_id = %s", (oid,))
        conn.execute("SELECT cdc_invoice.retry(%s)", (row[0],))
        fixed = conn.execute(
            "SELECT state, json_array_length(document) FROM cdc_invoice.request"
        ).fetchone()
        assert fixed == ("pending", 1)
