"""The sandbox's invoice files are real enough to check, and the archive's checks catch lies.

XML element paths: 《数字化电子发票版式及XML规范》 V5.002 §四 1.1 and the 1.2 sample
(qinqiang2000/agent-harness …/reference/FAQ/数字化电子发票版式及XML规范V5.002.md).
"""

from __future__ import annotations

import dataclasses
import io
import re
import zipfile
from datetime import date, datetime
from decimal import Decimal
from xml.etree import ElementTree as ET

import pytest

from cdc_invoice.archive import check
from cdc_invoice.sandbox import files
from cdc_invoice.sandbox.model import Buyer, Invoice, Line

SELLER = "91330100MA27XL0E2K"
BUYER = "91330100MA2B3C4D5E"
# 23:30 in China on 30 Nov is 15:30 UTC: the invoice date is China's.
ISSUED = datetime.fromisoformat("2026-11-30 23:30+08:00").timestamp()


def invoice(kind: str = "blue") -> Invoice:
    sign = Decimal(-1) if kind == "red" else Decimal(1)
    return Invoice(
        serial="26113023300000000001",
        order_no="O1",
        seller_tax=SELLER,
        invoice_line="bs",
        kind="red" if kind == "red" else "blue",
        buyer=Buyer(name="杭州示例贸易有限公司", tax_no=BUYER),
        lines=(
            Line(
                1,
                '*计算机*笔记本 (15")',
                "1090511030000000000",
                Decimal("0.13"),
                sign * Decimal("100.00"),
                sign * Decimal("13.00"),
                price=Decimal("113.00"),
                num=sign,
            ),
        ),
        total_ex=sign * Decimal("100.00"),
        total_tax=sign * Decimal("13.00"),
        submitted_at=ISSUED,
        due_at=ISSUED,
        status="2",
        number="26332000000000000009" if kind == "red" else "26332000000000000001",
        issued_at=ISSUED,
        original_number="26332000000000000001" if kind == "red" else "",
    )


def recorded(inv: Invoice) -> check.Recorded:
    return check.Recorded(
        invoice_number=inv.number,
        issue_date=date(2026, 11, 30),
        seller_tax_number=SELLER,
        buyer_tax_number=BUYER,
        total_excl_tax=inv.total_ex,
        total_tax=inv.total_tax,
        total_incl_tax=inv.total_incl,
        kind=inv.kind,
        original_invoice_number=inv.original_number or None,
    )


def test_xml_follows_the_bureau_layout() -> None:
    root = ET.fromstring(files.invoice_xml(invoice()))
    assert root.tag == "EInvoice"
    text = {
        path: root.findtext(path)
        for path in (
            "Header/EIid",
            "Header/InherentLabel/InIssuType/LabelCode",
            "Header/InherentLabel/GeneralOrSpecialVAT/LabelCode",
            "EInvoiceData/SellerInformation/SellerIdNum",
            "EInvoiceData/BuyerInformation/BuyerIdNum",
            "EInvoiceData/BuyerInformation/BuyerName",
            "EInvoiceData/BasicInformation/TotalAmWithoutTax",
            "EInvoiceData/BasicInformation/TotalTaxAm",
            "EInvoiceData/BasicInformation/TotalTax-includedAmount",
            "EInvoiceData/BasicInformation/RequestTime",
            "TaxSupervisionInfo/InvoiceNumber",
            "TaxSupervisionInfo/IssueTime",
        )
    }
    assert text == {
        "Header/EIid": "26332000000000000001",
        "Header/InherentLabel/InIssuType/LabelCode": "Y",
        "Header/InherentLabel/GeneralOrSpecialVAT/LabelCode": "01",  # bs: 增值税专用发票
        "EInvoiceData/SellerInformation/SellerIdNum": SELLER,
        "EInvoiceData/BuyerInformation/BuyerIdNum": BUYER,
        "EInvoiceData/BuyerInformation/BuyerName": "杭州示例贸易有限公司",
        "EInvoiceData/BasicInformation/TotalAmWithoutTax": "100.00",
        "EInvoiceData/BasicInformation/TotalTaxAm": "13.00",
        "EInvoiceData/BasicInformation/TotalTax-includedAmount": "113.00",
        "EInvoiceData/BasicInformation/RequestTime": "2026-11-30 23:30:00",
        "TaxSupervisionInfo/InvoiceNumber": "26332000000000000001",
        "TaxSupervisionInfo/IssueTime": "2026-11-30",
    }
    [item] = root.findall("EInvoiceData/IssuItemInformation")
    assert [(c.tag, c.text) for c in item] == [
        ("ItemName", '*计算机*笔记本 (15")'),
        ("SpecMod", None),
        ("MeaUnits", None),
        ("Quantity", "1"),
        ("UnPrice", "113"),
        ("Amount", "100.00"),
        ("TaxRate", "0.130000"),
        ("ComTaxAm", "13.00"),
        ("TotaltaxIncludedAmount", "113.00"),
        ("TaxClassificationCode", "1090511030000000000"),
    ]
    assert check.compare_xml(files.invoice_xml(invoice()), recorded(invoice())) == []


