"""`cdc-invoice archive`: the invoice files (XML, PDF, OFD) kept in the company's own archive."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cdc_invoice.commands.common import dsn_option

# Invoices without their XML are listed up to this many (a fresh upgrade may have thousands).
LISTED = 20


@click.group()
def archive() -> None:
    """The archived invoice files: verify them, export a month for the auditors, retry fetches.

    The daemon fetches every recorded invoice's XML (the legal original under 数电), PDF and OFD
    into cdc_invoice.invoice_file (or daemon.archive_dir) and checks the XML against the record.
    """


def _print(report: object, *, quiet_ok: bool = False) -> None:
    from cdc_invoice.archive.audit import Report

    assert isinstance(report, Report)
    pending = report.of("not archived")
    for f in [f for f in report.findings if f.problem != "not archived"] + pending[:LISTED]:
        click.echo(f"{f.problem}: invoice {f.invoice_number} {f.file_kind}: {f.detail}")
    if len(pending) > LISTED:
        click.echo(
            f"… and {len(pending) - LISTED} more without an archived XML "
            "(all of them: cdc-invoice report archive_missing_xml)"
        )
    bad = report.of("missing", "altered", "record differs")
    mismatched = report.of("mismatch since fetch")
    click.echo(
        f"{report.checked} file(s) checked: {report.checked - len(bad)} intact, "
        f"{len(report.of('missing'))} missing, {len(report.of('altered'))} altered, "
        f"{len(report.of('record differs'))} no longer matching their invoice; "
        f"{len(mismatched)} kept with a mismatch since fetched; "
        f"{len(pending)} invoice(s) without an archived XML"
    )
    if bad:
        click.echo(
            "  fix: restore the files from a backup or an earlier `archive export` (the sha256 "
            "is in cdc_invoice.invoice_file), and find out who changed them",
            err=True,
        )


@archive.command()
@dsn_option
@click.option("--month", default=None, help="only invoices issued in this month (YYYY-MM)")
def verify(dsn: str, month: str | None) -> None:
    """Re-hash every archived file and re-check every XML against its invoice.

    Exits 1 if a file is missing, altered (its SHA-256 is not the one archived), or an XML no
    longer says what the invoice record says; lists invoices whose XML is not archived yet.
    """
    from cdc_invoice.archive import audit

    report = audit.verify(dsn, month)
    _print(report)
    sys.exit(1 if report.failed else 0)


@archive.command()
@dsn_option
@click.option("--month", required=True, help="the issue month (YYYY-MM, China time)")
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="a new or empty directory",
)
def export(dsn: str, month: str, to: Path) -> None:
    """Write a month's invoice files, index.csv and SHA256SUMS into a directory.

    Each file is checked on the way out; one that is missing or altered is not written, its
    index row says why, and the command exits 1.
    """
    from cdc_invoice.archive import audit

    report, written = audit.export(dsn, month, to)
    _print(report)
    click.echo(f"wrote {written} file(s), index.csv and SHA256SUMS to {to}")
    sys.exit(1 if report.failed else 0)


@archive.command()
@dsn_option
@click.option("--invoice", "invoice_number", default=None, help="only this invoice's files")
def retry(dsn: str, invoice_number: str | None) -> None:
    """Fetch again the files given up on (listed in cdc_invoice.report_archive_open)."""
    from cdc_invoice.archive import audit

    n = audit.retry(dsn, invoice_number)
    click.echo(f"{n} file fetch(es) back in the queue")


COMMANDS = [archive]
