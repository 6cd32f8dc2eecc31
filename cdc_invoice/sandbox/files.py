"""The invoice files the sandbox serves at /_sandbox/files/{serial}.{xml|pdf|ofd|jpg}.

XML: the bureau's 数电 layout, element names from 《数字化电子发票版式及XML规范》 V5.002 §四
"XML格式" 1.1/1.2 (qinqiang2000/agent-harness, agent_cwd/.claude/skills/invoice-ticket-service/
reference/FAQ/数字化电子发票版式及XML规范V5.002.md): Header/EIid, InherentLabel/InIssuType (Y blue,
N red), EInvoiceData/SellerInformation/SellerIdNum, BuyerInformation/BuyerIdNum,
BasicInformation/TotalAmWithoutTax, TotalTaxAm, TotalTax-includedAmount, IssuItemInformation
(one per line), SpecificInformation/RedEInvoice/OriginalInvoiceCode, and
TaxSupervisionInfo/InvoiceNumber + IssueTime (yyyy-MM-dd). Only the elements this project
records are filled; the rest of the spec (labels, bureau codes) is left out.

PDF: a one-page PDF 1.4 written here (no library), with a correct cross-reference table, so a
reader opens it. Its text is ASCII (the standard Helvetica font has no Chinese glyphs).
OFD: a zip holding OFD.xml, as the OFD container starts; the page content is not modelled.
"""

from __future__ import annotations

import io
import zipfile
from xml.etree import ElementTree as ET

from cdc_invoice.sandbox import numbers
from cdc_invoice.sandbox.fields import money
from cdc_invoice.sandbox.model import Invoice

CONTENT_TYPES = {
    "xml": "application/xml",
    "pdf": "application/pdf",
    "ofd": "application/ofd",
    "jpg": "image/jpeg",
}
_JPG = b"\xff\xd8\xff\xe0 cdc-invoice sandbox stand-in"


def render(invoice: Invoice, ext: str) -> bytes:
    if ext == "xml":
        return invoice_xml(invoice)
    if ext == "pdf":
        return invoice_pdf(invoice)
    if ext == "ofd":
        return invoice_ofd(invoice)
    if ext == "jpg":
        return _JPG
    raise KeyError(ext)


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = text
    return el


def invoice_xml(invoice: Invoice) -> bytes:
    assert invoice.issued_at is not None
    issued = numbers.cst(invoice.issued_at)
    root = ET.Element("EInvoice")
    header = _sub(root, "Header")
    _sub(header, "EIid", invoice.number)
    _sub(header, "Version", "0.36")
    labels = _sub(header, "InherentLabel")
    issue_type = _sub(labels, "InIssuType")
    _sub(issue_type, "LabelCode", "Y" if invoice.kind == "blue" else "N")
    _sub(issue_type, "LabelName", "是否蓝字发票标志")
    vat = _sub(labels, "GeneralOrSpecialVAT")
    special = invoice.invoice_line in ("bs", "es")
    _sub(vat, "LabelCode", "01" if special else "02")
    _sub(vat, "LabelName", "增值税专用发票" if special else "普通发票")

    data = _sub(root, "EInvoiceData")
    seller = _sub(data, "SellerInformation")
    _sub(seller, "SellerIdNum", invoice.seller_tax)
    _sub(seller, "SellerName", invoice.extra.get("salerName", ""))
    _sub(seller, "SellerAddr", invoice.extra.get("salerAddress", ""))
    _sub(seller, "SellerTelNum", invoice.extra.get("salerTel", ""))
    buyer = _sub(data, "BuyerInformation")
    _sub(buyer, "BuyerIdNum", invoice.buyer.tax_no)
    _sub(buyer, "BuyerName", invoice.buyer.name)
    _sub(buyer, "BuyerAddr", invoice.buyer.address)
    _sub(buyer, "BuyerTelNum", invoice.buyer.tel)
    basic = _sub(data, "BasicInformation")
    _sub(basic, "TotalAmWithoutTax", money(invoice.total_ex))
    _sub(basic, "TotalTaxAm", money(invoice.total_tax))
    _sub(basic, "TotalTax-includedAmount", money(invoice.total_incl))
    _sub(basic, "Drawer", invoice.extra.get("clerk", ""))
    _sub(basic, "RequestTime", f"{issued:%Y-%m-%d %H:%M:%S}")
    for line in invoice.lines:
        item = _sub(data, "IssuItemInformation")
        _sub(item, "ItemName", line.name)
        _sub(item, "SpecMod", line.spec)
        _sub(item, "MeaUnits", line.unit)
        _sub(item, "Quantity", "" if line.num is None else format(line.num.normalize(), "f"))
        _sub(item, "UnPrice", "" if line.price is None else format(line.price.normalize(), "f"))
        _sub(item, "Amount", money(line.ex))
        _sub(item, "TaxRate", f"{line.rate:.6f}")
        _sub(item, "ComTaxAm", money(line.tax))
        _sub(item, "TotaltaxIncludedAmount", money(line.incl))
        _sub(item, "TaxClassificationCode", line.goods_code)
    if invoice.kind == "red":
        red = _sub(_sub(data, "SpecificInformation"), "RedEInvoice")
        _sub(red, "OriginalInvoiceCode", invoice.original_number)
        _sub(red, "CreditNoteNumber", invoice.bill_no)
    supervision = _sub(root, "TaxSupervisionInfo")
    _sub(supervision, "InvoiceNumber", invoice.number)
    _sub(supervision, "IssueTime", f"{issued:%Y-%m-%d}")
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body


def _pdf_text(value: str) -> str:
    ascii_only = value.encode("ascii", "replace").decode("ascii")
    return ascii_only.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def invoice_pdf(invoice: Invoice) -> bytes:
    assert invoice.issued_at is not None
    lines = [
        f"{'Red' if invoice.kind == 'red' else 'Blue'} e-invoice {invoice.number}",
        f"Date: {numbers.cst(invoice.issued_at):%Y-%m-%d}",
        f"Seller tax number: {invoice.seller_tax}",
        f"Buyer tax number: {invoice.buyer.tax_no or '-'}",
        f"Total excl. tax: {money(invoice.total_ex)}",
        f"Tax: {money(invoice.total_tax)}",
        f"Total incl. tax: {money(invoice.total_incl)}",
        "cdc-invoice sandbox: not a legal invoice",
    ]
    text = "BT /F1 11 Tf 14 TL 50 780 Td " + " ".join(f"({_pdf_text(x)}) '" for x in lines) + " ET"
    stream = text.encode("ascii")
    return build_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
            b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        ]
    )


def build_pdf(objects: list[bytes]) -> bytes:
    """A PDF file of ``objects`` (numbered from 1; object 1 is the catalog) with its xref."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def invoice_ofd(invoice: Invoice) -> bytes:
    ns = "http://www.ofdspec.org/2016"
    root = ET.Element(f"{{{ns}}}OFD", {"Version": "1.0", "DocType": "OFD"})
    body = ET.SubElement(root, f"{{{ns}}}DocBody")
    info = ET.SubElement(body, f"{{{ns}}}DocInfo")
    ET.SubElement(info, f"{{{ns}}}DocID").text = invoice.number
    ET.SubElement(body, f"{{{ns}}}DocRoot").text = "Doc_0/Document.xml"
    buf = io.BytesIO()
    # Fixed timestamps: the same invoice gives the same bytes, as a platform's stored file does.
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        entry = zipfile.ZipInfo("OFD.xml", date_time=(2020, 1, 1, 0, 0, 0))
        zf.writestr(entry, ET.tostring(root, encoding="utf-8", xml_declaration=True))
    return buf.getvalue()
