"""Least privilege and definer-rights safety, against a real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from cdc_invoice.db.repository import Repository


@pytest.fixture
def login(shop_dsn: str) -> Iterator[object]:
    """login(group_role) -> DSN of a fresh login role that is a member of group_role."""
    made: list[str] = []

    def make(group: str) -> str:
        name = f"t_{group.split('_')[-1]}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(shop_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                    sql.Identifier(name), sql.Identifier(group)
                )
            )
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(conn.info.dbname), sql.Identifier(name)
                )
            )
        made.append(name)
        return psycopg.conninfo.make_conninfo(shop_dsn, user=name)

    yield make
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def denied(dsn: str, query: str) -> None:
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(query)


async def test_daemon_role_cannot_touch_the_inventory(shop_dsn: str, login) -> None:  # type: ignore[no-untyped-def]
    dsn = login("cdc_invoice_daemon")
    denied(dsn, "SELECT * FROM shop.orders")
    denied(dsn, "UPDATE shop.orders SET status = 'x'")
    denied(dsn, "SELECT * FROM shop.customers")
    denied(dsn, "DELETE FROM cdc_invoice.event")
    # …and can do its own work: claim a request.
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO shop.orders (customer_id, status) VALUES ('C001', 'shipped')")
    repo = await Repository.open(dsn, "t-daemon", size=1)
    try:
        await repo.pool.wait()
        claimed = await repo.claim(10, 30)
        assert len(claimed) == 1
    finally:
        await repo.close()


def test_operator_can_request_but_not_write_tables(shop_dsn: str, login) -> None:  # type: ignore[no-untyped-def]
    dsn = login("cdc_invoice_operator")
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match="invoice '2600' not found"):
            conn.execute("SELECT cdc_invoice.request_reversal('2600', 'sales_return')")
        assert conn.execute("SELECT count(*) FROM cdc_invoice.report_failures").fetchone() == (0,)
    denied(dsn, "UPDATE cdc_invoice.invoice SET status = 'voided'")
    denied(
        dsn, "INSERT INTO cdc_invoice.request (source, order_ref, kind) VALUES ('s', '1', 'issue')"
    )
    denied(dsn, "SELECT * FROM shop.orders")


def test_reader_reads_reports_only(shop_dsn: str, login) -> None:  # type: ignore[no-untyped-def]
    dsn = login("cdc_invoice_reader")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM cdc_invoice.report_daily").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM cdc_invoice.report_register").fetchone() == (0,)
    denied(dsn, "SELECT cdc_invoice.request_reversal('1', '1')")
    denied(dsn, "SELECT * FROM cdc_invoice.request")
    denied(dsn, "SELECT * FROM cdc_invoice.provider_token")
    denied(dsn, "SELECT cdc_invoice.retry_failed()")


def test_definer_functions_ignore_a_hostile_search_path(shop_dsn: str, login) -> None:  # type: ignore[no-untyped-def]
    dsn = login("cdc_invoice_operator")
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA evil")
        conn.execute("GRANT USAGE ON SCHEMA evil TO PUBLIC")
        # Shadows what the functions call, if they resolved names through the caller's path.
        conn.execute("CREATE FUNCTION evil.lower(text) RETURNS text LANGUAGE sql AS $$SELECT '1'$$")
        conn.execute("CREATE FUNCTION evil.btrim(text) RETURNS text LANGUAGE sql AS $$SELECT '1'$$")
        conn.execute("CREATE TABLE evil.invoice (invoice_number text)")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET search_path = evil, pg_catalog, public")
        with pytest.raises(psycopg.Error, match="unknown void reason 'nope'"):
            conn.execute("SELECT cdc_invoice.request_void('x', 'nope')")
        with pytest.raises(psycopg.Error, match="invoice 'x' not found"):
            conn.execute("SELECT cdc_invoice.request_reversal('x', 'sales_return')")
    with psycopg.connect(shop_dsn) as conn:
        rows = conn.execute(
            "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'cdc_invoice'::regnamespace "
            "AND p.prosecdef AND NOT coalesce(p.proconfig::text LIKE '%search_path%', false)"
        ).fetchall()
        assert rows == [], "every SECURITY DEFINER function pins search_path"
