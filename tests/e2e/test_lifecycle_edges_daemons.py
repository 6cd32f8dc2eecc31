"""Issue 13, holes 8 and 9, with real daemon and sandbox processes: one daemon per daemon_id
(SIGKILL frees it), no daemon on a copy of the database until it is retagged, and a daemon
takes only the work of sellers it has credentials for (`health` and `status` say so)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cdc_invoice import demo, harness

StartDaemon = Callable[..., harness.Proc]


def wait_for(what: Callable[[], bool], timeout: float, message: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, message()
        time.sleep(0.1)


def registered_pid(dsn: str, daemon_id: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid FROM cdc_invoice.daemon WHERE daemon_id = %s AND stopped_at IS NULL",
            (daemon_id,),
        ).fetchone()
        return int(row[0]) if row else None


def exited(proc: harness.Proc, timeout: float = 30.0) -> int:
    return proc.popen.wait(timeout)


def test_a_second_daemon_with_the_same_daemon_id_is_refused_until_the_first_dies(
    shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon
) -> None:
    first = start_daemon(shop_dsn, sandbox, name="first", daemon_id="same")
    wait_for(
        lambda: registered_pid(shop_dsn, "same") == first.popen.pid, 30, lambda: first.output()
    )
    second = start_daemon(shop_dsn, sandbox, name="second", daemon_id="same")
    assert exited(second) == 2, second.output()
    assert "another daemon with daemon_id 'same' is running" in second.output()
    assert first.alive() and registered_pid(shop_dsn, "same") == first.popen.pid

    first.kill()  # SIGKILL: no clean stop, the session's lock dies with it
    third = start_daemon(shop_dsn, sandbox, name="third", daemon_id="same")
    wait_for(
        lambda: registered_pid(shop_dsn, "same") == third.popen.pid, 30, lambda: third.output()
    )
    demo.ship_orders(shop_dsn, 2)
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        wait_for(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM cdc_invoice.request WHERE state = 'done'"
                ).fetchone()
                == (2,)
            ),
            60,
            lambda: third.output()[-3000:],
        )


@pytest.fixture
def copy_of_shop(admin_dsn: str, shop_dsn: str) -> Iterator[str]:
    """A clone of the shop database, as a restore into staging makes it."""
    name = f"cdc_copy_{uuid.uuid4().hex[:8]}"
    source = psycopg.conninfo.conninfo_to_dict(shop_dsn)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(str(source))
            )
        )
    yield psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_the_daemon_refuses_a_copy_of_the_database_until_it_is_retagged(
    copy_of_shop: str, sandbox: harness.Sandbox, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    refused = start_daemon(copy_of_shop, sandbox, name="on-copy", daemon_id="staging")
    assert exited(refused) == 2, refused.output()
    assert "this database is a copy" in refused.output()
    assert "SELECT cdc_invoice.retag()" in refused.output()
    assert registered_pid(copy_of_shop, "staging") is None
    # reconcile drives unfinished requests through the daemon's code: refused as well
    config = harness.write_config(tmp_path / "copy.toml", dsn=copy_of_shop, sandbox=sandbox)
    reconcile = subprocess.run(
        [sys.executable, "-m", "cdc_invoice", "reconcile", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert reconcile.returncode == 2, reconcile.stdout + reconcile.stderr
    assert "this database is a copy" in reconcile.stdout + reconcile.stderr
    health = subprocess.run(
        [sys.executable, "-m", "cdc_invoice", "health", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert health.returncode == 1, health.stdout + health.stderr
    [check] = [c for c in json.loads(health.stdout)["checks"] if c["name"] == "installation"]
    assert check["status"] == "fail" and "SELECT cdc_invoice.retag()" in check["fix"]
    with psycopg.connect(copy_of_shop, autocommit=True) as conn:
        conn.execute("SELECT cdc_invoice.retag()")
    started = start_daemon(copy_of_shop, sandbox, name="retagged", daemon_id="staging")
    wait_for(
        lambda: registered_pid(copy_of_shop, "staging") == started.popen.pid,
        30,
        lambda: started.output(),
    )


OTHER_SELLER = """
INSERT INTO cdc_invoice.seller (seller_id, tax_number, name)
VALUES ('other', '339902999999789114', '另一家销方');
CREATE SCHEMA otherco;
CREATE TABLE otherco.orders (order_id bigint PRIMARY KEY, status text NOT NULL);
CREATE VIEW otherco.doc AS
  SELECT o.order_id AS order_ref, 'C001' AS customer_ref, 1 AS line_no, 'P-TEA' AS item_ref,
         '龙井茶' AS item_name, 1 AS quantity, 268.00 AS unit_price
    FROM otherco.orders o;
SELECT cdc_invoice.attach('otherco', 'otherco.orders', 'order_id',
                          $$NEW.status = 'shipped'$$, 'otherco.doc', 'other');
"""


def test_a_daemon_takes_only_the_work_of_its_sellers_and_health_and_status_say_so(
    shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute(OTHER_SELLER)
        conn.execute("INSERT INTO otherco.orders VALUES (1, 'shipped'), (2, 'shipped')")
    daemon = start_daemon(shop_dsn, sandbox, name="main-only", daemon_id="main-only")
    demo.ship_orders(shop_dsn, 3)
    with psycopg.connect(shop_dsn, autocommit=True) as conn:

        def states(source: str) -> list[tuple[str, int]]:
            return [
                (str(r[0]), int(r[1]))
                for r in conn.execute(
                    "SELECT state, attempt FROM cdc_invoice.request WHERE source = %s ORDER BY id",
                    (source,),
                ).fetchall()
            ]

        wait_for(
            lambda: [s for s, _ in states("shop")] == ["done"] * 3,
            60,
            lambda: f"{states('shop')}\n{daemon.output()[-3000:]}",
        )
        time.sleep(1.5)  # several claim rounds (poll_interval 0.5 s)
        # never claimed: the daemon cannot sign for seller 'other'
        assert states("otherco") == [("pending", 0)] * 2, daemon.output()[-3000:]
        sellers = conn.execute(
            "SELECT sellers FROM cdc_invoice.daemon WHERE daemon_id = 'main-only'"
        ).fetchone()
        assert sellers == (["main"],)

    status = subprocess.run(
        [sys.executable, "-m", "cdc_invoice", "status", "--dsn", shop_dsn],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert status.returncode == 0, status.stderr
    assert "Work no live daemon can take" in status.stdout, status.stdout
    unserved = [line for line in status.stdout.splitlines() if "otherco" in line]
    assert any("other" in line and " 2 " in line for line in unserved), status.stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "cdc_invoice", "status", "--dsn", shop_dsn, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    data = json.loads(as_json.stdout)
    assert [(d["daemon_id"], d["sellers"]) for d in data["daemons"]] == [("main-only", ["main"])]
    assert [(u["seller_id"], u["source"], u["requests"]) for u in data["unserved"]] == [
        ("other", "otherco", 2)
    ]

    config = harness.write_config(tmp_path / "health.toml", dsn=shop_dsn, sandbox=sandbox)
    health = subprocess.run(
        [sys.executable, "-m", "cdc_invoice", "health", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert health.returncode == 1, health.stdout + health.stderr
    assert "no credentials in this config for seller 'other' (sources: otherco)" in health.stdout
    assert "[provider.credentials.other]" in health.stdout
