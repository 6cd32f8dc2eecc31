"""`cdc-invoice archive verify / export / retry`: the archive as finance and auditors use it.

Synchronous (these are CLI commands) and read-only except ``retry``. Reading needs only the
cdc_invoice_reader role (report_archive_* views, invoice_file); ``retry`` needs the operator's.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from cdc_invoice.archive import check, keep
from cdc_invoice.db.queries import q
from cdc_invoice.errors import CdcInvoiceError

QUERIES = "archive_queries.sql"
MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
INDEX_COLUMNS = (
    "invoice_number",
    "invoice_kind",
    "issue_date",
    "seller_tax_number",
    "buyer_name",
    "buyer_tax_number",
    "total_excl_tax",
    "total_tax",
    "total_incl_tax",
    "original_invoice_number",
    "file_kind",
    "file_name",
    "size",
    "sha256",
    "fetched_at",
    "source_url",
    "content_check",
    "integrity",
)


@dataclass(slots=True)
class Finding:
    invoice_number: str
    file_kind: str
    problem: str  # missing | altered | record differs | mismatch since fetch | not archived
    detail: str


@dataclass(slots=True)
class Report:
    checked: int = 0
    findings: list[Finding] = field(default_factory=list)

    def of(self, *problems: str) -> list[Finding]:
        return [f for f in self.findings if f.problem in problems]

    @property
    def failed(self) -> bool:
        """Missing or altered files, or records changed since: `verify` exits 1."""
        return bool(self.of("missing", "altered", "record differs"))


def check_month(month: str | None) -> str | None:
    if month is not None and not MONTH.match(month):
        raise CdcInvoiceError(
            f"--month must be YYYY-MM, got {month!r}", hint="e.g. --month 2026-11"
        )
    return month


def _rows(conn: psycopg.Connection[Any], month: str | None) -> Iterator[dict[str, Any]]:
    # A named (server-side) cursor: a month of PDFs is not loaded into memory at once.
    with conn.cursor(name="archive_files", row_factory=dict_row) as cur:
        cur.itersize = 50
        cur.execute(q("archive_files", QUERIES), {"month": month})
        yield from cur


def _content(row: dict[str, Any]) -> tuple[bytes | None, str]:
    """The kept bytes and what is wrong with them ("" when they are as archived)."""
    body: bytes | None = row["bytes"]
    if body is None:
        try:
            body = Path(row["path"]).read_bytes()
        except OSError as exc:
            return None, f"missing: cannot read {row['path']}: {exc.strerror}"
    elif isinstance(body, memoryview):
        body = bytes(body)
    sha = keep.digest(body)
    if sha != row["sha256"] or len(body) != row["size"]:
        where = row["path"] or "cdc_invoice.invoice_file.bytes"
        return body, (
            f"altered: {where} has sha256 {sha} ({len(body)} bytes), "
            f"archived {row['sha256']} ({row['size']} bytes)"
        )
    return body, ""


def _recheck(row: dict[str, Any], body: bytes) -> list[str]:
    if row["file_kind"] != "xml":
        return []
    rec = check.Recorded(
        invoice_number=row["invoice_number"],
        issue_date=row["issue_date"],
        seller_tax_number=row["seller_tax_number"],
        buyer_tax_number=row["buyer_tax_number"],
        total_excl_tax=row["total_excl_tax"],
        total_tax=row["total_tax"],
        total_incl_tax=row["total_incl_tax"],
        kind=row["invoice_kind"],
        original_invoice_number=row["original_invoice_number"],
    )
    try:
        return check.compare_xml(body, rec)
    except check.BadFile as exc:
        return [str(exc)]


def _judge(row: dict[str, Any], report: Report) -> tuple[bytes | None, str]:
    """Check one file; record findings. Returns its bytes (None if missing) and integrity."""
    report.checked += 1
    number, kind = row["invoice_number"], row["file_kind"]
    body, wrong = _content(row)
    if wrong:
        problem, _, detail = wrong.partition(": ")
        report.findings.append(Finding(number, kind, problem, detail))
        return body, problem
    assert body is not None
    differences = _recheck(row, body)
    if row["check_result"] == "mismatch":
        report.findings.append(
            Finding(number, kind, "mismatch since fetch", row["check_detail"] or "")
        )
    elif differences:
        report.findings.append(Finding(number, kind, "record differs", "; ".join(differences)))
        return body, "record differs"
    return body, "ok"


def _not_kept(
    conn: psycopg.Connection[Any], month: str | None, report: Report
) -> list[dict[str, Any]]:
    """Invoices without an archived XML (listed, not a verify failure: see report_archive_open)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(q("archive_not_kept", QUERIES), {"month": month})
        rows = cur.fetchall()
    for r in rows:
        why = r["fetch_state"] + (f" ({r['last_error']})" if r["last_error"] else "")
        r["integrity"] = f"not archived: {why}"
        report.findings.append(Finding(r["invoice_number"], "xml", "not archived", why))
    return rows


def verify(dsn: str, month: str | None = None) -> Report:
    """Re-hash every archived file (or a month's) and re-check each XML against its invoice."""
    report = Report()
    with psycopg.connect(dsn) as conn:
        for row in _rows(conn, check_month(month)):
            _judge(row, report)
        _not_kept(conn, month, report)
    return report


def export(dsn: str, month: str, to: Path) -> tuple[Report, int]:
    """Write ``month``'s files, index.csv and SHA256SUMS into ``to``; returns (report, files)."""
    check_month(month)
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise CdcInvoiceError(
            f"{to} exists and is not an empty directory",
            hint="name a new or empty directory: an export never overwrites files",
        )
    to.mkdir(parents=True, exist_ok=True)
    report = Report()
    written = 0
    sums = []
    with (
        psycopg.connect(dsn) as conn,
        (to / "index.csv").open("w", newline="", encoding="utf-8-sig") as index,
    ):
        # utf-8-sig: Excel (what finance opens it with) reads the buyer names right.
        out = csv.DictWriter(index, INDEX_COLUMNS)
        out.writeheader()
        for row in _rows(conn, month):
            body, integrity = _judge(row, report)
            name = f"{row['invoice_number']}.{row['file_kind']}"
            if body is not None and integrity in ("ok", "record differs"):
                (to / name).write_bytes(body)
                sums.append(f"{row['sha256']}  {name}\n")
                written += 1
            else:
                name = ""
            out.writerow(
                {
                    **{k: row.get(k) for k in INDEX_COLUMNS},
                    "file_name": name,
                    "fetched_at": row["fetched_at"].isoformat(),
                    "content_check": row["check_result"],
                    "integrity": integrity,
                }
            )
        # Completeness for the auditors: the month's invoices whose XML is not in the archive.
        for r in _not_kept(conn, month, report):
            out.writerow({**{k: r.get(k) for k in INDEX_COLUMNS}, "file_kind": "xml"})
    (to / "SHA256SUMS").write_text("".join(sums), encoding="utf-8")
    return report, written


def retry(dsn: str, invoice_number: str | None) -> int:
    """Failed fetches back to pending; returns how many."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            q("archive_retry_failed", QUERIES), {"invoice_number": invoice_number}
        ).fetchall()
    return len(rows)
