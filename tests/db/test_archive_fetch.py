"""The daemon's archiver against real PostgreSQL and a real HTTP server (its own socket).

The server plays the platform's file links and answers what each test needs: the right files,
an XML that disagrees with the record, errors, an HTML page instead of a PDF.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web

from cdc_invoice.archive import audit, check, keep
from cdc_invoice.archive.fetcher import Archiver, Superseded
from cdc_invoice.db.repository import Repository
from cdc_invoice.sandbox import files
from cdc_invoice.sandbox.model import Buyer, Invoice, Line

NUMBER = "26330000000000000042"
ISSUED = "2026-11-30 23:30+08"  # 30 Nov in China, 15:30 UTC: the date is China's


@dataclass
class Platform:
    """Answers GET /{name} with routes[name] = (status, body)."""

    port: int
    routes: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        status, body = self.routes.get(name, (404, b"not found"))
        return web.Response(status=status, body=body)


def sandbox_invoice(seller_tax: str, *, total_ex: str = "150.00", tax: str = "17.50") -> Invoice:
    issued = datetime.fromisoformat(ISSUED).timestamp()
    return Invoice(
        serial="S1",
        order_no="O1",
        seller_tax=seller_tax,
        invoice_line="pc",
        kind="blue",
        buyer=Buyer(name="杭州示例贸易有限公司", tax_no="91330100MA2B3C4D5E"),
        lines=(
            Line(
                1,
                "*计算机*笔记本",
                "1090511030000000000",
                Decimal("0.13"),
                Decimal("100.00"),
                Decimal("13.00"),
            ),
            Line(
                2,
                "*计算机*鼠标",
                "1090511030000000000",
                Decimal("0.09"),
                Decimal("50.00"),
                Decimal("4.50"),
            ),
        ),
        total_ex=Decimal(total_ex),
        total_tax=Decimal(tax),
        submitted_at=issued,
        due_at=issued,
        status="2",
        number=NUMBER,
        issued_at=issued,
    )


def record_invoice(dsn: str, base_url: str, number: str = NUMBER) -> int:
    """An issued invoice as the daemon records it, links included (the trigger queues them)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        req = conn.execute(
            "INSERT INTO cdc_invoice.request (source, order_ref, kind, state, done_at) "
            "VALUES ('shop', %s, 'issue', 'done', now()) RETURNING id",
            (number,),
        ).fetchone()
        assert req is not None
        row = conn.execute(
            "INSERT INTO cdc_invoice.invoice (request_id, source, order_ref, seller_id, "
            "invoice_number, kind, platform_serial, platform_order_no, issued_at, buyer_name, "
            "buyer_tax_number, total_excl_tax, total_tax, total_incl_tax, xml_url, pdf_url, "
            "ofd_url) VALUES (%s, 'shop', %s, 'main', %s, 'blue', 'S1', %s, %s, "
            "'杭州示例贸易有限公司', '91330100MA2B3C4D5E', 150.00, 17.50, 167.50, %s, %s, %s) "
            "RETURNING id",
            (
                req[0],
                number,
                number,
                "O" + number,
                datetime.fromisoformat(ISSUED),
                f"{base_url}/{number}.xml",
                f"{base_url}/{number}.pdf",
                f"{base_url}/{number}.ofd",
            ),
        ).fetchone()
        assert row is not None
        return int(row[0])


