"""Bad input at the capture trigger, in bulk: one transaction that completes many orders.

The inventory's commit must neither be refused nor made expensive for the rest of the server
because of cdc-invoice (the e2e cases in tests/e2e/test_bad_input.py complete one order per
transaction).
"""

from __future__ import annotations

import psycopg

BOOM = """
CREATE SCHEMA boom;
CREATE TABLE boom.orders (id integer PRIMARY KEY, status text NOT NULL DEFAULT 'new',
    divisor numeric NOT NULL DEFAULT 1);
CREATE VIEW boom.document AS
SELECT id AS order_ref, 'C001' AS customer_ref, 1 AS line_no, 'P-MOUSE' AS item_ref,
       '鼠标' AS item_name, 1 AS quantity, 10 / divisor AS unit_price
  FROM boom.orders;
SELECT cdc_invoice.attach(source => 'boom', order_table => 'boom.orders', order_key => 'id',
       issue_when => $$NEW.status = 'shipped'$$, document => 'boom.document', seller => 'main');
"""

# PGPROC_MAX_CACHED_SUBXIDS: past this many subtransaction XIDs in one transaction, its
# subxid cache overflows and every snapshot taken on the server while it is open must consult
# pg_subtrans (the well-known "subtransaction overflow" slowdown, also on hot standbys).
MAX_CACHED_SUBXIDS = 64


def test_one_bad_order_in_a_bulk_shipment_is_parked_and_the_rest_captured(
    shop_dsn: str,
) -> None:
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute(BOOM)
        conn.execute("INSERT INTO boom.orders (id) SELECT g FROM generate_series(1, 50) g")
        conn.execute("UPDATE boom.orders SET divisor = 0 WHERE id = 17")
    with psycopg.connect(shop_dsn) as conn:
        conn.execute("UPDATE boom.orders SET status = 'shipped'")
        conn.commit()  # not refused
        rows = conn.execute(
            "SELECT state, count(*), min(order_ref), min(last_error) FROM cdc_invoice.request "
            "WHERE source = 'boom' GROUP BY state ORDER BY state"
        ).fetchall()
    assert [(state, n) for state, n, _, _ in rows] == [("failed", 1), ("pending", 49)]
    failed = rows[0]
    assert failed[2] == "17" and "division by zero" in failed[3]


def test_a_bulk_shipment_does_not_overflow_the_subtransaction_cache(shop_dsn: str) -> None:
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO shop.orders (customer_id) SELECT 'C001' FROM generate_series(1, 200)"
        )
        conn.execute(
            "INSERT INTO shop.order_lines SELECT order_id, 1, 'P-MOUSE', 1, 79.90, 0 "
            "FROM shop.orders"
        )
    with psycopg.connect(shop_dsn) as conn:
        first = conn.execute("SELECT txid_current()").fetchone()
        conn.execute("UPDATE shop.orders SET status = 'shipped'")
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # run the deferred capture triggers now
        with psycopg.connect(shop_dsn, autocommit=True) as other:
            after = other.execute("SELECT txid_current()").fetchone()
        captured = conn.execute("SELECT count(*) FROM cdc_invoice.request").fetchone()
        conn.commit()
    assert first is not None and after is not None and captured == (200,)
    subxids = int(after[0]) - int(first[0]) - 1  # XIDs handed out in between, ours
    assert subxids < MAX_CACHED_SUBXIDS, f"{subxids} subtransaction XIDs for 200 orders"
