"""Per-database role names (issue 16): roles are cluster-wide, so a database installed with
`--role-prefix` gets roles of its own and the default cdc_invoice_* roles get nothing in it."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from cdc_invoice.cli import main
from cdc_invoice.db import schema
from cdc_invoice.errors import ConfigError

KINDS = ("daemon", "operator", "reader")


@pytest.fixture
def prefix(fresh_dsn: str) -> Iterator[str]:
    """A unique prefix; its roles are dropped afterwards (with their grants in fresh_dsn)."""
    chosen = f"t{uuid.uuid4().hex[:6]}_invoice_"
    yield chosen
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        for kind in KINDS:
            role = sql.Identifier(chosen + kind)
            if conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (chosen + kind,)
            ).fetchone():
                conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
                conn.execute(sql.SQL("DROP ROLE {}").format(role))


def usage(conn: psycopg.Connection[tuple[object, ...]], role: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s) "
        "AND has_schema_privilege(%s, 'cdc_invoice', 'USAGE')",
        (role, role),
    ).fetchone()
    return bool(row and row[0])


def test_install_with_a_role_prefix_gives_the_database_roles_of_its_own(
    fresh_dsn: str, prefix: str
) -> None:
    r = CliRunner().invoke(main, ["install", "--dsn", fresh_dsn, "--role-prefix", prefix])
    assert r.exit_code == 0, r.output
    with psycopg.connect(fresh_dsn) as conn:
        for kind in KINDS:
            assert usage(conn, prefix + kind), kind
            assert not usage(conn, "cdc_invoice_" + kind), kind  # the cluster-wide defaults
        assert conn.execute("SELECT role_prefix FROM cdc_invoice.installation").fetchone() == (
            prefix,
        )
        checks = conn.execute(
            "SELECT has_table_privilege(%(r)s, 'cdc_invoice.report_daily', 'SELECT'), "
            "has_table_privilege(%(r)s, 'cdc_invoice.pending_red_slips', 'SELECT'), "
            "has_function_privilege(%(o)s, 'cdc_invoice.retry(bigint)', 'EXECUTE'), "
            "pg_has_role(%(o)s, %(r)s, 'MEMBER'), "
            "has_table_privilege(%(d)s, 'cdc_invoice.request', 'UPDATE'), "
            "has_table_privilege(%(r)s, 'cdc_invoice.request', 'SELECT')",
            {"r": prefix + "reader", "o": prefix + "operator", "d": prefix + "daemon"},
        ).fetchone()
    assert checks == (True, True, True, True, True, False)
    # Later installs keep the prefix without being told again.
    again = schema.install(fresh_dsn)
    assert again.before == again.after
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute("SELECT role_prefix FROM cdc_invoice.installation").fetchone() == (
            prefix,
        )


def test_the_prefix_is_chosen_once(fresh_dsn: str, prefix: str) -> None:
    schema.install(fresh_dsn, role_prefix=prefix)
    with pytest.raises(psycopg.Error) as info:
        schema.install(fresh_dsn, role_prefix="other_invoice_")
    assert info.value.sqlstate == "CI006"
    assert f"installed with role prefix '{prefix}'" in str(info.value)
    assert "first install" in (info.value.diag.message_hint or "")


def test_a_bad_prefix_is_refused_before_connecting() -> None:
    with pytest.raises(ConfigError, match="role prefix 'Bad-Prefix' is not usable"):
        schema.install("host=/nonexistent dbname=x", role_prefix="Bad-Prefix")
    r = CliRunner().invoke(main, ["sql", "--role-prefix", "x;DROP"])
    assert r.exit_code == 2 and "fix: lower-case letters" in r.output


def test_the_printed_install_script_honours_the_prefix(fresh_dsn: str, prefix: str) -> None:
    r = CliRunner().invoke(main, ["sql", "--role-prefix", prefix])
    assert r.exit_code == 0
    done = subprocess.run(
        ["psql", fresh_dsn, "-v", "ON_ERROR_STOP=1", "-q"],
        input=r.output,
        text=True,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with psycopg.connect(fresh_dsn) as conn:
        assert usage(conn, prefix + "daemon")
        assert not usage(conn, "cdc_invoice_daemon")