def seller_tax(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT tax_number FROM cdc_invoice.seller WHERE seller_id = 'main'")
        return str(row.fetchone()[0])  # type: ignore[index]


def good_files(dsn: str, number: str = NUMBER) -> dict[str, tuple[int, bytes]]:
    inv = sandbox_invoice(seller_tax(dsn))
    return {f"{number}.{ext}": (200, files.render(inv, ext)) for ext in ("xml", "pdf", "ofd")}


async def archive_until(
    dsn: str,
    platform: Platform,
    done: Callable[[psycopg.Connection[Any]], bool],
    timeout: float = 30.0,
    **settings: Any,
) -> Archiver:
    """Serve ``platform`` on a real socket and run an archiver until ``done`` holds."""
    app = web.Application()
    app.router.add_get("/{name}", platform.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", platform.port)
    await site.start()
    repo = await Repository.open(dsn, "test-archiver", 2)
    archiver = Archiver(repo, idle_seconds=0.05, **settings)
    task = asyncio.create_task(archiver.run())
    try:
        deadline = time.monotonic() + timeout
        while True:
            with psycopg.connect(dsn) as conn:
                if done(conn):
                    break
            assert time.monotonic() < deadline, "the archiver did not get there in time"
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await repo.close()
        await runner.cleanup()
    return archiver


@pytest.fixture
def platform() -> Platform:
    """A platform on a fixed free port, known before invoices are recorded with its links."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return Platform(port=s.getsockname()[1])


def files_of(conn: psycopg.Connection[Any], invoice_id: int) -> dict[str, tuple[Any, ...]]:
    rows = conn.execute(
        "SELECT kind, bytes, path, size, sha256, check_result, check_detail, source_url "
        "FROM cdc_invoice.invoice_file WHERE invoice_id = %s",
        (invoice_id,),
    ).fetchall()
    return {str(r[0]): r for r in rows}


def count(n: int, where: str = "true") -> Callable[[psycopg.Connection[Any]], bool]:
    return lambda conn: (
        conn.execute(f"SELECT count(*) FROM cdc_invoice.invoice_file WHERE {where}").fetchone()
        == (n,)
    )


def test_files_are_fetched_checked_and_kept_append_only(shop_dsn: str, platform: Platform) -> None:
    invoice_id = record_invoice(shop_dsn, platform.url)
    platform.routes = good_files(shop_dsn)
    archiver = asyncio.run(archive_until(shop_dsn, platform, count(3)))
    assert archiver.stats.stored == 3 and archiver.stats.mismatched == 0
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        kept = files_of(conn, invoice_id)
        for kind in ("xml", "pdf", "ofd"):
            _, body, path, size, sha, result, detail, url = kept[kind]
            served = platform.routes[f"{NUMBER}.{kind}"][1]
            assert bytes(body) == served and path is None and size == len(served)
            assert sha == hashlib.sha256(served).hexdigest()
            assert (result, detail) == ("ok", None) and url.endswith(f"{NUMBER}.{kind}")
        assert conn.execute(
            "SELECT array_agg(DISTINCT state) FROM cdc_invoice.invoice_file_fetch"
        ).fetchone() == (["done"],)
        assert conn.execute(
            "SELECT count(*) FROM cdc_invoice.event WHERE event = 'archive.stored'"
        ).fetchone() == (3,)
        assert conn.execute(
            "SELECT count(*) FROM cdc_invoice.report_archive_missing_xml"
        ).fetchone() == (0,)
        for statement in (
            "UPDATE cdc_invoice.invoice_file SET bytes = 'x'",
            "DELETE FROM cdc_invoice.invoice_file",
            "TRUNCATE cdc_invoice.invoice_file",
        ):
            with pytest.raises(psycopg.Error) as exc:
                conn.execute(statement)
            assert exc.value.sqlstate == "CI006"
            assert "append-only" in str(exc.value) and exc.value.diag.message_hint
    assert platform.hits == {f"{NUMBER}.{k}": 1 for k in ("xml", "pdf", "ofd")}
    assert not audit.verify(shop_dsn).failed


def test_an_xml_that_differs_from_the_record_is_kept_with_an_alert(
    shop_dsn: str, platform: Platform
) -> None:
    invoice_id = record_invoice(shop_dsn, platform.url)
    platform.routes = good_files(shop_dsn)
    wrong = sandbox_invoice(seller_tax(shop_dsn), total_ex="1500.00")
    platform.routes[f"{NUMBER}.xml"] = (200, files.invoice_xml(wrong))
    archiver = asyncio.run(archive_until(shop_dsn, platform, count(3)))
    assert archiver.stats.mismatched == 1
    with psycopg.connect(shop_dsn) as conn:
        xml = files_of(conn, invoice_id)["xml"]
        assert xml[5] == "mismatch"
        assert "total excl tax: the XML says '1500.00', we recorded '150.00'" in xml[6]
        assert "total incl tax" in xml[6]
        # The record is not touched, the file is kept as fetched, and the alert is visible.
        assert conn.execute(
            "SELECT total_excl_tax FROM cdc_invoice.invoice WHERE id = %s", (invoice_id,)
        ).fetchone() == (Decimal("150.00"),)
        assert conn.execute(
            "SELECT invoice_number, file_kind FROM cdc_invoice.report_archive_mismatches"
        ).fetchall() == [(NUMBER, "xml")]
        assert conn.execute(
            "SELECT detail->>'kind' FROM cdc_invoice.event WHERE event = 'archive.mismatch'"
        ).fetchall() == [("xml",)]
    report = audit.verify(shop_dsn)
    assert [f.problem for f in report.findings] == ["mismatch since fetch"]
    assert not report.failed  # kept as fetched: an alert, not an integrity failure


def test_a_file_that_cannot_be_fetched_is_retried_then_listed_and_never_blocks(
    shop_dsn: str, platform: Platform
) -> None:
    invoice_id = record_invoice(shop_dsn, platform.url)
    platform.routes = good_files(shop_dsn)
    platform.routes[f"{NUMBER}.pdf"] = (200, b"<html>session expired</html>")  # not a PDF
    platform.routes[f"{NUMBER}.ofd"] = (503, b"busy")

    def settled(conn: psycopg.Connection[Any]) -> bool:
        return conn.execute(
            "SELECT count(*) FROM cdc_invoice.invoice_file_fetch WHERE state = 'pending'"
        ).fetchone() == (0,)

    archiver = asyncio.run(
        archive_until(shop_dsn, platform, settled, max_attempts=3, retry_seconds=0.05)
    )
    assert (archiver.stats.stored, archiver.stats.retried, archiver.stats.failed) == (1, 4, 2)
    assert platform.hits[f"{NUMBER}.pdf"] == 3 and platform.hits[f"{NUMBER}.ofd"] == 3
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        assert set(files_of(conn, invoice_id)) == {"xml"}  # the HTML page was not kept
        rows = conn.execute(
            "SELECT kind, state, attempts, last_error FROM cdc_invoice.report_archive_open "
            "ORDER BY kind"
        ).fetchall()
        assert [(k, s, a) for k, s, a, _ in rows] == [("ofd", "failed", 3), ("pdf", "failed", 3)]
        assert "HTTP 503" in rows[0][3] and "not a PDF" in rows[1][3]
        assert conn.execute(
            "SELECT status FROM cdc_invoice.invoice WHERE id = %s", (invoice_id,)
        ).fetchone() == ("issued",)
        assert conn.execute(
            "SELECT count(*) FROM cdc_invoice.event WHERE event = 'archive.failed'"
        ).fetchone() == (2,)
    # Fixed at the platform: `archive retry` queues them again and they are kept.
    platform.routes = good_files(shop_dsn)
    assert audit.retry(shop_dsn, NUMBER) == 2
    asyncio.run(archive_until(shop_dsn, platform, count(3)))


def test_new_links_rearm_a_failed_fetch(shop_dsn: str, platform: Platform) -> None:
    """A refresh that records new links (queries.sql refresh_invoice) starts over."""
    invoice_id = record_invoice(shop_dsn, platform.url)
    platform.routes = good_files(shop_dsn)
    del platform.routes[f"{NUMBER}.xml"]
    asyncio.run(archive_until(shop_dsn, platform, count(2), max_attempts=1, retry_seconds=0.05))
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT fetch_state FROM cdc_invoice.report_archive_missing_xml"
        ).fetchall() == [("failed",)]
        conn.execute(
            "UPDATE cdc_invoice.invoice SET xml_url = %s WHERE id = %s",
            (f"{platform.url}/new.xml", invoice_id),
        )
        assert conn.execute(
            "SELECT state, attempts FROM cdc_invoice.invoice_file_fetch WHERE kind = 'xml'"
        ).fetchone() == ("pending", 0)
    platform.routes["new.xml"] = good_files(shop_dsn)[f"{NUMBER}.xml"]
    asyncio.run(archive_until(shop_dsn, platform, count(3)))


def test_a_directory_archive_detects_altered_and_missing_files(
    shop_dsn: str, platform: Platform, tmp_path: Path
) -> None:
    invoice_id = record_invoice(shop_dsn, platform.url)
    platform.routes = good_files(shop_dsn)
    store = tmp_path / "archive"
    asyncio.run(archive_until(shop_dsn, platform, count(3), directory=str(store)))
    with psycopg.connect(shop_dsn) as conn:
        kept = files_of(conn, invoice_id)
    paths = {k: Path(r[2]) for k, r in kept.items()}
    for kind, path in paths.items():
        assert kept[kind][1] is None
        assert path.parent == store / "2026-11"  # China's month, not UTC's
        assert path.read_bytes() == platform.routes[f"{NUMBER}.{kind}"][1]
    assert not audit.verify(shop_dsn).failed
    paths["pdf"].write_bytes(paths["pdf"].read_bytes().replace(b"167.50", b"767.50"))
    paths["ofd"].unlink()
    report = audit.verify(shop_dsn)
    assert report.failed
    assert sorted((f.problem, f.file_kind) for f in report.findings) == [
        ("altered", "pdf"),
        ("missing", "ofd"),
    ]


def test_check_refuses_an_xml_with_entities() -> None:
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><EInvoice>&a;</EInvoice>'
    with pytest.raises(check.BadFile, match="DTD"):
        check.parse_xml(bomb)


def test_a_dead_archivers_fetch_is_taken_over_once_and_its_late_store_refused(
    shop_dsn: str, platform: Platform
) -> None:
    """SIGKILL between download and store looks like this: the claim is left behind."""
    record_invoice(shop_dsn, platform.url)
    platform.routes = good_files(shop_dsn)

    async def scenario() -> tuple[int, int]:
        dead_repo = await Repository.open(shop_dsn, "dead", 1)
        dead = Archiver(dead_repo, max_attempts=3)
        dead.lease_seconds = 0.3
        jobs = await dead._claim()
        assert len(jobs) == 3
        await asyncio.sleep(0.4)  # the lease runs out; the live archiver takes over
        await archive_until(shop_dsn, platform, count(3))
        body = platform.routes[f"{NUMBER}.xml"][1]
        # The dead one comes back (a paused VM) and tries to finish: the fence refuses it.
        with pytest.raises(Superseded):
            await dead._store(jobs[0], keep.in_database(body), [])
        await dead_repo.close()
        with psycopg.connect(shop_dsn) as conn:
            files_n = conn.execute("SELECT count(*) FROM cdc_invoice.invoice_file").fetchone()
            attempts = conn.execute(
                "SELECT max(attempts) FROM cdc_invoice.invoice_file_fetch"
            ).fetchone()
        assert files_n is not None and attempts is not None
        return int(files_n[0]), int(attempts[0])

    assert asyncio.run(scenario()) == (3, 2)


def test_a_fetch_that_never_reports_back_ends_as_failed(shop_dsn: str, platform: Platform) -> None:
    record_invoice(shop_dsn, platform.url)
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        # Its last allowed attempt was claimed and the archiver died (lease over).
        conn.execute(
            "UPDATE cdc_invoice.invoice_file_fetch SET attempts = 3, claimed_by = 'dead', "
            "run_after = now() - interval '1 second', last_error = 'HTTP 503' WHERE kind = 'pdf'"
        )
    platform.routes = good_files(shop_dsn)
    asyncio.run(archive_until(shop_dsn, platform, count(2), max_attempts=3))
    with psycopg.connect(shop_dsn) as conn:
        assert conn.execute(
            "SELECT kind, state, attempts, last_error FROM cdc_invoice.report_archive_open"
        ).fetchall() == [
            (
                "pdf",
                "failed",
                3,
                "HTTP 503; then the archiver stopped during the last attempt "
                "(crash or lost database)",
            )
        ]
    assert f"{NUMBER}.pdf" not in platform.hits


def test_roles_reader_reads_and_verifies_operator_retries_daemon_archives(
    shop_dsn: str, platform: Platform
) -> None:
    import uuid

    from psycopg import sql

    def login(group: str) -> str:
        name = f"t_{group.split('_')[-1]}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(shop_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                    sql.Identifier(name), sql.Identifier(group)
                )
            )
        return psycopg.conninfo.make_conninfo(shop_dsn, user=name)

    record_invoice(shop_dsn, platform.url)
    platform.routes = good_files(shop_dsn)
    platform.routes[f"{NUMBER}.ofd"] = (500, b"")
    # The daemon's role is enough for the archiver (claim, store, events, give up).
    asyncio.run(
        archive_until(
            login("cdc_invoice_daemon"),
            platform,
            lambda c: (
                c.execute(
                    "SELECT count(*) FROM cdc_invoice.invoice_file_fetch WHERE state = 'pending'"
                ).fetchone()
                == (0,)
            ),
            max_attempts=1,
        )
    )
    reader = login("cdc_invoice_reader")
    assert audit.verify(reader).checked == 2
    with psycopg.connect(reader, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM cdc_invoice.invoice_file WHERE bytes IS NOT NULL"
        ).fetchone() == (2,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE cdc_invoice.invoice_file_fetch SET state = 'pending'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        audit.retry(reader, None)
    assert audit.retry(login("cdc_invoice_operator"), None) == 1


def test_verify_lists_invoices_without_xml_up_to_twenty(shop_dsn: str) -> None:
    from click.testing import CliRunner

    from cdc_invoice.cli import main

    for n in range(25):
        record_invoice(shop_dsn, "http://127.0.0.1:9", number=f"2633000000000000{n:04d}")
    result = CliRunner().invoke(main, ["archive", "verify", "--dsn", shop_dsn])
    assert result.exit_code == 0, result.output  # still being fetched: not an integrity failure
    lines = result.output.splitlines()
    assert sum(line.startswith("not archived: invoice ") for line in lines) == 20
    assert "… and 5 more without an archived XML" in result.output
    assert "0 file(s) checked" in lines[-1] and "25 invoice(s) without an archived XML" in lines[-1]


def test_upgrade_queues_the_files_of_invoices_recorded_before(fresh_dsn: str) -> None:
    from cdc_invoice.db import schema
    from cdc_invoice.db.queries import migrations, sql_file

    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        for version, name in migrations():
            if version <= 6:
                conn.execute(sql_file(name))
        for name in schema.REPLACEABLE:
            # version 6 had no archive (roles.sql grants on its tables)
            if name not in ("archive.sql", "roles.sql"):
                conn.execute(sql_file(name))
        conn.execute(sql_file("examples/demo_shop.sql"))
    record_invoice(fresh_dsn, "https://platform.invalid/files")
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute("SELECT to_regclass('cdc_invoice.invoice_file_fetch')").fetchone() == (
            None,
        )
    result = schema.install(fresh_dsn)
    assert result.before == 6 and result.applied[0] == "migrations/0007_invoice_files.sql"
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute(
            "SELECT kind, state, source_url FROM cdc_invoice.invoice_file_fetch ORDER BY kind"
        ).fetchall() == [
            ("ofd", "pending", f"https://platform.invalid/files/{NUMBER}.ofd"),
            ("pdf", "pending", f"https://platform.invalid/files/{NUMBER}.pdf"),
            ("xml", "pending", f"https://platform.invalid/files/{NUMBER}.xml"),
        ]
