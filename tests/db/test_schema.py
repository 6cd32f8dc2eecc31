"""Install, upgrade, verify, uninstall against a real PostgreSQL."""

from __future__ import annotations

import subprocess

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
        # Today's functions stand in for version 2's; today's report views are left out: they
        # name columns added later (invoice.remark, 0006), and nothing here reads them.
        for name in schema.REPLACEABLE:
            if name not in ("roles.sql", "reports.sql", "archive.sql"):  # later columns/tables
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


def _with_lock_timeout(dsn: str) -> str:
    # A regression (a DROP TRIGGER queued behind the open order transaction) fails fast.
    return psycopg.conninfo.make_conninfo(dsn, options="-c lock_timeout=2s")


def _capture_state(conn: psycopg.Connection[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """The shop's triggers (oid: recreated or not) and its capture function's body."""
    return conn.execute(
        "SELECT t.oid::bigint, t.tgname::text, md5(p.prosrc) FROM pg_trigger t "
        "JOIN pg_proc p ON p.oid = t.tgfoid "
        "WHERE t.tgrelid = 'shop.orders'::regclass AND NOT t.tgisinternal ORDER BY 2"
    ).fetchall()


def test_a_no_op_install_takes_no_lock_on_an_order_table(shop_dsn: str) -> None:
    """The daemons' units run install at every start: at the current version it must not
    re-attach (DROP/CREATE TRIGGER = AccessExclusiveLock behind any open order transaction)."""
    with psycopg.connect(shop_dsn) as conn:
        before = _capture_state(conn)
    with psycopg.connect(shop_dsn) as order_tx:  # an order being edited, not yet committed
        order_tx.execute("UPDATE shop.orders SET created_at = created_at WHERE order_id = 1")
        result = schema.install(_with_lock_timeout(shop_dsn))
        assert result.before == result.after and result.notes == []
        with psycopg.connect(shop_dsn) as other:
            locks = other.execute(
                "SELECT count(*) FROM pg_locks WHERE relation = 'shop.orders'::regclass "
                "AND pid <> %s",
                (order_tx.info.backend_pid,),
            ).fetchone()
            assert locks == (0,)
        order_tx.rollback()
    with psycopg.connect(shop_dsn) as conn:
        assert _capture_state(conn) == before  # same triggers, same function


def test_install_reattaches_when_a_generating_function_changed(shop_dsn: str) -> None:
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        before = _capture_state(conn)
        # As after an upgrade of the package: an installed function differs from this version's.
        body = conn.execute(
            "SELECT pg_get_functiondef('cdc_invoice._check_condition(regclass,text,text)'"
            "::regprocedure)"
        ).fetchone()
        assert body is not None
        conn.execute(str(body[0]).replace("RETURN true;", "RETURN true; -- older"))
    result = schema.install(shop_dsn)
    assert result.notes == ["refreshed capture of 1 attached source(s)"]
    with psycopg.connect(shop_dsn) as conn:
        after = _capture_state(conn)
    assert [r[1:] for r in after] == [r[1:] for r in before]  # same names and body
    assert {r[0] for r in after}.isdisjoint({r[0] for r in before})  # triggers recreated


def _install_version(dsn: str, upto: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for version, name in migrations():
            if version <= upto:
                conn.execute(sql_file(name))
        for name in schema.REPLACEABLE:
            # today's roles, views and archive need later columns and tables (0005-0007)
            if name not in ("roles.sql", "reports.sql", "archive.sql"):
                conn.execute(sql_file(name))


def test_sql_from_version_prints_the_upgrade_a_dba_can_review_and_run(fresh_dsn: str) -> None:
    _install_version(fresh_dsn, 2)
    runner = CliRunner()
    r = runner.invoke(main, ["sql", "--from-version", "1"])
    assert r.exit_code == 0 and "schema version 1 -> " in r.output
    refused = subprocess.run(
        ["psql", fresh_dsn, "-v", "ON_ERROR_STOP=1", "-q"],
        input=r.output,
        text=True,
        capture_output=True,
        check=False,
    )
    assert refused.returncode != 0  # the database is at 2: the script for 1 stops
    assert "is for cdc_invoice schema version 1, the database has 2" in refused.stderr
    assert "--from-version" in refused.stderr  # the HINT

    r = runner.invoke(main, ["sql", "--from-version", "2"])
    assert r.exit_code == 0, r.output
    assert "0003_document_json.sql" in r.output and "0001_initial" not in r.output
    done = subprocess.run(
        ["psql", fresh_dsn, "-v", "ON_ERROR_STOP=1", "-q"],
        input=r.output,
        text=True,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert schema.verify(fresh_dsn) == []  # the same as a fresh install of this version


def test_sql_from_an_unknown_version_says_which_exist() -> None:
    r = CliRunner().invoke(main, ["sql", "--from-version", "99"])
    assert r.exit_code == 2
    assert f"knows schema versions 1 to {schema.latest_version()}" in r.output
    assert "fix: SELECT max(version)" in r.output


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
    assert "refreshed capture" not in r.output  # a no-op install leaves the triggers alone
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


def test_upgrade_to_5_drops_the_guessed_clerk_of_sellers_that_never_issued(fresh_dsn: str) -> None:
    """0006: seller.clerk has no default any more ("clerk … 开票员（数电票时需要传入和开票登录账号
    对应的开票员姓名）", requestBillingNew). A seller that issued with the old default keeps it (the
    platform accepted it); one that never issued loses the guess and is named by the install."""
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        for version, name in migrations():
            if version <= 4:
                conn.execute(sql_file(name))
        conn.execute(
            "INSERT INTO cdc_invoice.seller (seller_id, tax_number, name) VALUES "
            "('issued', '339902999999789113', 'a'), ('never', '339902999999789114', 'b');"
            "INSERT INTO cdc_invoice.seller (seller_id, tax_number, name, clerk) VALUES "
            "('named', '339902999999789115', 'c', '张三'),"
            "('long', '339902999999789116', 'd', repeat('名', 21));"
            "INSERT INTO cdc_invoice.request (source, order_ref, kind, state) "
            "VALUES ('s', '1', 'issue', 'done');"
            "INSERT INTO cdc_invoice.invoice (request_id, source, order_ref, seller_id, "
            "invoice_number, kind, platform_serial, platform_order_no, issued_at, buyer_name, "
            "total_excl_tax, total_tax, total_incl_tax) SELECT id, 's', '1', 'issued', "
            "'26330000000000000001', 'blue', 'S1', 'O1', now(), 'b', 1, 0, 1 "
            "FROM cdc_invoice.request"
        )
    result = schema.install(fresh_dsn)
    assert "migrations/0006_finance.sql" in result.applied
    assert any("seller long, never has no clerk" in note for note in result.notes), result.notes
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        clerks = conn.execute(
            "SELECT seller_id, clerk, show_bank_account FROM cdc_invoice.seller ORDER BY 1"
        ).fetchall()
        assert clerks == [
            ("issued", "开票员", "none"),
            ("long", None, "none"),
            ("named", "张三", "none"),
            ("never", None, "none"),
        ]
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE cdc_invoice.seller SET clerk = repeat('名', 21)")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE cdc_invoice.seller SET show_bank_account = 'all'")


def test_upgrade_to_12_keeps_requests_and_still_refuses_unknown_kinds_and_states(
    fresh_dsn: str,
) -> None:
    """0012: request.kind and .state become domains (PostgreSQL 15 re-parses a table's CHECK
    constraints at every INSERT/UPDATE; a domain's check is prepared once per session). The rows
    and their views survive, no table rewrite happens, and the same values are refused."""
    _install_version(fresh_dsn, 11)
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO cdc_invoice.request (source, order_ref, kind, state) VALUES "
            "('s', '1', 'issue', 'done'), ('s', '2', 'reverse', 'failed'), "
            "('s', '3', 'issue', 'pending')"
        )
        filenode = conn.execute("SELECT pg_relation_filenode('cdc_invoice.request')").fetchone()
    result = schema.install(fresh_dsn)
    assert result.applied == ["migrations/0012_request_domains.sql"]
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT pg_relation_filenode('cdc_invoice.request')").fetchone() == (
            filenode
        )
        assert conn.execute(
            "SELECT order_ref, kind, state FROM cdc_invoice.request ORDER BY order_ref"
        ).fetchall() == [
            ("1", "issue", "done"),
            ("2", "reverse", "failed"),
            ("3", "issue", "pending"),
        ]
        types = conn.execute(
            "SELECT attname, atttypid::regtype::text FROM pg_attribute "
            "WHERE attrelid = 'cdc_invoice.request'::regclass AND attname IN ('kind', 'state') "
            "ORDER BY attname"
        ).fetchall()
        assert types == [
            ("kind", "cdc_invoice.request_kind"),
            ("state", "cdc_invoice.request_state"),
        ]
        # the views dropped by the migration are back (reports.sql, lifecycle.sql)
        views = ("report_backlog", "report_failures", "report_open", "pending_red_slips")
        back = conn.execute(
            "SELECT count(*) FROM unnest(%s::text[]) v "
            "WHERE to_regclass('cdc_invoice.' || v) IS NOT NULL",
            (list(views),),
        ).fetchone()
        assert back == (len(views),)
        with pytest.raises(psycopg.errors.CheckViolation, match="request_kind_check"):
            conn.execute(
                "INSERT INTO cdc_invoice.request (source, order_ref, kind) VALUES ('s', '4', 'x')"
            )
        with pytest.raises(psycopg.errors.CheckViolation, match="request_state_check"):
            conn.execute("UPDATE cdc_invoice.request SET state = 'lost' WHERE order_ref = '1'")
