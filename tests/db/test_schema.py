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


def test_upgrade_to_json_documents_keeps_them_and_refreshes_capture(fresh_dsn: str) -> None:
    """Version 2 stored documents as jsonb and its capture functions built them with
    jsonb_agg: the upgrade keeps every stored document's numbers exactly, and the install's
    reattach switches the attached source to the cheaper json_agg snapshot."""
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        for version, name in migrations():
            if version <= 2:
                conn.execute(sql_file(name))
        for name in schema.REPLACEABLE:
            if name != "archive.sql":  # its tables come with version 5
                conn.execute(sql_file(name))
        conn.execute(sql_file("examples/demo_shop.sql"))
        fn = conn.execute("SELECT capture_fn FROM cdc_invoice.source").fetchone()
        assert fn is not None
        body = str(
            conn.execute(
                "SELECT pg_get_functiondef(%s::regprocedure)", (f"cdc_invoice.{fn[0]}()",)
            ).fetchone()[0]  # type: ignore[index]
        )
        old = (
            body.replace("json_agg(d)", "jsonb_agg(to_jsonb(d))")
            .replace("'[]'::json)", "'[]'::jsonb)")
            .replace("v_doc   json;", "v_doc   jsonb;")
        )
        assert old != body
        conn.execute(old)  # the capture function as version 2 generated it
        conn.execute(
            "INSERT INTO shop.orders (customer_id) VALUES ('C001'), ('C002');"
            "INSERT INTO shop.order_lines (order_id, line_no, sku, quantity, unit_price) "
            "SELECT o, 1, 'P-MOUSE', 2.5, 79.90 FROM generate_series(1, 2) o"
        )
        conn.execute("UPDATE shop.orders SET status = 'shipped' WHERE order_id = 1")
        conn.execute(
            "INSERT INTO cdc_invoice.request (source, order_ref, kind, document) VALUES "
            """('s', 'x', 'issue', '[{"q": 0.1, "p": 9007199254740993, "u": 19.990}]')"""
        )
        before = conn.execute(
            "SELECT order_ref, document::text FROM cdc_invoice.request ORDER BY id"
        ).fetchall()
        assert conn.execute(
            "SELECT format_type(atttypid, NULL) FROM pg_attribute "
            "WHERE attrelid = 'cdc_invoice.request'::regclass AND attname = 'document'"
        ).fetchone() == ("jsonb",)

    result = schema.install(fresh_dsn)
    assert result.before == 2 and result.applied[0] == "migrations/0003_document_json.sql"
    assert "refreshed capture of 1 attached source(s)" in result.notes

    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        after = conn.execute(
            "SELECT order_ref, document::text FROM cdc_invoice.request ORDER BY id"
        ).fetchall()
        assert after == before  # jsonb's text, kept as is: 0.1, 9007199254740993, 19.990
        assert '"u": 19.990' in after[1][1] and "9007199254740993" in after[1][1]
        refreshed = str(
            conn.execute(
                "SELECT pg_get_functiondef(%s::regprocedure)", (f"cdc_invoice.{fn[0]}()",)
            ).fetchone()[0]  # type: ignore[index]
        )
        assert "json_agg(d)" in refreshed and "jsonb_agg" not in refreshed
        conn.execute("UPDATE shop.orders SET status = 'shipped' WHERE order_id = 2")
        row = conn.execute(
            "SELECT pg_typeof(document)::text, json_array_length(document) "
            "FROM cdc_invoice.request WHERE source = 'shop' AND order_ref = '2'"
        ).fetchone()
        assert row is not None and row[0] == "json" and row[1] > 0


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
