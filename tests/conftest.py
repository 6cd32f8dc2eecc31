"""Shared fixtures. Database tests use a real PostgreSQL, chosen in this order:

1. CDC_INVOICE_TEST_DSN (an admin DSN: tests create and drop their own databases), e.g.
   CDC_INVOICE_TEST_DSN=postgresql://postgres@127.0.0.1:5432/postgres
2. a testcontainers PostgreSQL, when CDC_INVOICE_TEST_DOCKER=1 and a Docker engine answers;
3. an embedded PostgreSQL (pgserver) in a temporary directory: no server needed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from repo_guard import OutsideReads

from cdc_invoice.db import schema

_OUTSIDE_READS = OutsideReads()
sys.addaudithook(_OUTSIDE_READS.hook)

for _name in list(os.environ):
    # The environment of the developer's shell must not configure the code under test.
    if (
        _name.startswith("CDC_INVOICE_")
        and _name not in ("CDC_INVOICE_TEST_DSN", "CDC_INVOICE_TEST_DOCKER")
        and not _name.startswith("CDC_INVOICE_MODEL_")  # test_lifecycle_model.py's budget
    ):
        del os.environ[_name]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "db" in parts:
            item.add_marker(pytest.mark.db)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.db)
        if "conformance" in parts:
            item.add_marker(pytest.mark.conformance)


@pytest.fixture(autouse=True)
def _reads_stay_in_the_repository() -> Iterator[None]:
    """Fail a test that opened a file outside the repository (see tests/repo_guard.py)."""
    _OUTSIDE_READS.take()  # opens by session fixtures set up before this test are not its own
    yield
    outside = _OUTSIDE_READS.take()
    if outside:
        pytest.fail(
            "this test read outside the repository (a fresh clone has nothing beside it): "
            + ", ".join(sorted(set(outside))[:5])
            + "; vendor the file into the repository or write it under tmp_path"
        )


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    dsn = os.environ.get("CDC_INVOICE_TEST_DSN")
    if dsn:
        yield dsn
        return
    if os.environ.get("CDC_INVOICE_TEST_DOCKER") == "1":
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15", driver=None) as pg:
            yield pg.get_connection_url()
        return
    from cdc_invoice.db import embedded

    # A short path: the server's unix socket lives in it (107-byte limit).
    datadir = Path(tempfile.mkdtemp(prefix="cdcpg-", dir="/tmp"))
    dsn, server = embedded.start(datadir / "d")
    try:
        yield dsn
    finally:
        server.cleanup()
        shutil.rmtree(datadir, ignore_errors=True)


def _create_db(admin: str, name: str, template: str | None = None) -> str:
    with psycopg.connect(admin, autocommit=True) as conn:
        q = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            q = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        conn.execute(q)
    dsn = psycopg.conninfo.make_conninfo(admin, dbname=name)
    if template:
        retag_clone(dsn)
    return dsn


def retag_clone(dsn: str) -> None:
    """A clone of the template database is a copy: the daemon refuses to run on it until it has
    a tag of its own, as a DBA gives a restored copy (docs/dba-guide.md)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT cdc_invoice.retag()")


def _drop_db(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def template_db(admin_dsn: str) -> Iterator[str]:
    """A database with the current schema installed, cloned by ``installed_dsn``."""
    name = f"cdc_tpl_{uuid.uuid4().hex[:8]}"
    dsn = _create_db(admin_dsn, name)
    schema.install(dsn)
    yield name
    _drop_db(admin_dsn, name)


@pytest.fixture
def fresh_dsn(admin_dsn: str) -> Iterator[str]:
    """An empty database of its own."""
    name = f"cdc_t_{uuid.uuid4().hex[:10]}"
    dsn = _create_db(admin_dsn, name)
    yield dsn
    _drop_db(admin_dsn, name)


@pytest.fixture
def installed_dsn(admin_dsn: str, template_db: str) -> Iterator[str]:
    """A database of its own with cdc_invoice installed."""
    name = f"cdc_t_{uuid.uuid4().hex[:10]}"
    dsn = _create_db(admin_dsn, name, template=template_db)
    yield dsn
    _drop_db(admin_dsn, name)


@pytest.fixture
def shop_dsn(installed_dsn: str) -> str:
    """cdc_invoice installed plus the demo shop, attached as source 'shop'."""
    from cdc_invoice.db.queries import sql_file

    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute(sql_file("examples/demo_shop.sql"))
    return installed_dsn
