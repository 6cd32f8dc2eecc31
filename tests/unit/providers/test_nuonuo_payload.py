"""InvoiceDraft → requestBillingNew JSON and queryInvoiceResult JSON → PlatformInvoice."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from cdc_invoice.errors import InvalidOrder
from cdc_invoice.invoice.model import Buyer, InvoiceDraft, Seller
from cdc_invoice.providers.base import PlatformLine
from cdc_invoice.providers.nuonuo import payload

DATE = datetime(2025, 1, 1, 2, 0, 0, tzinfo=UTC)  # 10:00 in Shanghai

EXPECTED_SPECIAL_ORDER: dict[str, Any] = {
    "order": {
        "buyerName": "杭州某某贸易有限公司",
        "buyerTaxNum": "91330106MA2B0QWEF1",
        "buyerTel": "0571-88888888",
        "buyerAddress": "杭州市滨江区江南大道100号",
        "buyerAccount": "招商银行滨江支行 571900000000001",
        "email": "buyer@example.com",
        "pushMode": "0",
        "naturalPersonFlag": "0",
        "salerTaxNum": "339902999999789113",
        "salerTel": "0571-77777777",
        "salerAddress": "杭州市西湖区文三路1号",
        "salerAccount": "工商银行西湖支行 1202000000000000001",
        "orderNo": "shop-SO-1-1",
        "invoiceDate": "2025-01-01 10:00:00",
        "clerk": "张三",
        "payee": "李四",
        "invoiceType": "1",
        "invoiceLine": "bs",
        "showBankAccountType": "0",
        "extensionNumber": "8889",
        "remark": "合同号 HT-2025-001",
        "invoiceDetail": [
            {
                "goodsName": "电脑",
                "goodsCode": "1090511030000000000",
                "specType": "y460",
                "unit": "台",
                "withTaxFlag": "1",
                "price": "3099",
                "num": "1",
                "taxRate": "0.13",
                "taxExcludedAmount": "2742.48",
                "tax": "356.52",
                "taxIncludedAmount": "3099.00",
                "invoiceLineProperty": "2",
            },
            {
                "goodsName": "电脑",
                "goodsCode": "1090511030000000000",
                "withTaxFlag": "1",
                "taxRate": "0.13",
                "taxExcludedAmount": "-87.61",
                "tax": "-11.39",
                "taxIncludedAmount": "-99.00",
                "invoiceLineProperty": "1",
            },
            {
                "goodsName": "鼠标",
                "goodsCode": "1090512990000000000",
                "unit": "个",
                "withTaxFlag": "0",
                "price": "49.5",
                "num": "2",
                "taxRate": "0.13",
                "taxExcludedAmount": "99.00",
                "tax": "12.87",
                "taxIncludedAmount": "111.87",
                "invoiceLineProperty": "0",
            },
        ],
    }
}


def test_special_invoice_with_discount_pair_gives_exactly_the_expected_order(
    seller: Seller, special_draft: InvoiceDraft
) -> None:
    order = payload.build_order(seller, special_draft, "shop-SO-1-1", invoice_date=DATE)
    assert order == EXPECTED_SPECIAL_ORDER


def test_discount_line_never_carries_price_quantity_spec_or_unit(
    seller: Seller, special_draft: InvoiceDraft
) -> None:
    # Even if the domain left them on the discount line, the protocol forbids them there.
    discount = dataclasses.replace(
        special_draft.lines[1], quantity=Decimal(-1), unit_price=Decimal(99), spec="x", unit="台"
    )
    draft = dataclasses.replace(
        special_draft, lines=(special_draft.lines[0], discount, special_draft.lines[2])
    )
    line = payload.build_order(seller, draft, "o", invoice_date=DATE)["order"]["invoiceDetail"][1]  # type: ignore[index]
    assert not {"price", "num", "specType", "unit"} & set(line)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("3099.00", "3099"),
        ("0.130", "0.13"),
        ("1E+2", "100"),
        ("0.00000001", "0.00000001"),
        ("1.5E-7", "0.00000015"),
        ("-0", "0"),
        ("12345678.12345678", "12345678.12345678"),
    ],
)
def test_plain_decimal_strings_have_no_exponent_and_no_trailing_zeros(
    value: str, text: str
) -> None:
    assert payload.plain(Decimal(value)) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("6198", "6198.00"),
        ("-99.0", "-99.00"),
        ("0", "0.00"),
        ("-0.00", "0.00"),
        ("1E+3", "1000.00"),
    ],
)
def test_money_has_exactly_two_decimals(value: str, text: str) -> None:
    assert payload.cents(Decimal(value)) == text


@pytest.mark.parametrize(
    ("email", "phone", "mode", "push_phone"),
    [
        (None, None, "-1", None),
        ("a@example.com", None, "0", None),
        (None, "13800138000", "1", "13800138000"),
        ("a@example.com", "+86 13800138000", "2", "13800138000"),
        ("a@example.com", "0571-88888888", "0", None),  # landline: no SMS
    ],
)
def test_push_mode_follows_email_and_mobile(
    seller: Seller,
    special_draft: InvoiceDraft,
    email: str | None,
    phone: str | None,
    mode: str,
    push_phone: str | None,
) -> None:
    buyer = dataclasses.replace(special_draft.buyer, email=email, phone=phone)
    draft = dataclasses.replace(special_draft, buyer=buyer)
    order: Any = payload.build_order(seller, draft, "o", invoice_date=DATE)["order"]
    assert order["pushMode"] == mode
    assert order.get("buyerPhone") == push_phone
    assert order.get("email") == email


def test_natural_person_minimal_buyer_omits_empty_fields(
    seller: Seller, special_draft: InvoiceDraft
) -> None:
    draft = dataclasses.replace(
        special_draft, buyer=Buyer(name="王小明", natural_person=True), invoice_line="pc"
    )
    bare = dataclasses.replace(seller, address=None, phone=None, bank_account=None, payee=None)
    order: Any = payload.build_order(bare, draft, "o", invoice_date=DATE)["order"]
    assert order["naturalPersonFlag"] == "1"
    assert order["invoiceLine"] == "pc"
    assert order["pushMode"] == "-1"
    for absent in ("buyerTaxNum", "buyerTel", "email", "buyerPhone", "salerTel", "payee"):
        assert absent not in order


def test_invoice_date_is_shanghai_wall_clock(seller: Seller, special_draft: InvoiceDraft) -> None:
    late = datetime(2024, 12, 31, 20, 30, 5, tzinfo=UTC)  # already 2025 in China
    order: Any = payload.build_order(seller, special_draft, "o", invoice_date=late)["order"]
    assert order["invoiceDate"] == "2025-01-01 04:30:05"
    with pytest.raises(ValueError, match="timezone"):
        payload.build_order(seller, special_draft, "o", invoice_date=datetime(2025, 1, 1))


def test_red_draft_is_refused(seller: Seller, special_draft: InvoiceDraft) -> None:
    with pytest.raises(ValueError, match="red"):
        payload.build_order(
            seller, dataclasses.replace(special_draft, kind="red"), "o", invoice_date=DATE
        )


def test_unrounded_amounts_and_over_precise_quantities_are_invalid_orders(
    seller: Seller, special_draft: InvoiceDraft
) -> None:
    bad = dataclasses.replace(
        special_draft.lines[2], tax=Decimal("12.871"), quantity=Decimal("0.000000001")
    )
    draft = dataclasses.replace(special_draft, lines=(*special_draft.lines[:2], bad))
    with pytest.raises(InvalidOrder) as info:
        payload.build_order(seller, draft, "o", invoice_date=DATE)
    assert {(p.line_no, p.field) for p in info.value.problems} == {(3, "tax"), (3, "quantity")}


def test_query_content() -> None:
    assert payload.query_content(serials=["1", "2"]) == {
        "serialNos": ["1", "2"],
        "isOfferInvoiceDetail": "1",
    }
    assert payload.query_content(order_nos=["a"]) == {
        "orderNos": ["a"],
        "isOfferInvoiceDetail": "1",
    }


# ---------------------------------------------------------------- query results

ISSUED_ITEM: dict[str, Any] = {
    "serialNo": "22072015181902023731",
    "orderNo": "shop-SO-1-1",
    "status": "2",
    "statusMsg": "开票完成（最终状态）",
    "failCause": "",
    "pdfUrl": "https://inv.example/x.pdf",
    "ofdUrl": "https://inv.example/x.ofd",
    "xmlUrl": "",
    "invoiceTime": 1735696800000,
    "invoiceCode": "",
    "invoiceNo": "25330000000000000001",
    "allElectronicInvoiceNumber": "25330000000000000001",
    "exTaxAmount": "2753.87",
    "taxAmount": "358.00",
    "orderAmount": "3111.87",
    "payerName": "杭州某某贸易有限公司",
    "payerTaxNo": "91330106MA2B0QWEF1",
    "invoiceKind": "电子发票(增值税专用发票)",
    "invoiceType": "1",
    "someFieldFromTheFuture": {"nested": True},
    "invoiceItems": [
        {
            "itemName": "电脑",
            "itemCodeAbb": "计算机",
            "itemUnit": "台",
            "itemPrice": "3099",
            "itemTaxRate": "0.13",
            "itemNum": "1",
            "itemAmount": "3099.00",
            "itemTaxAmount": "356.52",
            "itemCode": "1090511030000000000",
            "isIncludeTax": "true",
            "invoiceLineProperty": "2",
        },
        {
            "itemName": "电脑",
            "itemTaxRate": "0.13",
            "itemAmount": "-87.61",
            "itemTaxAmount": "-11.39",
            "itemCode": "1090511030000000000",
            "isIncludeTax": "false",
            "invoiceLineProperty": "1",
        },
    ],
}


def test_issued_item_maps_to_platform_invoice_with_decimals() -> None:
    inv = payload.parse_invoice(ISSUED_ITEM)
    assert inv.serial == "22072015181902023731"
    assert inv.order_no == "shop-SO-1-1"
    assert (inv.status, inv.status_code) == ("issued", "2")
    assert inv.number == "25330000000000000001"
    assert inv.issued_at == datetime(2025, 1, 1, 10, 0, tzinfo=payload.CHINA_TZ)
    assert inv.issued_at is not None and inv.issued_at.utcoffset() == timedelta(hours=8)
    assert inv.total_excl_tax == Decimal("2753.87")
    assert isinstance(inv.total_tax, Decimal) and inv.total_tax == Decimal("358.00")
    assert inv.total_incl_tax == Decimal("3111.87")
    assert (inv.buyer_name, inv.buyer_tax_number) == ("杭州某某贸易有限公司", "91330106MA2B0QWEF1")
    assert (inv.pdf_url, inv.ofd_url, inv.xml_url) == (
        "https://inv.example/x.pdf",
        "https://inv.example/x.ofd",
        None,
    )
    assert inv.fail_cause is None
    assert inv.invoice_kind == "blue"
    assert inv.lines == (
        PlatformLine(
            line_no=1,
            name="电脑",
            tax_code="1090511030000000000",
            quantity=Decimal(1),
            unit_price=Decimal(3099),
            amount_excl_tax=Decimal("2742.48"),  # itemAmount is tax-inclusive here
            tax_rate=Decimal("0.13"),
            tax=Decimal("356.52"),
            property=2,
        ),
        PlatformLine(
            line_no=2,
            name="电脑",
            tax_code="1090511030000000000",
            quantity=None,
            unit_price=None,
            amount_excl_tax=Decimal("-87.61"),
            tax_rate=Decimal("0.13"),
            tax=Decimal("-11.39"),
            property=1,
        ),
    )


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("20", "issuing"),
        ("21", "issuing"),
        ("2", "issued"),
        ("22", "failed"),
        # 开票成功签章失败: the invoice exists (发票详情查询 doc, "22、24状态时，无需再查询")
        ("24", "issued"),
        ("31", "voiding"),
        ("3", "voided"),
        (2, "issued"),  # numbers tolerated
        ("99", "issuing"),  # unknown: keep polling, never fail the batch
    ],
)
def test_status_mapping(code: object, status: str) -> None:
    inv = payload.parse_invoice({"serialNo": "s", "orderNo": "o", "status": code})
    assert inv.status == status
    assert inv.status_code == str(code)


def test_status_24_is_issued_with_its_number_and_a_failed_seal() -> None:
    """发票详情查询 doc: 24 开票成功签章失败 needs no further query; the invoice exists."""
    inv = payload.parse_invoice(
        {
            "serialNo": "s",
            "orderNo": "o",
            "status": "24",
            "allElectronicInvoiceNumber": "26330000000000000024",
            "invoiceTime": 1700000000000,
            "failCause": "签章失败",
        }
    )
    assert (inv.status, inv.seal_failed, inv.number) == ("issued", True, "26330000000000000024")
    assert inv.issued_at is not None and inv.fail_cause == "签章失败"
    assert payload.parse_invoice({"serialNo": "s", "status": "2"}).seal_failed is False


def test_pending_item_has_no_number_and_failed_item_keeps_its_cause() -> None:
    pending = payload.parse_invoice(
        {"serialNo": "s", "orderNo": "o", "status": "20", "invoiceTime": 0, "invoiceNo": ""}
    )
    assert (pending.number, pending.issued_at, pending.total_incl_tax) == (None, None, None)
    failed = payload.parse_invoice(
        {"serialNo": "s", "orderNo": "o", "status": "22", "failCause": "额度不足"}
    )
    assert (failed.status, failed.fail_cause) == ("failed", "额度不足")


def test_number_fallbacks_and_computed_total() -> None:
    go_spelling = payload.parse_invoice(
        {"serialNo": "s", "status": "2", "allElectronicInvoiceNumbe": "25000000000000000009"}
    )
    assert go_spelling.number == "25000000000000000009"
    paper = payload.parse_invoice(
        {"serialNo": "s", "status": "2", "invoiceNo": "23501899", "exTaxAmount": 100,
         "taxAmount": Decimal("13.00"), "invoiceTime": "2025-01-01 10:00:00"}
    )  # fmt: skip
    assert paper.number == "23501899"
    assert paper.total_incl_tax == Decimal("113.00")
    assert paper.issued_at == datetime(2025, 1, 1, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "item",
    [
        [],
        {"orderNo": "o", "status": "2"},
        {"serialNo": "s"},
        {"serialNo": "s", "status": "2", "exTaxAmount": "12,00"},
        {"serialNo": "s", "status": "2", "taxAmount": "NaN"},
        {"serialNo": "s", "status": "2", "invoiceTime": "yesterday"},
        {"serialNo": "s", "status": "2", "invoiceItems": {"itemName": "x"}},
        {"serialNo": "s", "status": "2", "invoiceItems": [{"itemName": "x"}]},
    ],
)
def test_malformed_items_are_reported(item: object) -> None:
    with pytest.raises(payload.MalformedResponse):
        payload.parse_invoice(item)


def test_a_22_for_lack_of_monthly_quota_is_flagged_for_the_daemon() -> None:
    """The provider, not the daemon, reads the failCause (an assumption: docs/platform-
    assumptions.md, P4): a failed invoice whose cause says 额度不足 pauses its seller."""
    quota = payload.parse_invoice(
        {"serialNo": "s", "status": "22", "failCause": "当月发票总额度不足:额度100.00"}
    )
    assert (quota.status, quota.quota_exhausted) == ("failed", True)
    other = payload.parse_invoice({"serialNo": "s", "status": "22", "failCause": "税局返回异常"})
    assert other.quota_exhausted is False
    # an issued invoice is never a quota failure, whatever text it carries
    assert (
        payload.parse_invoice(
            {"serialNo": "s", "status": "2", "failCause": "额度不足"}
        ).quota_exhausted
        is False
    )
