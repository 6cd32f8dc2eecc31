"""What an archived file must be, and whether an invoice XML says what we recorded.

The XML's element paths are the bureau's (《数字化电子发票版式及XML规范》 V5.002 §四 1.1, the
same document cdc_invoice/sandbox/files.py follows): the number in TaxSupervisionInfo/
InvoiceNumber (and Header/EIid), the date in TaxSupervisionInfo/IssueTime, the parties' tax
numbers in EInvoiceData/{Seller,Buyer}Information, the totals in EInvoiceData/BasicInformation.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from xml.etree import ElementTree as ET

CENT = Decimal("0.01")


class BadFile(ValueError):
    """The bytes are not the kind of file they claim to be (fetch again, do not keep)."""


def _xml(body: bytes) -> ET.Element:
    # Invoice XML has no DTD; refusing one closes the entity-expansion attacks (what defusedxml
    # guards against) before expat sees it. ElementTree never fetches external entities.
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise BadFile("XML with a DTD or entity declarations refused")
    try:
        return ET.fromstring(body)  # noqa: S314 - DTDs refused above
    except ET.ParseError as exc:
        raise BadFile(f"not well-formed XML: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Recorded:
    """The facts of a recorded invoice that its XML must repeat."""

    invoice_number: str
    issue_date: date  # in China time, as the invoice prints it
    seller_tax_number: str
    buyer_tax_number: str | None
    total_excl_tax: Decimal
    total_tax: Decimal
    total_incl_tax: Decimal
    kind: str = "blue"
    original_invoice_number: str | None = None


_PATHS = {
    "invoice_number": "TaxSupervisionInfo/InvoiceNumber",
    "eiid": "Header/EIid",
    "issue_date": "TaxSupervisionInfo/IssueTime",
    "seller_tax_number": "EInvoiceData/SellerInformation/SellerIdNum",
    "buyer_tax_number": "EInvoiceData/BuyerInformation/BuyerIdNum",
    "total_excl_tax": "EInvoiceData/BasicInformation/TotalAmWithoutTax",
    "total_tax": "EInvoiceData/BasicInformation/TotalTaxAm",
    "total_incl_tax": "EInvoiceData/BasicInformation/TotalTax-includedAmount",
    "blue_flag": "Header/InherentLabel/InIssuType/LabelCode",
    "original_invoice_number": "EInvoiceData/SpecificInformation/RedEInvoice/OriginalInvoiceCode",
}


def parse_xml(body: bytes) -> dict[str, str | None]:
    """The elements we check, by name (None when absent). BadFile if it is not an EInvoice."""
    root = _xml(body)
    if root.tag != "EInvoice":
        raise BadFile(f"XML root is <{root.tag}>, not <EInvoice>")
    out: dict[str, str | None] = {}
    for name, path in _PATHS.items():
        el = root.find(path)
        out[name] = None if el is None else (el.text or "").strip()
    return out


def _money(raw: str | None) -> Decimal | None:
    try:
        return Decimal(raw).quantize(CENT) if raw else None
    except InvalidOperation:
        return None


def compare_xml(body: bytes, rec: Recorded) -> list[str]:
    """Differences between the XML and the record, one sentence each ([] = it matches)."""
    x = parse_xml(body)
    problems = []

    def differ(what: str, found: object, expected: object) -> None:
        if found != expected:
            problems.append(f"{what}: the XML says {found!r}, we recorded {expected!r}")

    differ("invoice number", x["invoice_number"], rec.invoice_number)
    if x["eiid"] is not None:
        differ("EIid", x["eiid"], rec.invoice_number)
    differ("issue date", x["issue_date"], rec.issue_date.isoformat())
    differ("seller tax number", x["seller_tax_number"], rec.seller_tax_number)
    differ("buyer tax number", x["buyer_tax_number"] or None, rec.buyer_tax_number or None)
    for field in ("total_excl_tax", "total_tax", "total_incl_tax"):
        found = _money(x[field])
        expected: Decimal = getattr(rec, field)
        differ(field.replace("_", " "), None if found is None else str(found), str(expected))
    if x["blue_flag"] is not None:
        differ("blue/red flag", x["blue_flag"], "Y" if rec.kind == "blue" else "N")
    if rec.kind == "red" and rec.original_invoice_number:
        differ("reversed invoice number", x["original_invoice_number"], rec.original_invoice_number)
    return problems


_STARTXREF = re.compile(rb"startxref\s+(\d+)\s+%%EOF\s*$")


def check_pdf(body: bytes) -> None:
    """A PDF a reader can open: header, trailer, and a startxref that points at the xref."""
    if not body.startswith(b"%PDF-"):
        raise BadFile("not a PDF (no %PDF- header)")
    m = _STARTXREF.search(body[-1024:])
    if m is None:
        raise BadFile("PDF is truncated (no startxref / %%EOF at the end)")
    offset = int(m.group(1))
    # A classic table starts with "xref"; a PDF 1.5 cross-reference stream with "N 0 obj".
    at = body[offset : offset + 20]
    if not (at.startswith(b"xref") or re.match(rb"\d+ \d+ obj", at)):
        raise BadFile(f"PDF startxref {offset} does not point at a cross-reference section")


def check_ofd(body: bytes) -> None:
    """An OFD container: a zip whose entry OFD.xml is well-formed XML."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            entry = zf.read("OFD.xml")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise BadFile(f"not an OFD container (a zip with OFD.xml): {exc}") from exc
    try:
        _xml(entry)
    except BadFile as exc:
        raise BadFile(f"OFD.xml: {exc}") from exc


def check(kind: str, body: bytes, rec: Recorded) -> list[str]:
    """BadFile if the bytes are not a ``kind`` file; else the XML's differences (pdf/ofd: [])."""
    if not body:
        raise BadFile("empty file")
    if kind == "pdf":
        check_pdf(body)
        return []
    if kind == "ofd":
        check_ofd(body)
        return []
    if kind == "xml":
        return compare_xml(body, rec)
    raise BadFile(f"unknown file kind {kind!r}")
