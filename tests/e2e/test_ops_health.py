"""`cdc-invoice health` against a real PostgreSQL and the sandbox platform over HTTP."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner

from cdc_invoice import demo, harness
from cdc_invoice.cli import main

StartDaemon = Callable[..., harness.Proc]


def health(config: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, ["health", "--config", str(config), "--json", *extra])
    return result.exit_code, json.loads(result.output)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_healthy_before_and_after_the_daemon_fetched_a_token(
    shop_dsn: str, sandbox: harness.Sandbox, tmp_path: Path, start_daemon: StartDaemon
) -> None:
    config = harness.write_config(tmp_path / "c.toml", dsn=shop_dsn, sandbox=sandbox)
    code, report = health(config)
    assert code == 0, report
    checks = by_name(report)
    assert report["status"] == "ok"
    assert list(checks) == [
        "database",
        "schema",
        "seller clerk",
        "installation",
        "sellers",
        "listen",
        "quota",
        "token main",
        "platform main",
    ]
    assert "bound to this database" in checks["installation"]["detail"]
    assert checks["sellers"]["status"] == "ok"
    assert checks["quota"]["status"] == "ok"
    assert "primary" in checks["database"]["detail"]
    assert checks["listen"]["status"] == "ok" and checks["listen"]["seconds"] < 5
    # No token yet, and the check must not fetch one (50 per 30 days): the platform answers
    # "token invalid", which still proves it is there.
    assert "070301" in checks["platform main"]["detail"]
    assert checks["token main"]["detail"].startswith("0/50 token fetches")
    with psycopg.connect(shop_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM cdc_invoice.provider_token").fetchone() == (0,)

    start_daemon(shop_dsn, sandbox)
    demo.ship_orders(shop_dsn, 1)
    deadline = time.monotonic() + 30
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        while conn.execute("SELECT count(*) FROM cdc_invoice.invoice").fetchone() != (1,):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    code, report = health(config)
    checks = by_name(report)
    assert code == 0, report
    # With the shared token (decrypted with the app secret) the probe query is answered:
    # "not found" for its random order number.
    assert "query answered E9500 (token valid)" in checks["platform main"]["detail"]
    assert checks["token main"]["detail"].startswith(
        "1/50 token fetches in 30 days; token valid until"
    )
    with psycopg.connect(shop_dsn) as conn:
        fetched = conn.execute("SELECT fetch_log FROM cdc_invoice.provider_token").fetchone()
    assert fetched is not None and len(fetched[0]) == 1  # the health checks fetched none

    table = CliRunner().invoke(main, ["health", "--config", str(config)], env={"COLUMNS": "200"})
    assert table.exit_code == 0
    assert "overall: ok" in table.output and "NOTIFY round trip" in table.output


def test_wrong_secret_fails_with_the_fix(
    shop_dsn: str, sandbox: harness.Sandbox, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-secret"
    harness.write_secret(wrong, "not-the-secret")
    config = harness.write_config(tmp_path / "c.toml", dsn=shop_dsn, sandbox=sandbox)
    config.write_text(config.read_text().replace(str(sandbox.secret_file), str(wrong)))
    code, report = health(config)
    assert code == 1 and report["status"] == "fail"
    platform = by_name(report)["platform main"]
    assert platform["status"] == "fail" and "070601" in platform["detail"]
    assert "app_secret" in platform["fix"]


def test_unreachable_platform_and_database(
    shop_dsn: str, sandbox: harness.Sandbox, tmp_path: Path
) -> None:
    port = free_port()
    config = harness.write_config(tmp_path / "c.toml", dsn=shop_dsn, sandbox=sandbox)
    config.write_text(config.read_text().replace(sandbox.url, f"http://127.0.0.1:{port}"))
    code, report = health(config)
    checks = by_name(report)
    assert code == 1
    assert checks["database"]["status"] == "ok" and checks["listen"]["status"] == "ok"
    assert checks["platform main"]["status"] == "fail"
    assert "cannot reach 127.0.0.1" in checks["platform main"]["detail"]

    no_db = harness.write_config(
        tmp_path / "d.toml",
        dsn=f"host=127.0.0.1 port={port} dbname=x connect_timeout=2",
        sandbox=sandbox,
    )
    code, report = health(no_db)
    checks = by_name(report)
    assert code == 1
    assert checks["database"]["status"] == "fail" and "fix" in checks["database"]
    assert "database.dsn" in checks["database"]["fix"]
    assert checks["schema"]["detail"] == "not checked: no database"
    # The platform is still probed: an operator learns both at once.
    assert checks["platform main"]["status"] == "fail"
    assert "not checked: no database" in checks["platform main"]["detail"]


def test_schema_not_installed_and_bad_config(
    fresh_dsn: str, sandbox: harness.Sandbox, tmp_path: Path
) -> None:
    config = harness.write_config(tmp_path / "c.toml", dsn=fresh_dsn, sandbox=sandbox)
    code, report = health(config)
    checks = by_name(report)
    assert code == 1
    assert checks["schema"]["status"] == "fail" and "cdc-invoice install" in checks["schema"]["fix"]
    assert checks["listen"]["status"] == "ok"  # LISTEN needs no schema
    assert "not checked: the schema is not usable" in checks["platform main"]["detail"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nconcurrency = 0\n")
    code, report = health(bad)
    assert code == 1 and report["checks"][0]["name"] == "config"
    assert "daemon.concurrency" in report["checks"][0]["detail"]


def test_a_seller_without_clerk_fails_health_with_the_update(
    shop_dsn: str, sandbox: harness.Sandbox, tmp_path: Path
) -> None:
    # the clerk has no default: "clerk … 开票员（数电票时需要传入和开票登录账号对应的开票员姓名）"
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute("UPDATE cdc_invoice.seller SET clerk = NULL")
    config = harness.write_config(tmp_path / "c.toml", dsn=shop_dsn, sandbox=sandbox)
    code, report = health(config)
    check = by_name(report)["seller clerk"]
    assert code == 1 and check["status"] == "fail"
    assert check["detail"].startswith("seller main has no clerk (开票人)")
    assert (
        check["fix"]
        == "UPDATE cdc_invoice.seller SET clerk = '<开票员姓名>' WHERE seller_id = 'main';"
    )
