"""Red-letter slips, fastInvoiceRed, void, deliver and list against the strict fake.

Every request goes through the fake's X-Nuonuo-Sign check before it is recorded in ``fake.calls``,
so each ``fake.calls`` assertion below is also a signature check on that call.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from nuonuo_fake import TAX_NUMBER, FakeNuonuo

from cdc_invoice.errors import (
    InvalidOrder,
    OutcomeUnknown,
    ProviderAuthError,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
)
from cdc_invoice.invoice.model import InvoiceDraft, InvoiceLine, LineProperty, Seller
from cdc_invoice.invoice.reversal import RedRequestLine, red_lines
from cdc_invoice.providers.base import InvoiceRef, IssueAccepted, RedSlip
from cdc_invoice.providers.nuonuo import NuonuoProvider, payload

SAVE = "nuonuo.OpeMplatform.saveInvoiceRedConfirm"
QUERY_SLIP = "nuonuo.OpeMplatform.queryInvoiceRedConfirm"
FAST_RED = "nuonuo.OpeMplatform.fastInvoiceRed"
VOID = "nuonuo.electronInvoice.invoiceCancellation"
DELIVER = "nuonuo.OpeMplatform.deliveryInvoice"
LIST = "nuonuo.OpeMplatform.queryInvoiceList"

BLUE_NUMBER = "25330000000000000001"

MakeProvider = Callable[..., NuonuoProvider]


@pytest.fixture
def blue() -> InvoiceRef:
    """The issued 数电专票 of ``special_draft``."""
    return InvoiceRef(
        serial="25010110000000000001",
        order_no="shop-SO-1-1",
        number=BLUE_NUMBER,
        invoice_line="bs",
        buyer_name="杭州某某贸易有限公司",
        buyer_tax_number="91330106MA2B0QWEF1",
    )


@pytest.fixture
def paper() -> InvoiceRef:
    """A 数电纸质专票 (es): a 20-digit 数电 number plus the paper code and 8-digit number."""
    return InvoiceRef(
        serial="25010110000000000009",
        order_no="shop-SO-9-1",
        number="25330000000000000009",
        invoice_line="es",
        buyer_name="杭州某某贸易有限公司",
        buyer_tax_number="91330106MA2B0QWEF1",
        paper_code="3300251130",
        paper_number="00012345",
    )


def red(
    line_no: int,
    name: str,
    *,
    qty: str | None,
    price: str | None,
    incl_flag: bool,
    ex: str,
    tax: str,
    incl: str,
    code: str = "1090511030000000000",
    spec: str | None = None,
    unit: str | None = None,
) -> InvoiceLine:
    return InvoiceLine(
        line_no=line_no,
        source_line_no=line_no,
        item_ref=f"item-{line_no}",
        name=name,
        tax_code=code,
        tax_rate=Decimal("0.13"),
        quantity=Decimal(qty) if qty is not None else None,
        unit_price=Decimal(price) if price is not None else None,
        price_includes_tax=incl_flag,
        amount_excl_tax=Decimal(ex),
        tax=Decimal(tax),
        amount_incl_tax=Decimal(incl),
        spec=spec,
        unit=unit,
    )


# Return one discounted computer (tax-inclusive price, discount netted in) and one mouse
# (tax-exclusive price): what cdc_invoice.invoice.reversal makes of special_draft.
PARTIAL_LINES = (
    red(1, "电脑", qty="-1", price="3000.00", incl_flag=True, ex="-2654.87", tax="-345.13",
        incl="-3000.00", spec="y460", unit="台"),
    red(3, "鼠标", qty="-1", price="49.50000000", incl_flag=False, ex="-49.50", tax="-6.44",
        incl="-55.94", code="1090512990000000000", unit="个"),
)  # fmt: skip

EXPECTED_FULL: dict[str, Any] = {
    "billId": "RED-shop-SO-1-1-1",
    "blueInvoiceLine": "bs",
    "applySource": "0",
    "blueElecInvoiceNumber": BLUE_NUMBER,
    "sellerTaxNo": TAX_NUMBER,
    "sellerName": "航信培训企业789113",
    "buyerTaxNo": "91330106MA2B0QWEF1",
    "buyerName": "杭州某某贸易有限公司",
    "redReason": "2",
    "orderNo": "shop-SO-1-1-R1",
    "extensionNumber": "8889",
}

EXPECTED_PARTIAL_DETAIL: list[dict[str, str]] = [
    {
        "blueDetailIndex": "1",
        "goodsName": "电脑",
        "goodsCode": "1090511030000000000",
        "specType": "y460",
        "unit": "台",
        "num": "-1",
        "taxExcludedPrice": "2654.87",  # |excl| / |num|: the incl. price 3000 is not sent
        "taxExcludedAmount": "-2654.87",
        "taxAmount": "-345.13",
        "taxRate": "0.13",
    },
    {
        "blueDetailIndex": "3",  # line 2 is the computer's discount line: skipped
        "goodsName": "鼠标",
        "goodsCode": "1090512990000000000",
        "unit": "个",
        "num": "-1",
        "taxExcludedPrice": "49.5",  # the blue excl. price as it is
        "taxExcludedAmount": "-49.50",
        "taxAmount": "-6.44",
        "taxRate": "0.13",
    },
]


def methods(fake: FakeNuonuo) -> list[str]:
    return [c.method for c in fake.calls]


def protocol(code: str, result: Any = None, **extra: Any) -> Callable[..., httpx.Response]:
    def handler(request: httpx.Request, method: str, body: Any) -> httpx.Response:
        answer = {"code": code, "describe": f"描述 {code}", **extra}
        if result is not None:
            answer["result"] = result
        return httpx.Response(200, json=answer)

    return handler


def slip_answer(**slip: Any) -> Callable[..., httpx.Response]:
    return protocol("E0000", {"total": 1, "list": [slip]})


# ---------------------------------------------------------------- saveInvoiceRedConfirm


async def test_full_reversal_request(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, blue: InvoiceRef
) -> None:
    async with make_provider() as provider:
        bill_id = await provider.request_red_slip(
            seller, blue, None, "2", "RED-shop-SO-1-1-1", "shop-SO-1-1-R1"
        )
    assert bill_id == "RED-shop-SO-1-1-1"
    assert fake.violations == []
    [call] = fake.calls
    assert call.method == SAVE
    assert call.request.headers["method"] == SAVE
    assert call.body == EXPECTED_FULL  # no "detail": a full reversal
    assert b"\\u" not in call.raw and b", " not in call.raw


async def test_partial_reversal_request(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, blue: InvoiceRef
) -> None:
    async with make_provider() as provider:
        await provider.request_red_slip(
            seller, blue, PARTIAL_LINES, "1", "RED-shop-SO-1-1-1", "shop-SO-1-1-R1"
        )
    [call] = fake.calls
    assert call.body == {**EXPECTED_FULL, "redReason": "1", "detail": EXPECTED_PARTIAL_DETAIL}


def test_partial_reversal_from_the_domain_is_what_the_adapter_sends(
    seller: Seller, special_draft: InvoiceDraft, blue: InvoiceRef
) -> None:
    """The hand-written lines above are exactly what reversal.red_lines produces."""
    lines = red_lines(
        special_draft.lines, [RedRequestLine(1, quantity=1), RedRequestLine(3, quantity=1)], "1"
    )
    content = payload.red_confirm_content(seller, blue, lines, "1", "b", "r")
    assert content["detail"] == EXPECTED_PARTIAL_DETAIL


def test_amount_only_allowance_has_no_quantity_or_price(
    seller: Seller, special_draft: InvoiceDraft, blue: InvoiceRef
) -> None:
    lines = red_lines(special_draft.lines, [RedRequestLine(3, amount=Decimal("10"))], "4")
    content = payload.red_confirm_content(seller, blue, lines, "4", "b", "r")
    assert content["detail"] == [
        {
            "blueDetailIndex": "3",
            "goodsName": "鼠标",
            "goodsCode": "1090512990000000000",
            "unit": "个",
            "taxExcludedAmount": "-8.85",
            "taxAmount": "-1.15",
            "taxRate": "0.13",
        }
    ]


@pytest.mark.parametrize(
    ("qty", "ex", "price"),
    [("-3", "-100.00", "33.33333333"), ("-2", "-17.70", "8.85"), ("-0.5", "-4.43", "8.86")],
)
def test_tax_inclusive_price_becomes_an_exclusive_price_within_a_cent(
    seller: Seller, blue: InvoiceRef, qty: str, ex: str, price: str
) -> None:
    tax = str((Decimal(ex) * Decimal("0.13")).quantize(Decimal("0.01")))
    line = red(1, "电脑", qty=qty, price="10", incl_flag=True, ex=ex, tax=tax, incl="0")
    [detail] = payload.red_confirm_content(seller, blue, [line], "1", "b", "r")["detail"]
    assert detail["taxExcludedPrice"] == price
    assert abs(Decimal(price) * Decimal(qty) - Decimal(ex)) <= Decimal("0.01")


async def test_legacy_paper_blue_is_named_by_code_and_number(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, blue: InvoiceRef
) -> None:
    legacy = dataclasses.replace(
        blue, number="00012345", invoice_line="s", paper_code="3300251130", paper_number=None
    )
    async with make_provider() as provider:
        await provider.request_red_slip(seller, legacy, None, "2", "RED-1", "R-1")
    body = fake.calls[0].body
    assert "blueElecInvoiceNumber" not in body
    assert (body["blueInvoiceCode"], body["blueInvoiceNumber"]) == ("3300251130", "00012345")
    assert body["blueInvoiceLine"] == "s"


async def test_optional_fields_are_left_out(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, blue: InvoiceRef
) -> None:
    person = dataclasses.replace(blue, buyer_name="张三", buyer_tax_number=None)
    async with make_provider() as provider:
        await provider.request_red_slip(
            dataclasses.replace(seller, extension_number=None), person, None, "2", "B", "R"
        )
    body = fake.calls[0].body
    assert "buyerTaxNo" not in body and "extensionNumber" not in body
    assert body["buyerName"] == "张三"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"reason": "5"}, ValueError),
        ({"reason": "sales_return"}, ValueError),  # the domain normalises names, not the adapter
        ({"bill_id": ""}, ValueError),
        ({"bill_id": "x" * 33}, ValueError),
        ({"red_order_no": ""}, ValueError),
        ({"red_lines": []}, ValueError),
        ({"red_lines": [dataclasses.replace(PARTIAL_LINES[0], amount_excl_tax=Decimal("1"))]},
         InvalidOrder),
        ({"red_lines": [dataclasses.replace(PARTIAL_LINES[0], tax=Decimal("0.01"))]},
         InvalidOrder),
        ({"red_lines": [dataclasses.replace(PARTIAL_LINES[0], quantity=Decimal("1"))]},
         InvalidOrder),
        ({"red_lines": [dataclasses.replace(PARTIAL_LINES[0], tax=Decimal("-345.125"))]},
         InvalidOrder),
        ({"red_lines": [PARTIAL_LINES[0], PARTIAL_LINES[0]]}, InvalidOrder),
        ({"red_lines": [dataclasses.replace(PARTIAL_LINES[0], property=LineProperty.DISCOUNT)]},
         InvalidOrder),
    ],
)  # fmt: skip
async def test_bad_red_slip_requests_are_refused_before_sending(
    fake: FakeNuonuo,
    make_provider: MakeProvider,
    seller: Seller,
    blue: InvoiceRef,
    change: dict[str, Any],
    error: type[Exception],
) -> None:
    args: dict[str, Any] = {
        "red_lines": None,
        "reason": "1",
        "bill_id": "RED-1",
        "red_order_no": "R-1",
        **change,
    }
    async with make_provider() as provider:
        with pytest.raises(error):
            await provider.request_red_slip(seller, blue, **args)
    assert fake.calls == []


async def test_a_blue_without_any_usable_number_is_refused(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, blue: InvoiceRef
) -> None:
    async with make_provider() as provider:
        with pytest.raises(ValueError, match="20-digit"):
            await provider.request_red_slip(
                seller, dataclasses.replace(blue, number="123"), None, "2", "B", "R"
            )
    assert fake.calls == []


async def test_the_platforms_bill_id_wins_if_it_differs(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, blue: InvoiceRef
) -> None:
    fake.on_gateway = protocol("E0000", "PLATFORM-7")
    async with make_provider() as provider:
        assert await provider.request_red_slip(seller, blue, None, "2", "B", "R") == "PLATFORM-7"
    fake.on_gateway = protocol("E0000")
    async with make_provider() as provider:
        assert await provider.request_red_slip(seller, blue, None, "2", "B", "R") == "B"


# ---------------------------------------------------------------- queryInvoiceRedConfirm

SLIP_TABLE = [
    ("15", "applying"),
    ("01", "ready"),
    ("04", "ready"),
    ("02", "awaiting_buyer"),
    ("03", "awaiting_seller"),
    ("05", "cancelled"),
    ("06", "cancelled"),
    ("07", "cancelled"),
    ("08", "cancelled"),
    ("09", "cancelled"),
    ("16", "failed"),
]


@pytest.mark.parametrize(("code", "status"), SLIP_TABLE)
async def test_slip_status_mapping(
    fake: FakeNuonuo,
    make_provider: MakeProvider,
    seller: Seller,
    blue: InvoiceRef,
    code: str,
    status: str,
) -> None:
    async with make_provider() as provider:
        await provider.request_red_slip(seller, blue, None, "2", "RED-1", "R-1")
        fake.slips["RED-1"]["billStatus"] = code
        slip = await provider.query_red_slip(seller, "RED-1")
    assert slip is not None
    assert (slip.status, slip.status_code) == (status, code)
    assert slip.bill_id == "RED-1"
    assert slip.red_issued is False and slip.red_serial is None
    assert fake.calls[1].method == QUERY_SLIP
    assert fake.calls[1].body == {"identity": "0", "billId": "RED-1"}


def test_the_table_covers_every_documented_bill_status() -> None:
    assert sorted(payload.SLIP_STATUS) == sorted(code for code, _ in SLIP_TABLE)


async def test_a_numeric_bill_status_is_read_as_two_digits(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller
) -> None:
    fake.on_gateway = slip_answer(billId="B", billStatus=1, openStatus=0)
    async with make_provider() as provider:
        slip = await provider.query_red_slip(seller, "B")
    assert slip is not None and slip.status == "ready" and slip.status_code == "1"


async def test_an_unknown_bill_status_keeps_polling(
    fake: FakeNuonuo,
    make_provider: MakeProvider,
    seller: Seller,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.on_gateway = slip_answer(billId="B", billStatus="42")
    async with make_provider() as provider:
        slip = await provider.query_red_slip(seller, "B")
    assert slip is not None and (slip.status, slip.status_code) == ("applying", "42")
    assert "unknown Nuonuo red-letter slip status" in caplog.text


async def test_slip_with_its_red_invoice(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller
) -> None:
    fake.on_gateway = slip_answer(
        billId="RED-1",
        billNo="202501011000000000001",
        billUuid="1d7f08b6ddb64cb19b095b0360f074d7",
        billStatus="01",
        billMessage="无需确认",
        requestStatus="",
        openStatus="1",
        invoiceSerialNum="25010110000000000042",
        orderNo="shop-SO-1-1-R1",
    )
    async with make_provider() as provider:
        slip = await provider.query_red_slip(seller, "RED-1")
    assert slip == RedSlip(
        bill_id="RED-1",
        status="ready",
        status_code="01",
        bill_no="202501011000000000001",
        bill_uuid="1d7f08b6ddb64cb19b095b0360f074d7",
        red_issued=True,
        red_serial="25010110000000000042",
        red_order_no="shop-SO-1-1-R1",
        message="无需确认",
    )


async def test_slip_in_the_official_docs_shape(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller
) -> None:
    """The doc puts total/list next to code, and shows "0000" as the success code."""
    fake.on_gateway = protocol(
        "0000", total="1", list=[{"billId": "B", "billStatus": "04", "openStatus": "0"}]
    )
    async with make_provider() as provider:
        slip = await provider.query_red_slip(seller, "B")
    assert slip is not None and slip.status == "ready" and not slip.red_issued


@pytest.mark.parametrize(
    "handler",
    [
        protocol("E0000", {"total": 0, "list": []}),
        protocol("E0000"),
        protocol("E0000", []),
        protocol("E9500"),
        # A platform that ignored the billId filter: someone else's slip is not ours.
        slip_answer(billId="OTHER", billStatus="01"),
    ],
    ids=["empty list", "no result", "empty array", "E9500", "another slip"],
)
async def test_no_such_slip_is_none(
    fake: FakeNuonuo,
    make_provider: MakeProvider,
    seller: Seller,
    handler: Callable[..., httpx.Response],
) -> None:
    fake.on_gateway = handler
    async with make_provider() as provider:
        assert await provider.query_red_slip(seller, "RED-1") is None


async def test_an_unknown_slip_on_the_fake_is_none(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller
) -> None:
    async with make_provider() as provider:
        assert await provider.query_red_slip(seller, "never-applied") is None
    assert methods(fake) == [QUERY_SLIP]


@pytest.mark.parametrize(
    "result",
    [{"list": {"billId": "B"}}, {"list": [{"billId": "B"}]}, {"list": ["x"]}, "text",
     {"total": "many", "list": []}],
)  # fmt: skip
async def test_malformed_slip_answers_are_unavailable(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, result: Any
) -> None:
    fake.on_gateway = protocol("E0000", result)
    async with make_provider() as provider:
        with pytest.raises(ProviderUnavailable, match="malformed"):
            await provider.query_red_slip(seller, "B")


# ---------------------------------------------------------------- fastInvoiceRed


async def test_fast_invoice_red_request(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, paper: InvoiceRef
) -> None:
    async with make_provider() as provider:
        await provider.request_red_slip(seller, paper, None, "2", "RED-9", "shop-SO-9-1-R1")
        fake.slips["RED-9"]["billStatus"] = "01"
        slip = await provider.query_red_slip(seller, "RED-9")
        assert slip is not None and slip.status == "ready"
        accepted = await provider.issue_red_from_slip(seller, paper, slip, "shop-SO-9-1-R1")
    assert methods(fake) == [SAVE, QUERY_SLIP, FAST_RED]
    assert fake.calls[0].body["blueElecInvoiceNumber"] == "25330000000000000009"  # not code+no
    assert "blueInvoiceCode" not in fake.calls[0].body
    assert fake.calls[2].body == {
        "orderNo": "shop-SO-9-1-R1",
        "taxNum": TAX_NUMBER,
        "elecInvoiceNumber": "25330000000000000009",
        "billNo": "202501011000000000001",
        "billUuid": "00000000000000000000000000000001",
        "invoiceLine": "es",
        "extensionNumber": "8889",
    }
    red_serial = fake.slips["RED-9"]["invoiceSerialNum"]
    assert accepted == IssueAccepted(order_no="shop-SO-9-1-R1", serial=red_serial)
    assert fake.invoices[red_serial]["orderNo"] == "shop-SO-9-1-R1"


async def test_fast_invoice_red_needs_the_slips_numbers(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, paper: InvoiceRef
) -> None:
    applying = RedSlip(bill_id="RED-9", status="applying", status_code="15")
    async with make_provider() as provider:
        with pytest.raises(ValueError, match="billNo/billUuid"):
            await provider.issue_red_from_slip(seller, paper, applying, "R-1")
        with pytest.raises(ValueError, match="order"):
            await provider.issue_red_from_slip(
                seller, paper, dataclasses.replace(applying, bill_no="1", bill_uuid="u"), ""
            )
    assert fake.calls == []


@pytest.mark.parametrize("result", [None, {}, {"invoiceSerialNum": ""}, "x"])
async def test_fast_invoice_red_accepted_without_serial_is_outcome_unknown(
    fake: FakeNuonuo,
    make_provider: MakeProvider,
    seller: Seller,
    paper: InvoiceRef,
    result: Any,
) -> None:
    fake.on_gateway = protocol("E0000", result)
    slip = RedSlip(bill_id="B", status="ready", status_code="01", bill_no="1", bill_uuid="u")
    async with make_provider() as provider:
        with pytest.raises(OutcomeUnknown):
            await provider.issue_red_from_slip(seller, paper, slip, "R-1")


# ---------------------------------------------------------------- void


async def test_void_request(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, paper: InvoiceRef
) -> None:
    fake.add_invoice(serialNo=paper.serial)
    async with make_provider() as provider:
        await provider.void(seller, paper, "2")
    [call] = fake.calls
    assert call.method == VOID
    assert call.body == {
        "invoiceId": "25010110000000000009",
        "invoiceCode": "3300251130",
        "invoiceNo": "00012345",  # the paper number, not the 20-digit 数电 number
    }
    assert fake.invoices[paper.serial]["status"] == "31"


@pytest.mark.parametrize("line", ["pc", "bs"])
async def test_electronic_invoices_are_never_voided(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, blue: InvoiceRef, line: str
) -> None:
    async with make_provider() as provider:
        with pytest.raises(ProviderRejected) as info:
            await provider.void(seller, dataclasses.replace(blue, invoice_line=line), "2")
    assert info.value.hint is not None
    assert "cannot void 数电 electronic invoice: reverse it" in info.value.hint
    assert info.value.method == VOID
    assert fake.calls == []


# ---------------------------------------------------------------- deliver


async def test_deliver_a_shudian_invoice(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, blue: InvoiceRef
) -> None:
    fake.add_invoice(
        serialNo=blue.serial, invoiceCode="", invoiceNo=BLUE_NUMBER,
        allElectronicInvoiceNumber=BLUE_NUMBER,
    )  # fmt: skip
    async with make_provider() as provider:
        await provider.deliver(seller, blue, "buyer@example.com", None)
        await provider.deliver(seller, blue, None, "+86 13800138000")
    assert [c.body for c in fake.calls] == [
        {
            "taxnum": TAX_NUMBER,
            "invoiceCode": "",
            "invoiceNum": BLUE_NUMBER,
            "phone": "",
            "mail": "buyer@example.com",
        },
        {
            "taxnum": TAX_NUMBER,
            "invoiceCode": "",
            "invoiceNum": BLUE_NUMBER,
            "phone": "13800138000",
            "mail": "",
        },
    ]
    assert methods(fake) == [DELIVER, DELIVER]
    assert len(fake.deliveries) == 2


async def test_deliver_a_legacy_paper_invoice_by_code_and_number(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, blue: InvoiceRef
) -> None:
    legacy = dataclasses.replace(
        blue, number="00012345", invoice_line="c", paper_code="033001900211", paper_number=None
    )
    fake.add_invoice(invoiceCode="033001900211", invoiceNo="00012345")
    async with make_provider() as provider:
        await provider.deliver(seller, legacy, "a@b.cn", "13800138000")
    body = fake.calls[0].body
    assert (body["invoiceCode"], body["invoiceNum"]) == ("033001900211", "00012345")
    assert (body["phone"], body["mail"]) == ("13800138000", "a@b.cn")


async def test_deliver_an_unknown_invoice_is_rejected_with_a_hint(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, blue: InvoiceRef
) -> None:
    async with make_provider() as provider:
        with pytest.raises(ProviderRejected) as info:
            await provider.deliver(seller, blue, "buyer@example.com", None)
    assert info.value.code == "E9999"
    assert info.value.method == DELIVER
    assert info.value.hint is not None and "invoice not found" in info.value.hint


@pytest.mark.parametrize(
    ("email", "phone"), [(None, None), ("", ""), (None, "0571-88888888"), ("a@b.cn", "12345")]
)
async def test_deliver_needs_an_email_or_a_mobile_number(
    fake: FakeNuonuo,
    make_provider: MakeProvider,
    seller: Seller,
    blue: InvoiceRef,
    email: str | None,
    phone: str | None,
) -> None:
    async with make_provider() as provider:
        with pytest.raises(ValueError):
            await provider.deliver(seller, blue, email, phone)
    assert fake.calls == []


# ---------------------------------------------------------------- queryInvoiceList

START = datetime(2025, 1, 1, 0, 0, 0, tzinfo=payload.CHINA_TZ)
END = datetime(2025, 1, 3, 23, 59, 59, tzinfo=payload.CHINA_TZ)


async def test_list_follows_every_page(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller
) -> None:
    for i in range(120):
        fake.add_invoice(
            exTaxAmount="100.00", taxAmount="13.00", invoiceType="2" if i == 7 else "1"
        )
    async with make_provider() as provider:
        invoices = await provider.list_invoices(seller, START, END)
    assert methods(fake) == [LIST, LIST, LIST]
    assert fake.calls[0].body == {
        "taxnum": TAX_NUMBER,
        "startTime": "2025-01-01 00:00:00",
        "endTime": "2025-01-03 23:59:59",
        "pageNo": "1",
        "pageSize": "50",
    }
    assert [c.body["pageNo"] for c in fake.calls] == ["1", "2", "3"]
    assert [i.serial for i in invoices] == sorted(fake.invoices)
    assert invoices[0].total_incl_tax == Decimal("113.00")
    assert [i.invoice_kind for i in invoices].count("red") == 1


async def test_list_of_exactly_one_full_page_stops_at_the_total(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller
) -> None:
    for _ in range(50):
        fake.add_invoice()
    async with make_provider() as provider:
        assert len(await provider.list_invoices(seller, START, END)) == 50
    assert methods(fake) == [LIST]


async def test_an_empty_list(fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller) -> None:
    async with make_provider() as provider:
        assert await provider.list_invoices(seller, START, END) == []
    fake.on_gateway = protocol("E9500")
    async with make_provider() as provider:
        assert await provider.list_invoices(seller, START, END) == []


async def test_list_trusts_the_total_when_pages_are_shorter(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller
) -> None:
    """A platform that caps pageSize at 20 must not end the listing after page 1."""
    rows = [{"serialNo": f"s{i:03d}", "orderNo": f"o{i}", "status": "2"} for i in range(45)]

    def capped(request: httpx.Request, method: str, body: Any) -> httpx.Response:
        page_no = int(body["pageNo"])
        page = rows[(page_no - 1) * 20 : page_no * 20]
        return httpx.Response(
            200, json={"code": "E0000", "describe": "", "result": {"total": 45, "list": page}}
        )

    fake.on_gateway = capped
    async with make_provider() as provider:
        invoices = await provider.list_invoices(seller, START, END)
    assert [i.serial for i in invoices] == [r["serialNo"] for r in rows]
    assert len(fake.calls) == 3


async def test_list_in_the_summarised_docs_shape(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller
) -> None:
    fake.on_gateway = protocol(
        "E0000", {"totalCount": "2", "invoices": [
            {"serialNo": "s1", "orderNo": "o1", "status": "2"},
            {"serialNo": "s2", "orderNo": "o2", "status": "3"},
        ]},
    )  # fmt: skip
    async with make_provider() as provider:
        invoices = await provider.list_invoices(seller, START, END)
    assert [(i.serial, i.status) for i in invoices] == [("s1", "issued"), ("s2", "voided")]


async def test_list_splits_long_ranges_into_ten_day_windows(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller
) -> None:
    early = fake.add_invoice()["serialNo"]
    boundary = fake.add_invoice()["serialNo"]
    late = fake.add_invoice()["serialNo"]
    fake.listed_at.update(
        {early: "2025-01-02 08:00:00", boundary: "2025-01-11 00:00:00", late: "2025-01-25 12:00:00"}
    )
    start = datetime(2025, 1, 1, tzinfo=payload.CHINA_TZ)
    async with make_provider() as provider:
        invoices = await provider.list_invoices(seller, start, start + timedelta(days=25))
    assert [(c.body["startTime"], c.body["endTime"]) for c in fake.calls] == [
        ("2025-01-01 00:00:00", "2025-01-11 00:00:00"),
        ("2025-01-11 00:00:00", "2025-01-21 00:00:00"),
        ("2025-01-21 00:00:00", "2025-01-26 00:00:00"),
    ]
    # The boundary invoice is in two windows and listed once.
    assert [i.serial for i in invoices] == [early, boundary, late]


async def test_list_times_are_china_time(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller
) -> None:
    start = datetime(2024, 12, 31, 16, 0, 0, tzinfo=UTC)
    async with make_provider() as provider:
        await provider.list_invoices(seller, start, start + timedelta(hours=1))
    assert fake.calls[0].body["startTime"] == "2025-01-01 00:00:00"
    assert fake.calls[0].body["endTime"] == "2025-01-01 01:00:00"


async def test_list_paging_that_does_not_advance_is_unavailable(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller
) -> None:
    page = [{"serialNo": f"s{i}", "orderNo": f"o{i}", "status": "2"} for i in range(50)]
    fake.on_gateway = protocol("E0000", {"list": page})  # ignores pageNo, no total
    async with make_provider() as provider:
        with pytest.raises(ProviderUnavailable, match="does not advance"):
            await provider.list_invoices(seller, START, END)
    assert len(fake.calls) == 2


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (datetime(2025, 1, 1), datetime(2025, 1, 2)),  # naive
        (END, START),  # reversed
    ],
)
async def test_list_range_must_be_aware_and_ordered(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, start: datetime, end: datetime
) -> None:
    async with make_provider() as provider:
        with pytest.raises(ValueError):
            await provider.list_invoices(seller, start, end)
    assert fake.calls == []


# ---------------------------------------------------------------- parse_invoice for red invoices


def test_a_red_invoice_keeps_its_kind_and_its_blue_number() -> None:
    item = {
        "serialNo": "25010110000000000042",
        "orderNo": "shop-SO-1-1-R1",
        "status": "2",
        "invoiceType": "2",
        "allElectronicInvoiceNumber": "25330000000000000002",
        "oldEleInvoiceNumber": BLUE_NUMBER,
        "oldInvoiceCode": "",
        "exTaxAmount": "-2704.37",
        "taxAmount": "-351.57",
        "invoiceItems": [
            {"itemName": "电脑", "itemAmount": "-2654.87", "itemTaxAmount": "-345.13",
             "itemTaxRate": "0.13", "itemNum": "-1", "isIncludeTax": "false"},
        ],
    }  # fmt: skip
    invoice = payload.parse_invoice(item)
    assert invoice.invoice_kind == "red"
    assert invoice.number == "25330000000000000002"
    assert invoice.total_incl_tax == Decimal("-3055.94")
    assert invoice.lines[0].amount_excl_tax == Decimal("-2654.87")
    assert invoice.lines[0].quantity == Decimal("-1")
    assert payload.original_number(item) == BLUE_NUMBER
    assert payload.original_number({"oldInvoiceNo": "00012345"}) == "00012345"
    assert payload.original_number({"oldEleInvoiceNumber": ""}) is None


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"invoiceCode": "3300251130", "invoiceNo": "00012345",
          "allElectronicInvoiceNumber": "25330000000000000009"}, ("3300251130", "00012345")),
        ({"invoiceCode": "", "invoiceNo": BLUE_NUMBER}, (None, None)),
        ({"invoiceCode": "3300251130", "invoiceNo": BLUE_NUMBER}, (None, None)),
        ({"serialNo": "s", "status": "20"}, (None, None)),
    ],
)  # fmt: skip
def test_paper_identity(item: dict[str, str], expected: tuple[str | None, str | None]) -> None:
    assert payload.paper_identity(item) == expected


# ---------------------------------------------------------------- error mapping

Call = Callable[[NuonuoProvider, Seller, InvoiceRef], Any]
SLIP = RedSlip(bill_id="B", status="ready", status_code="01", bill_no="1", bill_uuid="u")
ES_CALLS: dict[str, tuple[str, Call, bool]] = {
    # name: (method, call, mutating)
    "request_red_slip": (
        SAVE, lambda p, s, b: p.request_red_slip(s, b, None, "2", "B", "R"), True
    ),
    "issue_red_from_slip": (FAST_RED, lambda p, s, b: p.issue_red_from_slip(s, b, SLIP, "R"), True),
    "void": (VOID, lambda p, s, b: p.void(s, b, "2"), True),
    "query_red_slip": (QUERY_SLIP, lambda p, s, b: p.query_red_slip(s, "B"), False),
    "deliver": (DELIVER, lambda p, s, b: p.deliver(s, b, "a@b.cn", None), False),
    "list_invoices": (LIST, lambda p, s, b: p.list_invoices(s, START, END), False),
}  # fmt: skip
UNKNOWN_HINTS = {SAVE: "bill_id", FAST_RED: "order number", VOID: "serial"}


def raises(exc_type: type[httpx.TransportError]) -> Callable[..., httpx.Response]:
    def handler(request: httpx.Request, method: str, body: Any) -> httpx.Response:
        raise exc_type("simulated", request=request)

    return handler


@pytest.mark.parametrize("name", ES_CALLS)
@pytest.mark.parametrize(
    ("handler", "after_send"),
    [
        (raises(httpx.ReadTimeout), True),
        (raises(httpx.RemoteProtocolError), True),
        (lambda r, m, b: httpx.Response(502, text="<html>Bad Gateway</html>"), True),
        (raises(httpx.ConnectError), False),
    ],
    ids=["read timeout", "connection dropped", "502", "connect error"],
)
async def test_transport_failures(
    fake: FakeNuonuo,
    make_provider: MakeProvider,
    seller: Seller,
    paper: InvoiceRef,
    name: str,
    handler: Callable[..., httpx.Response],
    after_send: bool,
) -> None:
    method, call, mutating = ES_CALLS[name]
    fake.on_gateway = handler
    async with make_provider() as provider:
        with pytest.raises(ProviderError) as info:
            await call(provider, seller, paper)
    expected = OutcomeUnknown if mutating and after_send else ProviderUnavailable
    assert type(info.value) is expected
    assert info.value.method == method
    assert info.value.retryable
    if expected is OutcomeUnknown:
        assert info.value.hint is not None and UNKNOWN_HINTS[method] in info.value.hint
    assert methods(fake) == [method]  # signed and verified, then the answer was lost


@pytest.mark.parametrize("name", ES_CALLS)
async def test_documented_refusals_are_rejections_with_their_code(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, paper: InvoiceRef, name: str
) -> None:
    # E4000 接口调用失败 (requestBillingNew doc 返回码): a documented refusal.
    method, call, _ = ES_CALLS[name]
    fake.on_gateway = protocol("E4000")
    async with make_provider() as provider:
        with pytest.raises(ProviderRejected) as info:
            await call(provider, seller, paper)
    assert (info.value.code, info.value.method) == ("E4000", method)
    assert "描述 E4000" in info.value.message
    assert not info.value.retryable


@pytest.mark.parametrize("name", ES_CALLS)
async def test_undocumented_codes_are_never_refusals(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, paper: InvoiceRef, name: str
) -> None:
    # Issue 14 row 3: unknown → outcome unknown (a change) or unavailable (a read), retryable.
    method, call, mutating = ES_CALLS[name]
    fake.on_gateway = protocol("E9876")
    async with make_provider() as provider:
        with pytest.raises(ProviderError) as info:
            await call(provider, seller, paper)
    assert type(info.value) is (OutcomeUnknown if mutating else ProviderUnavailable)
    assert (info.value.code, info.value.method) == ("E9876", method)
    assert info.value.retryable


@pytest.mark.parametrize("name", ES_CALLS)
async def test_a_tampered_body_fails_the_signature_check(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, paper: InvoiceRef, name: str
) -> None:
    """Negative control: the fake verifies the signature of every lifecycle call."""
    _, call, _ = ES_CALLS[name]

    async def tamper(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/services"):
            request = httpx.Request(
                request.method,
                request.url,
                headers=request.headers,
                content=request.content.replace(b"}", b" }", 1),
            )
        return await fake.handler(request)

    async with make_provider(transport=httpx.MockTransport(tamper)) as provider:
        with pytest.raises(ProviderAuthError) as info:
            await call(provider, seller, paper)
    assert info.value.code == "070601"
    assert fake.calls == []


@pytest.mark.parametrize(
    ("name", "code", "hint_part"),
    [
        ("request_red_slip", "E9103", "already reversed"),
        ("request_red_slip", "E9103", "cumulative limit"),
        ("request_red_slip", "E9999", "query the slip by bill_id"),
        ("request_red_slip", "E9106", "orderNo already used"),
        ("request_red_slip", "E9118", "buyer tax number"),
        ("void", "E9201", "cannot void 数电 electronic invoice: reverse it"),
        ("deliver", "E9999", "invoice not found"),
        ("deliver", "E9104", "50 characters"),
        ("issue_red_from_slip", "E9106", "query by order number"),
    ],
)
async def test_lifecycle_hints(
    fake: FakeNuonuo,
    make_provider: MakeProvider,
    seller: Seller,
    paper: InvoiceRef,
    name: str,
    code: str,
    hint_part: str,
) -> None:
    _, call, _ = ES_CALLS[name]
    fake.on_gateway = protocol(code)
    async with make_provider() as provider:
        with pytest.raises(ProviderError) as info:
            await call(provider, seller, paper)
    assert info.value.code == code
    assert info.value.hint is not None and hint_part in info.value.hint


async def test_e9999_means_not_found_only_for_delivery(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, paper: InvoiceRef
) -> None:
    fake.on_gateway = protocol("E9999")
    async with make_provider() as provider:
        # undocumented for saveInvoiceRedConfirm: outcome unknown, the slip is queried first
        with pytest.raises(OutcomeUnknown) as info:
            await provider.request_red_slip(seller, paper, None, "2", "B", "R")
    assert info.value.hint is not None and "invoice not found" not in info.value.hint


async def test_a_reused_bill_id_on_the_fake(
    fake: FakeNuonuo, make_provider: MakeProvider, seller: Seller, blue: InvoiceRef
) -> None:
    async with make_provider() as provider:
        await provider.request_red_slip(seller, blue, None, "2", "RED-1", "R-1")
        with pytest.raises(OutcomeUnknown) as info:
            await provider.request_red_slip(seller, blue, None, "2", "RED-1", "R-1")
    assert info.value.code == "E9999"
    assert methods(fake) == [SAVE, SAVE]


async def test_nothing_secret_or_payload_is_logged_at_info(
    fake: FakeNuonuo,
    make_provider: MakeProvider,
    seller: Seller,
    blue: InvoiceRef,
    paper: InvoiceRef,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    fake.add_invoice(serialNo=paper.serial, invoiceCode="", invoiceNo=paper.number)
    async with make_provider() as provider:
        await provider.request_red_slip(seller, blue, PARTIAL_LINES, "1", "RED-1", "R-1")
        await provider.query_red_slip(seller, "RED-1")
        await provider.void(seller, paper, "2")
        await provider.deliver(seller, paper, "buyer@example.com", None)
        await provider.list_invoices(seller, START, END)
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    text = "\n".join(info)
    for secret in ("S3CRET", "杭州某某贸易有限公司", "buyer@example.com", "2654.87", "TOKEN-"):
        assert secret not in text
