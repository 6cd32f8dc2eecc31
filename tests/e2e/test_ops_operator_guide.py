"""The operator guide does what it says, against a running daemon and the sandbox platform."""

from __future__ import annotations

import contextlib
import importlib.util
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from cdc_invoice import demo, harness

GUIDE = Path(__file__).parents[2] / "docs" / "operator-guide.md"

# The block runner of the finance guide's test (tests/db is not a package).
_spec = importlib.util.spec_from_file_location(
    "ops_guides_runner", Path(__file__).parents[1] / "db" / "test_ops_finance_guide.py"
)
assert _spec is not None and _spec.loader is not None
_runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_runner)


@contextlib.contextmanager
def login(dsn: str, *groups: str) -> Iterator[str]:
    """A fresh login role in ``groups`` (the roles the guide names); its DSN."""
    name = f"op_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                sql.Identifier(name), sql.SQL(", ").join(map(sql.Identifier, groups))
            )
        )
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(conn.info.dbname), sql.Identifier(name)
            )
        )
    try:
        yield psycopg.conninfo.make_conninfo(dsn, user=name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_every_command_of_the_operator_guide_works(
    shop_dsn: str, sandbox: harness.Sandbox, tmp_path: Path
) -> None:
    with (
        login(shop_dsn, "cdc_invoice_daemon") as daemon_dsn,
        login(shop_dsn, "cdc_invoice_daemon", "cdc_invoice_operator") as operator_dsn,
    ):
        run_the_guide(shop_dsn, daemon_dsn, operator_dsn, sandbox, tmp_path)


def run_the_guide(
    shop_dsn: str, daemon_dsn: str, operator_dsn: str, sandbox: harness.Sandbox, tmp_path: Path
) -> None:
    """The daemon and the guide's $CONFIG use a cdc_invoice_daemon login; the operator's $DSN
    a login with cdc_invoice_daemon and cdc_invoice_operator, as the guide says."""
    config = harness.write_config(
        tmp_path / "cdc-invoice.toml",
        dsn=daemon_dsn,
        sandbox=sandbox,
        daemon={"metrics_listen": "127.0.0.1:0"},
    )
    daemon = harness.start_daemon(config)
    try:
        with psycopg.connect(shop_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO shop.orders (customer_id, status) VALUES ('C003', 'shipped')")
        demo.ship_orders(shop_dsn, 3)
        deadline = time.monotonic() + 60
        with psycopg.connect(shop_dsn, autocommit=True) as conn:
            while conn.execute(
                "SELECT count(*) FROM cdc_invoice.request WHERE state IN ('done', 'failed')"
            ).fetchone() != (4,):
                assert time.monotonic() < deadline, daemon.output()[-2000:]
                time.sleep(0.1)

        out = _runner.run_blocks(GUIDE, operator_dsn, tmp_path, env={"CONFIG": str(config)})
        status = _runner.output_of(out, 'cdc-invoice status --dsn "$DSN"\ncdc-invoice status')
        assert "{'last_1m': 3, 'last_5m': 3, 'last_15m': 3}" in status
        assert "Failures by reason" in status and "live" in status
        retried = _runner.output_of(out, "cdc-invoice retry --all --source shop")
        assert "1 request(s) queued again" in retried
        assert (tmp_path / "open-requests.csv").read_text().startswith("request_id,source,")
        quota = _runner.output_of(out, "next_fetch_allowed_from")
        assert sandbox.app_key in quota
        # Section 7: the peak-load test runs against this daemon and the sandbox.
        load = _runner.output_of(out, "cdc-invoice loadtest")
        assert "20/20" in load and "invoices recorded" in load, load

        # Every metric the daemon exports is in the guide's table.
        url = re.search(r"metrics at (http://\S+)/metrics", daemon.output())
        assert url, daemon.output()
        text = httpx.get(url.group(1) + "/metrics", timeout=10).text
        guide = GUIDE.read_text(encoding="utf-8")
        names = {
            f.name
            for f in text_string_to_metric_families(text)
            if f.name.startswith("cdc_invoice_")
        }
        assert len(names) > 25
        assert sorted(n for n in names if f"`{n}" not in guide) == []
    finally:
        daemon.stop()
