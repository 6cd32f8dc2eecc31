"""`report`, `status`, `failures`, `retry` and the report views, against a real PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql

from cdc_invoice.cli import main

WIDE = {"COLUMNS": "250"}


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=WIDE)


def add_invoice(
    conn: psycopg.Connection[tuple[object, ...]],
    order_ref: str,
    number: str,
    issued_at: datetime,
    lines: list[tuple[str, str, str]],  # (rate, excl, tax)
    *,
    buyer: str = "杭州示例贸易有限公司",
    buyer_tax: str | None = "91330106MA2B0001XY",
    kind: str = "blue",
    original: int | None = None,
    status: str = "issued",
    recorded_at: datetime | None = None,
) -> int:
    """An invoice as the daemon records it: a done request, the invoice, its lines."""
    row = conn.execute(
        "INSERT INTO cdc_invoice.request (source, order_ref, kind, seq, state, done_at) "
        "VALUES ('shop', %s, %s, (SELECT count(*) + 1 FROM cdc_invoice.request WHERE order_ref = %s), "
        "'done', now()) RETURNING id",
        (order_ref, "issue" if kind == "blue" else "reverse", order_ref),
    ).fetchone()
    assert row is not None
    excl = sum(Decimal(e) for _, e, _ in lines)
    tax = sum(Decimal(t) for _, _, t in lines)
    inv = conn.execute(
        "INSERT INTO cdc_invoice.invoice (request_id, source, order_ref, seller_id, invoice_number, "
        "kind, original_invoice_id, platform_serial, platform_order_no, issued_at, recorded_at, "
        "buyer_name, buyer_tax_number, total_excl_tax, total_tax, total_incl_tax, status) "
        "VALUES (%s, 'shop', %s, 'main', %s, %s, %s, %s, %s, %s, coalesce(%s, now()), %s, %s, "
        "%s, %s, %s, %s) RETURNING id",
        (
            row[0],
            order_ref,
            number,
            kind,
            original,
            "S" + number,
            "O" + number,
            issued_at,
            recorded_at or issued_at + timedelta(seconds=1),
            buyer,
            buyer_tax,
            excl,
            tax,
            excl + tax,
            status,
        ),
    ).fetchone()
    assert inv is not None
    for i, (rate, e, t) in enumerate(lines, start=1):
        conn.execute(
            "INSERT INTO cdc_invoice.invoice_line (invoice_id, line_no, item_name, amount_excl_tax, "
            "tax_rate, tax, amount_incl_tax) VALUES (%s, %s, '商品', %s, %s, %s, %s)",
            (inv[0], i, Decimal(e), Decimal(rate), Decimal(t), Decimal(e) + Decimal(t)),
        )
    return int(inv[0])


CN = "+08:00"


@pytest.fixture
def invoiced(shop_dsn: str) -> str:
    """Invoices in Jan and Feb 2025 (China time), one reversed in Feb, one voided."""
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        add_invoice(
            conn,
            "1",
            "25330000000000000001",
            datetime.fromisoformat(f"2025-01-05 10:00{CN}"),
            [("0.13", "100.00", "13.00"), ("0.09", "50.00", "4.50")],
        )
        # 23:30 UTC on Jan 31 is Feb 1 in China: the month is China's.
        first = add_invoice(
            conn,
            "2",
            "25330000000000000002",
            datetime.fromisoformat("2025-01-31 23:30+00:00"),
            [("0.13", "200.00", "26.00")],
        )
        add_invoice(
            conn,
            "2",
            "25330000000000000003",
            datetime.fromisoformat(f"2025-02-10 09:00{CN}"),
            [("0.13", "-200.00", "-26.00")],
            kind="red",
            original=first,
        )
        add_invoice(
            conn,
            "3",
            "25330000000000000004",
            datetime.fromisoformat(f"2025-02-11 09:00{CN}"),
            [("0.06", "300.00", "18.00")],
            buyer="张三",
            buyer_tax=None,
        )
        add_invoice(
            conn,
            "4",
            "25330000000000000005",
            datetime.fromisoformat(f"2025-02-12 09:00{CN}"),
            [("0.06", "999.00", "59.94")],
            status="voided",
        )
    return shop_dsn


def test_report_by_buyer_per_china_month_buyer_and_kind(invoiced: str) -> None:
    with psycopg.connect(invoiced) as conn:
        rows = conn.execute(
            "SELECT month::text, buyer_name, kind, invoices, amount_excl_tax, tax, amount_incl_tax "
            "FROM cdc_invoice.report_by_buyer ORDER BY 1, 2, 3"
        ).fetchall()
    assert rows == [
        (
            "2025-01-01",
            "杭州示例贸易有限公司",
            "blue",
            1,
            Decimal("150.00"),
            Decimal("17.50"),
            Decimal("167.50"),
        ),
        ("2025-02-01", "张三", "blue", 1, Decimal("300.00"), Decimal("18.00"), Decimal("318.00")),
        (
            "2025-02-01",
            "杭州示例贸易有限公司",
            "blue",
            1,
            Decimal("200.00"),
            Decimal("26.00"),
            Decimal("226.00"),
        ),
        (
            "2025-02-01",
            "杭州示例贸易有限公司",
            "red",
            1,
            Decimal("-200.00"),
            Decimal("-26.00"),
            Decimal("-226.00"),
        ),
    ]


@pytest.fixture
def reader(invoiced: str) -> Iterator[str]:
    name = f"t_reader_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(invoiced, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE cdc_invoice_reader").format(sql.Identifier(name))
        )
    yield psycopg.conninfo.make_conninfo(invoiced, user=name)
    with psycopg.connect(invoiced, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_every_report_view_is_readable_by_the_reader_role(invoiced: str, reader: str) -> None:
    with psycopg.connect(invoiced) as conn:
        views = [
            r[0]
            for r in conn.execute(
                "SELECT viewname FROM pg_views WHERE schemaname = 'cdc_invoice' AND viewname LIKE 'report%%'"
            )
        ]
    assert {"report_daily", "report_monthly", "report_by_buyer", "report_register"} <= set(views)
    with psycopg.connect(reader) as conn:
        for v in views:
            conn.execute(
                sql.SQL("SELECT * FROM cdc_invoice.{}").format(sql.Identifier(v))
            ).fetchall()
    # …and `cdc-invoice report` works for a reader too.
    result = cli("report", "by_buyer", "--dsn", reader, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert len(list(csv.reader(io.StringIO(result.output)))) == 1 + 4


def test_report_lists_the_views(invoiced: str) -> None:
    result = cli("report", "--dsn", invoiced)
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.output.splitlines()]
    assert {"daily", "monthly", "by_buyer", "backlog", "failures", "register"} <= set(names)
    assert "Invoiced amounts per month (Asia/Shanghai), seller, buyer and kind" in result.output


def test_report_csv_since_filters_on_the_views_date_column(invoiced: str) -> None:
    result = cli(
        "report", "register", "--dsn", invoiced, "--format", "csv", "--since", "2025-02-11"
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["invoice_number"] for r in rows] == ["25330000000000000004", "25330000000000000005"]
    assert rows[0]["total_incl_tax"] == "318.00" and rows[0]["buyer_tax_number"] == ""
    # The register's red invoice names its original.
    red = list(
        csv.DictReader(
            io.StringIO(
                cli("report", "report_register", "--dsn", invoiced, "--format", "csv").output
            )
        )
    )
    assert {r["invoice_number"]: r["original_invoice_number"] for r in red}[
        "25330000000000000003"
    ] == "25330000000000000002"

    # A monthly view: --since mid-February still keeps February.
    monthly = list(
        csv.DictReader(
            io.StringIO(
                cli(
                    "report",
                    "monthly",
                    "--dsn",
                    invoiced,
                    "--format",
                    "csv",
                    "--since",
                    "2025-02-15",
                ).output
            )
        )
    )
    assert {r["month"] for r in monthly} == {"2025-02-01"}
    assert sum(Decimal(r["amount_incl_tax"]) for r in monthly) == Decimal(
        "318.00"
    )  # 226 - 226 + 318

    daily = list(
        csv.DictReader(
            io.StringIO(
                cli(
                    "report", "daily", "--dsn", invoiced, "--format", "csv", "--since", "2025-02-01"
                ).output
            )
        )
    )
    assert sorted({r["day"] for r in daily}) == ["2025-02-01", "2025-02-10", "2025-02-11"]


def test_report_table_output(invoiced: str) -> None:
    result = cli("report", "by_buyer", "--dsn", invoiced)
    assert result.exit_code == 0, result.output
    assert "cdc_invoice.report_by_buyer (4 rows)" in result.output
    assert "张三" in result.output and "-226.00" in result.output


def test_report_refuses_unknown_names_and_injection(invoiced: str) -> None:
    for name in ("nope", "daily; DROP TABLE cdc_invoice.invoice", "pending_red_slips"):
        result = cli("report", name, "--dsn", invoiced)
        assert result.exit_code == 2, result.output
        assert "no report" in result.output and "by_buyer" in result.output
    with psycopg.connect(invoiced) as conn:
        assert conn.execute("SELECT count(*) FROM cdc_invoice.invoice").fetchone() == (5,)
    bad_date = cli("report", "daily", "--dsn", invoiced, "--since", "yesterday")
    assert bad_date.exit_code == 2 and "yesterday" in bad_date.output


def test_report_since_needs_a_date_column(invoiced: str) -> None:
    with psycopg.connect(invoiced, autocommit=True) as conn:
        conn.execute(
            "CREATE VIEW cdc_invoice.report_sellers AS SELECT seller_id, name FROM cdc_invoice.seller"
        )
    ok = cli("report", "sellers", "--dsn", invoiced, "--format", "csv")
    assert ok.exit_code == 0 and ok.output.splitlines()[1].startswith("main,")
    result = cli("report", "sellers", "--dsn", invoiced, "--since", "2025-01-01")
    assert result.exit_code == 2 and "has no date column" in result.output


def fail(
    conn: psycopg.Connection[tuple[object, ...]], order_ref: str, code: str, error: str, hint: str
) -> int:
    row = conn.execute(
        "INSERT INTO cdc_invoice.request (source, order_ref, kind, state, attempt, last_error, error_code, hint) "
        "VALUES ('shop', %s, 'issue', 'failed', 1, %s, %s, %s) RETURNING id",
        (order_ref, error, code, hint),
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def busy(invoiced: str) -> str:
    """Failures, a backlog, daemons (one live, one silent) and a shared token."""
    with psycopg.connect(invoiced, autocommit=True) as conn:
        fail(
            conn,
            "10",
            "E9121",
            "platform rejected order '10': E9121 goods code\nsecond line",
            "fix item_tax",
        )
        fail(conn, "11", "E9121", "platform rejected order '11': E9121 goods code", "fix item_tax")
        fail(
            conn,
            "12",
            "MAPPING",
            "order '12': customer C9 not in cdc_invoice.buyer",
            "INSERT INTO cdc_invoice.buyer …",
        )
        fail(conn, "13", "E9121", "platform rejected order '13' (another source)", "fix item_tax")
        conn.execute("UPDATE cdc_invoice.request SET source = 'pos' WHERE order_ref = '13'")
        conn.execute(
            "INSERT INTO cdc_invoice.request (source, order_ref, kind, created_at) VALUES "
            "('shop', '20', 'issue', now() - interval '2 hours'), ('shop', '21', 'issue', now())"
        )
        conn.execute(
            "INSERT INTO cdc_invoice.request (source, order_ref, kind, run_after) VALUES "
            "('shop', '22', 'issue', now() + interval '5 minutes')"
        )
        conn.execute(
            "INSERT INTO cdc_invoice.daemon (daemon_id, host, pid, version, heartbeat_at) VALUES "
            "('host-a:1', 'host-a', 1, '0.1.0', now() - interval '3 seconds'), "
            "('host-b:2', 'host-b', 2, '0.1.0', now() - interval '5 minutes')"
        )
        conn.execute(
            "INSERT INTO cdc_invoice.provider_token (app_key, token_encrypted, expires_at, fetched_by, fetch_log) "
            "VALUES ('demo-app', '\\x01', now() + interval '20 hours', 'host-a:1', "
            "ARRAY[now() - interval '40 days', now() - interval '3 days', now() - interval '1 hour'])"
        )
        for i in range(3):
            add_invoice(
                conn,
                f"3{i}",
                f"2533000000000000010{i}",
                datetime.now().astimezone(),
                [("0.13", "1.00", "0.13")],
                recorded_at=datetime.now().astimezone() - timedelta(minutes=3 * i),
            )
    return invoiced


def test_status_json(busy: str) -> None:
    result = cli("status", "--dsn", busy, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    backlog = {(r["source"], r["state"]): r for r in data["backlog"]}
    assert backlog[("shop", "pending")]["requests"] == 3
    assert backlog[("shop", "pending")]["due"] == 2
    assert 7190 < backlog[("shop", "pending")]["oldest_age"] < 7300
    failures = {r["error_code"]: r for r in data["failures"]}
    assert failures["E9121"]["requests"] == 3 and failures["MAPPING"]["requests"] == 1
    assert "\n" not in failures["E9121"]["example"]
    assert failures["E9121"]["hint"] == "fix item_tax"
    assert data["throughput"] == {"last_1m": 1, "last_5m": 2, "last_15m": 3}
    assert [d["daemon_id"] for d in data["daemons"]] == ["host-a:1", "host-b:2"]
    (token,) = data["tokens"]
    assert token["app_key"] == "demo-app" and token["fetches_30d"] == 2


def test_status_tables(busy: str) -> None:
    result = cli("status", "--dsn", busy)
    assert result.exit_code == 0, result.output
    out = result.output
    for text in (
        "Backlog",
        "Invoices recorded",
        "Failures by reason",
        "E9121",
        "fix item_tax",
        "host-a:1",
        "live",
        "no heartbeat",
        "demo-app",
        "2.0h",
    ):
        assert text in out, text


def test_status_works_for_the_daemon_role(busy: str) -> None:
    name = f"t_daemon_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(busy, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE cdc_invoice_daemon").format(sql.Identifier(name))
        )
    try:
        result = cli("status", "--dsn", psycopg.conninfo.make_conninfo(busy, user=name), "--json")
        assert result.exit_code == 0, result.output
    finally:
        with psycopg.connect(busy, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_status_tells_a_reader_what_to_use_instead(busy: str, reader: str) -> None:
    result = cli("status", "--dsn", reader)
    assert result.exit_code == 2
    assert "permission denied" in result.output and "cdc_invoice_daemon role" in result.output


def test_status_of_an_empty_queue(shop_dsn: str) -> None:
    result = cli("status", "--dsn", shop_dsn)
    assert result.exit_code == 0, result.output
    assert "Backlog: empty" in result.output and "Failures: none" in result.output
    assert "Daemons: none running" in result.output


def test_failures_lists_reason_and_fix(busy: str) -> None:
    result = cli("failures", "--dsn", busy)
    assert result.exit_code == 0, result.output
    for text in ("E9121", "MAPPING", "INSERT INTO cdc_invoice.buyer", "fix item_tax"):
        assert text in result.output
    assert (
        cli("failures", "--dsn", busy, "--limit", "1").output.count("E9121")
        + cli("failures", "--dsn", busy, "--limit", "1").output.count("MAPPING")
        == 1
    )


def _states(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(
            conn.execute(
                "SELECT order_ref, state FROM cdc_invoice.request WHERE order_ref IN ('10','11','12','13')"
            ).fetchall()
        )


def test_retry_one_then_a_source_then_all(busy: str) -> None:
    with psycopg.connect(busy) as conn:
        row = conn.execute("SELECT id FROM cdc_invoice.request WHERE order_ref = '12'").fetchone()
    assert row is not None
    one = cli("retry", str(row[0]), "--dsn", busy)
    assert one.exit_code == 0 and f"request {row[0]} queued again" in one.output
    assert _states(busy) == {"10": "failed", "11": "failed", "12": "pending", "13": "failed"}
    with psycopg.connect(busy) as conn:
        r = conn.execute(
            "SELECT last_error, error_code, retries FROM cdc_invoice.request WHERE id = %s", row
        ).fetchone()
        assert r == (None, None, 0)
    again = cli("retry", str(row[0]), "--dsn", busy)
    assert again.exit_code == 2 and "is not failed or cancelled" in again.output

    pos = cli("retry", "--all", "--source", "pos", "--dsn", busy)
    assert pos.exit_code == 0 and "1 request(s) queued again" in pos.output
    assert _states(busy)["13"] == "pending"
    rest = cli("retry", "--all", "--dsn", busy)
    assert rest.exit_code == 0 and "2 request(s) queued again" in rest.output
    assert set(_states(busy).values()) == {"pending"}
    assert "no failed requests" in cli("failures", "--dsn", busy).output


def test_retry_needs_an_id_or_all(busy: str) -> None:
    for args in ([], ["1", "--all"]):
        result = cli("retry", *args, "--dsn", busy)
        assert result.exit_code == 2 and "give a REQUEST_ID or --all" in result.output


@pytest.mark.parametrize("server_zone", ["UTC", "America/Los_Angeles"])
def test_register_since_uses_china_dates_like_report_daily(
    installed_dsn: str, server_zone: str
) -> None:
    """An invoice issued 2025-03-01 01:30 China time is on 2025-03-01 for report_daily; the
    register export --since 2025-03-01 must list it too, whatever the server's time zone, and
    print its time with the +08:00 offset (issue 15, item 12)."""
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        add_invoice(
            conn, "2001", "25330000000000000101", datetime.fromisoformat("2025-03-01 01:30+08:00"),
            [("0.13", "100.00", "13.00")],
        )  # fmt: skip
        add_invoice(
            conn, "2002", "25330000000000000102", datetime.fromisoformat("2025-02-28 23:30+08:00"),
            [("0.13", "50.00", "6.50")],
        )  # fmt: skip
        dbname = conn.info.dbname
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET TimeZone = {}").format(
                sql.Identifier(dbname), sql.Literal(server_zone)
            )
        )
    daily = list(
        csv.DictReader(
            io.StringIO(
                cli(
                    "report", "daily", "--dsn", installed_dsn, "--format", "csv",
                    "--since", "2025-03-01",
                ).output
            )
        )
    )  # fmt: skip
    assert [(r["day"], r["invoices"]) for r in daily] == [("2025-03-01", "1")]
    result = cli(
        "report", "register", "--dsn", installed_dsn, "--format", "csv", "--since", "2025-03-01"
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [(r["invoice_number"], r["issued_at"]) for r in rows] == [
        ("25330000000000000101", "2025-03-01 01:30:00+08:00")
    ]


def test_cancel_a_failure_then_retry_brings_it_back(busy: str) -> None:
    """`cdc-invoice cancel` (issue 13, hole 6): the failure leaves `failures`; a refusal is the
    SQL function's CI error with its hint, exit 2."""
    with psycopg.connect(busy) as conn:
        row = conn.execute("SELECT id FROM cdc_invoice.request WHERE order_ref = '12'").fetchone()
    assert row is not None
    assert "order '12'" in cli("failures", "--dsn", busy).output
    assert cli("cancel", str(row[0]), "--dsn", busy).exit_code == 2  # --reason is required
    done = cli("cancel", str(row[0]), "--reason", "order cancelled", "--dsn", busy)
    assert done.exit_code == 0 and f"request {row[0]} cancelled" in done.output
    assert _states(busy)["12"] == "cancelled"
    assert "order '12'" not in cli("failures", "--dsn", busy).output
    again = cli("cancel", str(row[0]), "--reason", "again", "--dsn", busy)
    assert again.exit_code == 2 and "is cancelled already" in again.output
    assert cli("retry", str(row[0]), "--dsn", busy).exit_code == 0
    assert _states(busy)["12"] == "pending"
