"""Issue 18, end to end with real processes: PostgreSQL + `cdc-invoice sandbox` + `cdc-invoice run`.

Invoices (blue and red) are issued through the daemon; its archiver fetches their XML, PDF and
OFD from the sandbox's links; `cdc-invoice archive verify` finds a tampered file; `archive export`
writes a month with its index for the auditors.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cdc_invoice import demo, harness
from cdc_invoice.archive import check

StartDaemon = Callable[..., harness.Proc]


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc_invoice", *args, "--dsn", dsn],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def wait_files(dsn: str, n: int, daemon: harness.Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM cdc_invoice.invoice_file").fetchone()
            if row == (n,):
                return
            assert time.monotonic() < deadline, f"{row} files of {n}:\n{daemon.output()[-3000:]}"
            time.sleep(0.2)


def wait_requests(dsn: str, kind: str, n: int, daemon: harness.Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while conn.execute(
            "SELECT count(*) FROM cdc_invoice.request WHERE kind = %s AND state = 'done'", (kind,)
        ).fetchone() != (n,):
            if time.monotonic() > deadline:
                rows = conn.execute(
                    "SELECT state, attempt, last_error, progress FROM cdc_invoice.request "
                    "WHERE kind = %s",
                    (kind,),
                ).fetchall()
                raise AssertionError(f"{kind}: {rows}\n{daemon.output()[-3000:]}")
            time.sleep(0.2)


def test_issued_invoices_are_archived_verified_and_exported(
    shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    daemon = start_daemon(shop_dsn, sandbox, result_poll_seconds=0.1)
    demo.ship_orders(shop_dsn, 2, connections=1)
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        # An order of goods (a return of services is refused): its invoice is reversed.
        [oid] = conn.execute(
            "INSERT INTO shop.orders (customer_id) VALUES ('C001') RETURNING order_id"
        ).fetchone() or [None]
        conn.execute(
            "INSERT INTO shop.order_lines VALUES (%s, 1, 'P-LAPTOP', 1, 3099.00, 0), "
            "(%s, 2, 'P-MOUSE', 2, 79.90, 0)",
            (oid, oid),
        )
        conn.execute("UPDATE shop.orders SET status = 'shipped' WHERE order_id = %s", (oid,))
    assert demo.wait_for_requests(shop_dsn, 3, 60, progress=False) == (3, 0)
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        [blue] = conn.execute(
            "SELECT invoice_number FROM cdc_invoice.invoice WHERE order_ref = %s", (str(oid),)
        ).fetchone() or [None]
        conn.execute("SELECT cdc_invoice.request_reversal(%s, 'sales_return')", (blue,))
    wait_requests(shop_dsn, "reverse", 1, daemon)
    wait_files(shop_dsn, 12, daemon)  # 3 blue + 1 red invoices x xml, pdf, ofd

    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT i.invoice_number, i.kind, f.kind, f.bytes, f.sha256, f.check_result "
            "FROM cdc_invoice.invoice_file f JOIN cdc_invoice.invoice i ON i.id = f.invoice_id"
        ).fetchall()
        assert {r[5] for r in rows} == {"ok"}
        assert sorted(r[1] for r in rows if r[2] == "xml") == ["blue", "blue", "blue", "red"]
        for number, _, kind, body, sha, _ in rows:
            assert hashlib.sha256(body).hexdigest() == sha
            if kind == "xml":
                assert check.parse_xml(body)["invoice_number"] == number
            if kind == "pdf":
                check.check_pdf(body)
        [month] = conn.execute(
            "SELECT DISTINCT to_char(issued_at AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM') "
            "FROM cdc_invoice.invoice"
        ).fetchone() or [None]
        assert conn.execute(
            "SELECT count(*) FROM cdc_invoice.report_archive_missing_xml"
        ).fetchone() == (0,)

    status = cli(shop_dsn, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["archive"] == {
        "pending": 0,
        "failed": 0,
        "verified": 12,
        "mismatched": 0,
    }
    text = cli(shop_dsn, "status")
    assert "Invoice files: 12 verified, 0 pending, 0 failed\n" in text.stdout, text.stderr
    ok = cli(shop_dsn, "archive", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "12 file(s) checked: 12 intact, 0 missing, 0 altered" in ok.stdout

    out = tmp_path / "export"
    exported = cli(shop_dsn, "archive", "export", "--month", month, "--to", str(out))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    with (out / "index.csv").open(encoding="utf-8-sig", newline="") as f:
        index = list(csv.DictReader(f))
    assert len(index) == 12 and {r["integrity"] for r in index} == {"ok"}
    for r in index:
        body = (out / r["file_name"]).read_bytes()
        assert hashlib.sha256(body).hexdigest() == r["sha256"] and r["invoice_number"]
    sums = (out / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 12
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out).returncode == 0

    # Someone with the power to bypass the append-only trigger changes a kept PDF.
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        [tampered] = conn.execute(
            "UPDATE cdc_invoice.invoice_file f "
            "SET bytes = set_byte(bytes, 300, get_byte(bytes, 300) # 1) "
            "FROM cdc_invoice.invoice i WHERE i.id = f.invoice_id AND f.kind = 'pdf' "
            "AND i.invoice_number = %s RETURNING i.invoice_number",
            (blue,),
        ).fetchone() or [None]
    bad = cli(shop_dsn, "archive", "verify")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"altered: invoice {tampered} pdf" in bad.stdout
    assert "11 intact, 0 missing, 1 altered" in bad.stdout
    again = cli(shop_dsn, "archive", "export", "--month", month, "--to", str(tmp_path / "again"))
    assert again.returncode == 1
    with (tmp_path / "again" / "index.csv").open(encoding="utf-8-sig", newline="") as f:
        rows_again = list(csv.DictReader(f))
    [altered] = [r for r in rows_again if r["integrity"] != "ok"]
    assert (altered["invoice_number"], altered["file_kind"], altered["integrity"]) == (
        tampered,
        "pdf",
        "altered",
    )
    assert altered["file_name"] == "" and not (tmp_path / "again" / f"{tampered}.pdf").exists()


def archive_metrics(daemon: harness.Proc) -> dict[str, float]:
    deadline = time.monotonic() + 30
    while not (m := re.search(r"metrics at (http://\S+)/metrics", daemon.output())):
        assert time.monotonic() < deadline, daemon.output()[-3000:]
        time.sleep(0.05)
    out = {}
    for family in text_string_to_metric_families(httpx.get(m.group(1) + "/metrics").text):
        for sample in family.samples:
            if sample.name == "cdc_invoice_archive_files":
                out[sample.labels["state"]] = sample.value
            elif sample.name.startswith("cdc_invoice_archive_"):
                out[sample.name] = sample.value
    return out


def test_a_directory_archive_and_bad_input(
    shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    store = tmp_path / "archive"
    daemon = start_daemon(
        shop_dsn,
        sandbox,
        result_poll_seconds=0.1,
        archive_dir=str(store),
        metrics_listen="127.0.0.1:0",
    )
    demo.ship_orders(shop_dsn, 1, connections=1)
    wait_files(shop_dsn, 3, daemon)
    time.sleep(5.5)  # the database figures are cached for 5 s
    assert archive_metrics(daemon) == {
        "pending": 0,
        "failed": 0,
        "verified": 3,
        "mismatched": 0,
        "cdc_invoice_archive_stored_total": 3,
        "cdc_invoice_archive_mismatches_total": 0,
        "cdc_invoice_archive_retries_total": 0,
        "cdc_invoice_archive_failures_total": 0,
    }
    kept = {p.suffix: p for p in store.rglob("*") if p.is_file()}
    assert sorted(kept) == [".ofd", ".pdf", ".xml"]
    with psycopg.connect(shop_dsn) as conn:
        assert conn.execute(
            "SELECT count(*) FROM cdc_invoice.invoice_file WHERE bytes IS NULL AND path LIKE %s",
            (f"{store}/%",),
        ).fetchone() == (3,)
    xml = kept[".xml"]
    xml.write_bytes(xml.read_bytes().replace(b"<TotalTaxAm>", b"<TotalTaxAm>1"))
    bad = cli(shop_dsn, "archive", "verify")
    assert bad.returncode == 1 and "altered: invoice" in bad.stdout and " xml: " in bad.stdout

    wrong = cli(shop_dsn, "archive", "export", "--month", "2026-13", "--to", str(tmp_path / "x"))
    assert wrong.returncode == 2
    assert "--month must be YYYY-MM, got '2026-13'" in wrong.stderr and "fix:" in wrong.stderr
    taken = cli(shop_dsn, "archive", "export", "--month", "2026-11", "--to", str(store))
    assert taken.returncode == 2 and "not an empty directory" in taken.stderr


@pytest.mark.parametrize("setting", ["archive_files"])
def test_archiving_can_be_switched_off(
    shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon, setting: str
) -> None:
    start_daemon(shop_dsn, sandbox, result_poll_seconds=0.1, **{setting: False})
    demo.ship_orders(shop_dsn, 1, connections=1)
    assert demo.wait_for_requests(shop_dsn, 1, 60, progress=False) == (1, 0)
    time.sleep(2)
    with psycopg.connect(shop_dsn) as conn:
        # The links are queued (nothing lost) but no daemon fetches them.
        assert conn.execute(
            "SELECT state, count(*) FROM cdc_invoice.invoice_file_fetch GROUP BY 1"
        ).fetchall() == [("pending", 3)]
        rows: Any = conn.execute("SELECT count(*) FROM cdc_invoice.invoice_file").fetchone()
        assert rows == (0,)


def test_an_archive_dir_it_cannot_write_stops_the_daemon_at_start_with_the_fix(
    shop_dsn: str, sandbox: harness.Sandbox, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    daemon = start_daemon(shop_dsn, sandbox, archive_dir=str(blocker / "archive"))
    deadline = time.monotonic() + 30
    while daemon.alive():
        assert time.monotonic() < deadline, daemon.output()[-2000:]
        time.sleep(0.1)
    assert daemon.popen.returncode == 2
    out = daemon.output()
    assert "daemon.archive_dir" in out and "cannot write there" in out
    assert "leave archive_dir empty" in out
