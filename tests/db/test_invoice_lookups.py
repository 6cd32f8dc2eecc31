"""A large invoice history must not slow the lookups of a blue invoice's red invoices."""

from __future__ import annotations

import psycopg

from cdc_invoice.db.queries import q

HISTORY = """
INSERT INTO cdc_invoice.request (source, order_ref, kind, state, platform_order_no)
SELECT 's', g::text, 'issue', 'done', 'N' || g FROM generate_series(1, 20000) g;
INSERT INTO cdc_invoice.invoice (request_id, source, order_ref, seller_id, invoice_number, kind,
       platform_serial, platform_order_no, issued_at, buyer_name, total_excl_tax, total_tax,
       total_incl_tax)
SELECT r.id, 's', r.order_ref, 'main', 'B' || r.order_ref, 'blue', 'S' || r.order_ref,
       r.platform_order_no, now(), 'Buyer', 100.00, 13.00, 113.00
  FROM cdc_invoice.request r;
INSERT INTO cdc_invoice.invoice_line (invoice_id, line_no, item_name, amount_excl_tax, tax_rate,
       tax, amount_incl_tax)
SELECT i.id, n, 'Item', 20.00, 0.13, 2.60, 22.60
  FROM cdc_invoice.invoice i CROSS JOIN generate_series(1, 5) n;
-- one red invoice, reversing a line of blue invoice 1
INSERT INTO cdc_invoice.request (source, order_ref, kind, state) VALUES ('s', '1', 'reverse', 'done');
INSERT INTO cdc_invoice.invoice (request_id, source, order_ref, seller_id, invoice_number, kind,
       original_invoice_id, platform_serial, platform_order_no, issued_at, buyer_name,
       total_excl_tax, total_tax, total_incl_tax)
SELECT max(id), 's', '1', 'main', 'R1', 'red', 1, 'SR1', 'NR1', now(), 'Buyer', -20.00, -2.60,
       -22.60
  FROM cdc_invoice.request;
INSERT INTO cdc_invoice.invoice_line (invoice_id, line_no, item_name, amount_excl_tax, tax_rate,
       tax, amount_incl_tax)
SELECT id, 2, 'Item', -20.00, 0.13, -2.60, -22.60 FROM cdc_invoice.invoice WHERE kind = 'red';
ANALYZE cdc_invoice.invoice;
ANALYZE cdc_invoice.invoice_line
"""


def _plan(conn: psycopg.Connection[tuple[object, ...]], query: str, params: object) -> str:
    rows = conn.execute("EXPLAIN " + query, params).fetchall()  # type: ignore[arg-type]
    return "\n".join(str(r[0]) for r in rows)


def test_reds_of_a_blue_invoice_are_found_by_index(installed_dsn: str) -> None:
    """Settling a blue invoice's status and loading its reds' lines read the reds through
    invoice_original_idx, not the 20,000 blue invoices (before schema version 4 both were a
    Seq Scan of the whole invoice table)."""
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        for stmt in HISTORY.split(";\n"):
            conn.execute(stmt)
        settle = _plan(conn, q("settle_blue_status"), {"id": 1})
        reds = _plan(conn, q("load_invoice_lines"), {"reds": True, "id": 1})
        for plan in (settle, reds):
            assert "Seq Scan on invoice" not in plan, plan
            assert "invoice_original_idx" in plan, plan
        # and the answers are right: the blue's one red line; the blue partially reversed
        lines = conn.execute(q("load_invoice_lines"), {"reds": True, "id": 1}).fetchall()
        assert len(lines) == 1 and lines[0][0] == 2
        assert conn.execute(q("settle_blue_status"), {"id": 1}).fetchone() == (
            "partially_reversed",
        )