def test_red_xml_names_the_reversed_invoice() -> None:
    red = invoice("red")
    body = files.invoice_xml(red)
    root = ET.fromstring(body)
    assert root.findtext("Header/InherentLabel/InIssuType/LabelCode") == "N"
    assert (
        root.findtext("EInvoiceData/SpecificInformation/RedEInvoice/OriginalInvoiceCode")
        == "26332000000000000001"
    )
    assert root.findtext("EInvoiceData/BasicInformation/TotalTax-includedAmount") == "-113.00"
    assert check.compare_xml(body, recorded(red)) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"invoice_number": "26332000000000000002"}, "invoice number"),
        ({"issue_date": date(2026, 12, 1)}, "issue date"),
        ({"seller_tax_number": "91330100MA27XL0E2X"}, "seller tax number"),
        ({"buyer_tax_number": None}, "buyer tax number"),
        ({"total_excl_tax": Decimal("100.01")}, "total excl tax"),
        ({"total_tax": Decimal("13.01")}, "total tax"),
        ({"total_incl_tax": Decimal("113.01")}, "total incl tax"),
        ({"kind": "red"}, "blue/red flag"),
    ],
)
def test_each_recorded_fact_is_compared(change: dict[str, object], problem: str) -> None:
    rec = dataclasses.replace(recorded(invoice()), **change)  # type: ignore[arg-type]
    found = check.compare_xml(files.invoice_xml(invoice()), rec)
    assert [p.split(":")[0] for p in found] == [problem] or (
        problem == "invoice number" and [p.split(":")[0] for p in found] == [problem, "EIid"]
    )


def test_pdf_opens_its_xref_points_at_every_object() -> None:
    body = files.invoice_pdf(invoice())
    check.check_pdf(body)
    assert body.startswith(b"%PDF-1.4\n") and body.endswith(b"%%EOF\n")
    start = int(re.search(rb"startxref\n(\d+)\n", body).group(1))  # type: ignore[union-attr]
    assert body[start:].startswith(b"xref\n0 6\n")
    offsets = [int(m) for m in re.findall(rb"(\d{10}) 00000 n ", body[start:])]
    assert len(offsets) == 5
    for number, offset in enumerate(offsets, start=1):
        assert body[offset:].startswith(b"%d 0 obj" % number)
    length = int(re.search(rb"/Length (\d+)", body).group(1))  # type: ignore[union-attr]
    stream_at = body.index(b"stream\n") + len(b"stream\n")
    assert body[stream_at + length : stream_at + length + 10] == b"\nendstream"
    assert b"26332000000000000001" in body and b"113.00" in body


@pytest.mark.parametrize(
    "body",
    [b"<html>session expired</html>", b"%PDF-1.4\n1 0 obj\n", b"%PDF-1.4\nstartxref\n3\n%%EOF\n"],
)
def test_what_is_not_a_whole_pdf_is_refused(body: bytes) -> None:
    with pytest.raises(check.BadFile):
        check.check_pdf(body)


def test_ofd_is_a_zip_with_ofd_xml() -> None:
    body = files.invoice_ofd(invoice())
    check.check_ofd(body)
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert b"26332000000000000001" in zf.read("OFD.xml")
    assert files.invoice_ofd(invoice()) == body  # the same file every time it is fetched
    with pytest.raises(check.BadFile):
        check.check_ofd(b"PK\x03\x04 cdc-invoice sandbox OFD stand-in")


def test_the_old_stand_ins_fail_the_checks() -> None:
    # An XML in another layout is kept with every fact flagged (an alert), not refused: if the
    # platform's layout is not the bureau's, the originals are still archived.
    problems = check.compare_xml(
        b"<?xml version='1.0'?><EInvoice sandbox='true'/>", recorded(invoice())
    )
    assert [p.split(":")[0] for p in problems] == [
        "invoice number",
        "issue date",
        "seller tax number",
        "buyer tax number",
        "total excl tax",
        "total tax",
        "total incl tax",
    ]
    with pytest.raises(check.BadFile):
        check.check_pdf(b"%PDF-1.4\n% cdc-invoice sandbox stand-in\n%%EOF\n")
