"""The finance guide does what it says: every block runs, in order, against example invoices.

```sql blocks run through psycopg, ```sh blocks in bash with DSN set and cdc-invoice on PATH;
a block preceded by "<!-- not run: why -->" is skipped. A block preceded by "<!-- as ROLE -->"
runs as that role (SET ROLE for SQL, PGOPTIONS=-c role=… for the command line): every step of
the finance guide names the role the guide tells finance to use, and runs with its rights only.
Then the effects are checked: the reversals, deliveries and retries it asked for are queued.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import subprocess
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

DOCS = Path(__file__).parents[2] / "docs"
BLOCK = re.compile(
    r"(?:<!-- (?P<note>[^\n]*?) -->\n)?^```(?P<lang>[a-z]*)\n(?P<code>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)


ROLE_NOTE = re.compile(r"as (cdc_invoice_[a-z]+)")


def run_blocks(
    doc: Path,
    dsn: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    *,
    require_role: bool = False,
) -> list[tuple[str, str]]:
    """Every runnable block of ``doc``, in order: (code, what it printed or returned)."""
    out: list[tuple[str, str]] = []
    found = [
        m
        for m in BLOCK.finditer(doc.read_text(encoding="utf-8"))
        if m["lang"] in ("sh", "sql") and not (m["note"] or "").startswith("not run")
    ]
    assert found, f"no runnable blocks in {doc}"
    if require_role:
        unnamed = [m["code"] for m in found if not ROLE_NOTE.fullmatch(m["note"] or "")]
        assert not unnamed, f"{doc.name}: blocks that name no role: {unnamed}"
    shell_env = {
        **os.environ,
        "DSN": dsn,
        "COLUMNS": "200",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **(env or {}),
    }
    for m in found:
        code = m["code"]
        role = ROLE_NOTE.fullmatch(m["note"] or "")
        if m["lang"] == "sql":
            with psycopg.connect(dsn, autocommit=True) as conn:
                try:
                    if role:
                        conn.execute(f"SET ROLE {role[1]}")
                    cur = conn.execute(code)
                    out.append((code, repr(cur.fetchall() if cur.description else cur.rowcount)))
                except psycopg.Error as exc:
                    pytest.fail(f"{doc.name}: SQL block failed: {exc}\n{code}")
            continue
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", code],
            cwd=cwd,
            env={**shell_env, "PGOPTIONS": f"-c role={role[1]}"} if role else shell_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(
                f"{doc.name}: shell block exited {done.returncode}:\n{code}\n"
                f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
            )
        out.append((code, done.stdout))
    return out


def output_of(blocks: list[tuple[str, str]], fragment: str) -> str:
    [found] = [o for code, o in blocks if fragment in code]
    return found


def invoice(
    conn: psycopg.Connection[tuple[object, ...]],
    order_ref: str,
    number: str,
    issued: str,
    lines: list[tuple[str, str, str, str]],  # (rate, quantity, excl, tax)
    buyer: str = "杭州示例贸易有限公司",
    remark: str | None = None,
) -> None:
    row = conn.execute(
        "INSERT INTO cdc_invoice.request (source, order_ref, kind, state, done_at) "
        "VALUES ('shop', %s, 'issue', 'done', now()) RETURNING id",
        (order_ref,),
    ).fetchone()
    assert row is not None
    excl = sum(Decimal(e) for _, _, e, _ in lines)
    tax = sum(Decimal(t) for _, _, _, t in lines)
    inv = conn.execute(
        "INSERT INTO cdc_invoice.invoice (request_id, source, order_ref, seller_id, "
        "invoice_number, kind, platform_serial, platform_order_no, issued_at, buyer_name, "
        "total_excl_tax, total_tax, total_incl_tax, remark) "
        "VALUES (%s, 'shop', %s, 'main', %s, 'blue', %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (
            row[0],
            order_ref,
            number,
            "S" + number,
            "O" + number,
            datetime.fromisoformat(issued),
            buyer,
            excl,
            tax,
            excl + tax,
            remark,
        ),
    ).fetchone()
    assert inv is not None
    for i, (rate, qty, e, t) in enumerate(lines, start=1):
        conn.execute(
            "INSERT INTO cdc_invoice.invoice_line (invoice_id, line_no, item_name, quantity, "
            "unit_price, amount_excl_tax, tax_rate, tax, amount_incl_tax) "
            "VALUES (%s, %s, '商品', %s, %s, %s, %s, %s, %s)",
            (
                inv[0],
                i,
                Decimal(qty),
                (Decimal(e) + Decimal(t)) / Decimal(qty),
                Decimal(e),
                Decimal(rate),
                Decimal(t),
                Decimal(e) + Decimal(t),
            ),
        )


def test_every_statement_of_the_finance_guide_works(shop_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        invoice(
            conn,
            "1001",
            "25330000000000000001",
            "2025-02-03 10:00+08",
            [("0.13", "1", "100.00", "13.00"), ("0.09", "2", "50.00", "4.50")],
        )
        invoice(
            conn,
            "1002",
            "25330000000000000002",
            "2025-02-04 10:00+08",
            [("0.13", "1", "200.00", "26.00")],
            buyer="上海样板科技有限公司",
        )
        invoice(
            conn,
            "1004",
            "25330000000000000004",
            "2025-02-05 10:00+08",
            [("0.13", "5", "500.00", "65.00")],
            remark="采购订单 PO-2025-0188",
        )
        invoice(
            conn,
            "1005",
            "25330000000000000005",
            "2025-02-06 10:00+08",
            [("0.06", "1", "300.00", "18.00")],
        )
        conn.execute(
            "INSERT INTO cdc_invoice.request (source, order_ref, kind, state, attempt, "
            "last_error, error_code, hint) VALUES ('shop', '1003', 'issue', 'failed', 1, "
            "'order ''1003'': item P-NEW has no tax mapping', 'MAPPING', "
            "'INSERT INTO cdc_invoice.item_tax …')"
        )
        # The first invoice's XML in the archive, as the daemon keeps it (tests/db/test_archive_fetch.py).
        xml = (
            b"<EInvoice><EInvoiceData><SellerInformation><SellerIdNum>339902999999789113"
            b"</SellerIdNum></SellerInformation><BasicInformation><TotalAmWithoutTax>150.00"
            b"</TotalAmWithoutTax><TotalTaxAm>17.50</TotalTaxAm><TotalTax-includedAmount>167.50"
            b"</TotalTax-includedAmount></BasicInformation></EInvoiceData><TaxSupervisionInfo>"
            b"<InvoiceNumber>25330000000000000001</InvoiceNumber><IssueTime>2025-02-03"
            b"</IssueTime></TaxSupervisionInfo></EInvoice>"
        )
        conn.execute(
            "INSERT INTO cdc_invoice.invoice_file (invoice_id, kind, bytes, size, sha256, "
            "fetched_by, source_url, check_result) SELECT id, 'xml', %s, %s, %s, 'daemon', "
            "'https://example.invalid/1.xml', 'ok' FROM cdc_invoice.invoice "
            "WHERE invoice_number = '25330000000000000001'",
            (xml, len(xml), hashlib.sha256(xml).hexdigest()),
        )
        # An order shipped before the shop was attached: captured by nobody.
        conn.execute("ALTER TABLE shop.orders DISABLE TRIGGER USER")
        conn.execute("INSERT INTO shop.orders (customer_id, status) VALUES ('C001', 'shipped')")
        conn.execute("ALTER TABLE shop.orders ENABLE TRIGGER USER")
        # the DBA's grant the guide asks for, on the inventory's own table
        conn.execute("GRANT USAGE ON SCHEMA shop TO cdc_invoice_reader")
        conn.execute("GRANT SELECT ON shop.orders TO cdc_invoice_reader")

    out = run_blocks(DOCS / "finance-guide.md", shop_dsn, tmp_path, require_role=True)

    assert (tmp_path / "register-2025-02.csv").read_text().count("\n") == 1 + 4
    assert "1 file(s) checked: 1 intact" in output_of(out, "cdc-invoice archive verify")
    audit = tmp_path / "audit-2025-02"
    assert (audit / "25330000000000000001.xml").read_bytes() == xml
    with (audit / "index.csv").open(encoding="utf-8-sig", newline="") as f:
        index = [(r["invoice_number"], r["file_name"], r["integrity"]) for r in csv.DictReader(f)]
    assert index == [
        ("25330000000000000001", "25330000000000000001.xml", "ok"),
        *((f"2533000000000000000{n}", "", "not archived: no link") for n in (2, 4, 5)),
    ]
    assert "25330000000000000001.xml: OK" in output_of(out, "sha256sum -c SHA256SUMS")
    net = output_of(out, "AS net_excl_tax")
    assert net == repr(
        [
            (Decimal("0.0600"), Decimal("300.00"), Decimal("18.00"), Decimal("318.00")),
            (Decimal("0.0900"), Decimal("50.00"), Decimal("4.50"), Decimal("54.50")),
            (Decimal("0.1300"), Decimal("800.00"), Decimal("104.00"), Decimal("904.00")),
        ]
    )
    assert "上海样板科技有限公司" in output_of(out, "FROM cdc_invoice.report_by_buyer")
    assert output_of(out, "SELECT invoice_number, order_ref, remark") == repr(
        [("25330000000000000004", "1004", "采购订单 PO-2025-0188")]
    )
    assert "remark" in (tmp_path / "register-2025-02.csv").read_text().splitlines()[0]
    assert "采购订单 PO-2025-0188" in (tmp_path / "register-2025-02.csv").read_text()
    # the operator reads the lines to name in a partial reversal (unit price 565.00 / 5 = 113)
    assert output_of(out, "SELECT l.line_no, l.item_name") == repr(
        [(1, "商品", Decimal("5.00000000"), Decimal("113.00000000"), Decimal("565.00"))]
    )
    assert "'1003', 'failed'" in output_of(
        out, "FROM cdc_invoice.report_open\n WHERE kind = 'issue'"
    )
    with psycopg.connect(shop_dsn) as conn:
        uncaptured = conn.execute("SELECT max(order_id) FROM shop.orders").fetchone()
    assert uncaptured is not None
    assert output_of(out, "FROM shop.orders o").startswith(f"[({uncaptured[0]}, 'shipped'")
    with psycopg.connect(shop_dsn) as conn:
        asked = conn.execute(
            "SELECT i.invoice_number, r.kind, r.params ->> 'reason', r.params -> 'lines' "
            "FROM cdc_invoice.request r JOIN cdc_invoice.invoice i ON i.id = r.invoice_id "
            "ORDER BY r.id"
        ).fetchall()
        assert asked == [
            ("25330000000000000001", "reverse", "2", None),
            ("25330000000000000004", "reverse", "1", [{"line_no": 1, "quantity": 2}]),
            ("25330000000000000005", "reverse", "4", [{"line_no": 1, "amount": Decimal("10.00")}]),
            ("25330000000000000002", "deliver", None, None),
            ("25330000000000000002", "deliver", None, None),
            ("25330000000000000002", "refresh", None, None),
        ]
        retried = conn.execute(
            "SELECT state FROM cdc_invoice.request WHERE order_ref = '1003'"
        ).fetchone()
        assert retried == ("pending",)
