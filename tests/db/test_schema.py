"""Install, upgrade, verify, uninstall against a real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest
from click.testing import CliRunner

from cdc_invoice.cli import main
from cdc_invoice.db import schema
from cdc_invoice.db.queries import migrations, sql_file
from cdc_invoice.errors import SchemaNotInstalled, SchemaVersionMismatch


def test_install_twice_is_a_no_op(fresh_dsn: str) -> None:
    first = schema.install(fresh_dsn)
    assert first.before is None
    with psycopg.connect(fresh_dsn) as conn:
        before = schema.catalogue(conn, "cdc_invoice")
    second = schema.install(fresh_dsn)
    assert (second.before, second.applied) == (second.after, [])
    with psycopg.connect(fresh_dsn) as conn:
        assert schema.catalogue(conn, "cdc_invoice") == before
        assert conn.execute("SELECT count(*) FROM cdc_invoice.schema_version").fetchone() == (
            schema.latest_version(),
        )


def test_schema_sql_and_migrations_give_the_same_catalogue(
    fresh_dsn: str, installed_dsn: str
) -> None:
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        for _, name in migrations():
            conn.execute(sql_file(name))
        for name in schema.REPLACEABLE:
            conn.execute(sql_file(name))
        via_migrations = schema.catalogue(conn, "cdc_invoice")
    with psycopg.connect(installed_dsn) as conn:
        via_schema = schema.catalogue(conn, "cdc_invoice")
    assert len(via_schema) > 50
    assert schema.diff_catalogues(via_migrations, via_schema) == []


def test_upgrade_from_version_1_with_data(fresh_dsn: str, installed_dsn: str) -> None:
    """A version-1 install with data gets only the later migrations, keeps its rows, and ends
    with the same catalogue as a fresh install."""
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute(sql_file("migrations/0001_initial.sql"))
        conn.execute(
            "INSERT INTO cdc_invoice.request (source, order_ref, kind) VALUES ('s', '1', 'issue')"
        )
    result = schema.install(fresh_dsn)
    assert (result.before, result.after) == (1, schema.latest_version())
    assert result.applied == [name for v, name in migrations() if v > 1]
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute("SELECT order_ref FROM cdc_invoice.request").fetchall() == [("1",)]
        upgraded = schema.catalogue(conn, "cdc_invoice")
    with psycopg.connect(installed_dsn) as conn:
        fresh = schema.catalogue(conn, "cdc_invoice")
    assert schema.diff_catalogues(upgraded, fresh) == []


def test_newer_schema_is_refused(installed_dsn: str) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO cdc_invoice.schema_version VALUES (999, 'future')")
        with pytest.raises(SchemaVersionMismatch, match="newer"):
            schema.install(installed_dsn)
        with pytest.raises(SchemaVersionMismatch, match="upgrade the cdc-invoice package"):
            schema.check_version(conn)


def test_check_version_on_empty_database(fresh_dsn: str) -> None:
    with psycopg.connect(fresh_dsn) as conn, pytest.raises(SchemaNotInstalled) as exc:
        schema.check_version(conn)
    assert "cdc-invoice install" in str(exc.value)


def test_verify_reports_drift_and_changes_nothing(installed_dsn: str) -> None:
    assert schema.verify(installed_dsn) == []
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute("DROP INDEX cdc_invoice.request_failed_idx")
        conn.execute("ALTER TABLE cdc_invoice.invoice ADD COLUMN note text")
        conn.execute(
            "CREATE OR REPLACE FUNCTION cdc_invoice.retry_failed(source text DEFAULT NULL) "
            "RETURNS bigint LANGUAGE sql AS 'SELECT 0::bigint'"
        )
    problems = schema.verify(installed_dsn)
    assert any(p.startswith("missing index request_failed_idx") for p in problems), problems
    assert any(p.startswith("unexpected column invoice.note") for p in problems), problems
    assert any(p.startswith("changed function retry_failed") for p in problems), problems
    with psycopg.connect(installed_dsn) as conn:  # verify rolled its scratch install back
        assert conn.execute(
            "SELECT to_regnamespace('cdc_invoice_verify_installed')"
        ).fetchone() == (None,)
        assert conn.execute("SELECT to_regclass('cdc_invoice.request_failed_idx')").fetchone() == (
            None,
        )


def test_sql_command_prints_an_installable_script(fresh_dsn: str) -> None:
    result = CliRunner().invoke(main, ["sql"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("-- cdc-invoice install script")
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute(result.output)
    assert schema.verify(fresh_dsn) == []


def test_cli_install_verify_uninstall(shop_dsn: str) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["install", "--dsn", shop_dsn])
    assert r.exit_code == 0 and "is current" in r.output, r.output
    assert "refreshed capture of 1 attached source(s)" in r.output
    r = runner.invoke(main, ["verify", "--dsn", shop_dsn])
    assert r.exit_code == 0, r.output
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute("DROP VIEW cdc_invoice.report_register")
    r = runner.invoke(main, ["verify", "--dsn", shop_dsn])
    assert r.exit_code == 1 and "missing view report_register" in r.output
    r = runner.invoke(main, ["uninstall", "--dsn", shop_dsn])
    assert r.exit_code != 0 and "--yes" in r.output
    r = runner.invoke(main, ["uninstall", "--dsn", shop_dsn, "--yes"])
    assert r.exit_code == 0 and "detached: shop" in r.output, r.output
    with psycopg.connect(shop_dsn) as conn:
        assert conn.execute("SELECT to_regnamespace('cdc_invoice')").fetchone() == (None,)
        triggers = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'shop.orders'::regclass"
            " AND NOT tgisinternal"
        ).fetchone()
        assert triggers == (0,)
        # The shop keeps working without us.
        conn.execute("UPDATE shop.orders SET status = 'shipped'")


def test_cli_error_points_at_the_fix(fresh_dsn: str) -> None:
    r = CliRunner().invoke(main, ["verify", "--dsn", fresh_dsn])
    assert r.exit_code == 1
    assert "run `cdc-invoice install`" in r.output
