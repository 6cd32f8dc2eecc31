"""Recorded invoices are tamper-evident (issue 16; sql/records.sql, migration 0005).

After insert an invoice's number, parties, amounts and lines cannot change, not even through
the daemon's own login; the columns the daemon updates as an invoice lives on (status,
delivery, file URLs, and columns added later) stay updatable through the daemon's real
queries; invoices, lines and events refuse DELETE and TRUNCATE.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from cdc_invoice.db.queries import q

RECORD = """
INSERT INTO cdc_invoice.request (source, order_ref, kind, state, platform_order_no)
VALUES ('shop', 'T-1', 'issue', 'done', 'CITEST000000000001');
INSERT INTO cdc_invoice.invoice (request_id, source, order_ref, seller_id, invoice_number, kind,
       platform_serial, platform_order_no, issued_at, buyer_name, total_excl_tax, total_tax,
       total_incl_tax)
SELECT id, 'shop', 'T-1', 'main', '26330000000000000001', 'blue', 'S1', platform_order_no,
       now(), '杭州示例贸易有限公司', 100.00, 13.00, 113.00
  FROM cdc_invoice.request WHERE order_ref = 'T-1';
INSERT INTO cdc_invoice.invoice_line (invoice_id, line_no, item_name, tax_code, quantity,
       unit_price, amount_excl_tax, tax_rate, tax, amount_incl_tax)
SELECT id, 1, '鼠标', '1090511030000000000', 1, 113.00, 100.00, 0.13, 13.00, 113.00
  FROM cdc_invoice.invoice WHERE order_ref = 'T-1';
"""


@pytest.fixture
def recorded(shop_dsn: str) -> Iterator[tuple[str, int]]:
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute(RECORD)
        row = conn.execute("SELECT id FROM cdc_invoice.invoice WHERE order_ref = 'T-1'").fetchone()
    assert row is not None
    yield shop_dsn, int(row[0])


def refused(dsn: str, statement: str, match: str) -> psycopg.Error:
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error) as info:
        conn.execute(statement)
    assert info.value.sqlstate == "CI006", info.value
    assert match in str(info.value)
    assert info.value.diag.message_hint, "every refusal says what to do instead"
    return info.value


@pytest.mark.parametrize(
    ("assignment", "columns"),
    [
        ("total_incl_tax = 1113.00, total_excl_tax = 1100.00", "total_excl_tax, total_incl_tax"),
        ("buyer_name = 'someone else'", "buyer_name"),
        ("invoice_number = '26330000000000000002'", "invoice_number"),
        ("buyer_tax_number = '91330106MA2B0001XY'", "buyer_tax_number"),
        ("issued_at = issued_at - interval '1 day'", "issued_at"),
    ],
)
def test_an_invoices_number_buyer_and_amounts_cannot_change(
    recorded: tuple[str, int], assignment: str, columns: str
) -> None:
    dsn, _ = recorded
    error = refused(dsn, f"UPDATE cdc_invoice.invoice SET {assignment}", f"{columns} cannot change")
    assert "26330000000000000001" in str(error)
    assert "request_reversal" in (error.diag.message_hint or "")


def test_not_even_the_daemons_login_can_change_an_amount(recorded: tuple[str, int]) -> None:
    dsn, _ = recorded
    name = f"t_daemon_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} IN ROLE cdc_invoice_daemon").format(sql.Identifier(name))
        )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(name)))
            with pytest.raises(
                psycopg.Error, match="total_incl_tax, total_tax cannot change"
            ) as info:
                conn.execute(
                    "UPDATE cdc_invoice.invoice SET total_incl_tax = 1.00, total_tax = 0.00, "
                    "total_excl_tax = 1.00"
                )
            assert info.value.sqlstate == "CI006"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_the_daemons_updates_still_work(recorded: tuple[str, int]) -> None:
    """Every UPDATE of cdc_invoice.invoice in sql/queries.sql, as the daemon runs it."""
    dsn, invoice_id = recorded
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(q("set_delivery_status"), {"id": invoice_id, "status": "sent"})
        conn.execute(
            q("refresh_invoice"),
            {
                "id": invoice_id,
                "pdf_url": "https://x/a.pdf",
                "ofd_url": None,
                "xml_url": None,
                "voided": False,
            },
        )
        conn.execute(q("set_invoice_status"), {"id": invoice_id, "status": "partially_reversed"})
        assert conn.execute(q("settle_blue_status"), {"id": invoice_id}).fetchone() == (
            "partially_reversed",
        )
        # Assigning a frozen column its own value is no change.
        conn.execute("UPDATE cdc_invoice.invoice SET buyer_name = buyer_name, status = 'issued'")
        # A column added later (e.g. by another feature) is not frozen.
        conn.execute("ALTER TABLE cdc_invoice.invoice ADD COLUMN later_feature boolean")
        conn.execute("UPDATE cdc_invoice.invoice SET later_feature = true")
        row = conn.execute(
            "SELECT status, delivery_status, pdf_url, later_feature, total_incl_tax "
            "FROM cdc_invoice.invoice"
        ).fetchone()
    assert row is not None and row[:4] == ("issued", "sent", "https://x/a.pdf", True)
    assert str(row[4]) == "113.00"


def test_records_refuse_delete_and_truncate(recorded: tuple[str, int]) -> None:
    dsn, _ = recorded
    refused(dsn, "DELETE FROM cdc_invoice.invoice", "DELETE refused")
    refused(
        dsn,
        "UPDATE cdc_invoice.invoice_line SET amount_incl_tax = 0, tax = 0, amount_excl_tax = 0",
        "records of issued invoices (UPDATE refused)",
    )
    refused(dsn, "DELETE FROM cdc_invoice.invoice_line", "(DELETE refused)")
    refused(dsn, "TRUNCATE cdc_invoice.invoice_line", "(TRUNCATE refused)")
    refused(dsn, "TRUNCATE cdc_invoice.invoice CASCADE", "(TRUNCATE refused)")
    refused(dsn, "TRUNCATE cdc_invoice.event", "append-only (TRUNCATE refused)")
    refused(dsn, "DELETE FROM cdc_invoice.event", "append-only (DELETE refused)")
    with psycopg.connect(dsn) as conn:
        assert conn.execute(
            "SELECT (SELECT count(*) FROM cdc_invoice.invoice), "
            "(SELECT count(*) FROM cdc_invoice.invoice_line)"
        ).fetchone() == (1, 1)


def test_the_request_lookups_have_indexes(installed_dsn: str) -> None:
    with psycopg.connect(installed_dsn) as conn:
        found = {
            str(r[0])
            for r in conn.execute(
                "SELECT pg_get_indexdef(indexrelid) FROM pg_index "
                "WHERE indrelid = 'cdc_invoice.request'::regclass"
            ).fetchall()
        }
    assert any("(invoice_id)" in d for d in found), found
    assert any("(platform_serial)" in d for d in found), found
