"""The adapter end to end against the strict fake: envelope, signature, issue, query."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from nuonuo_fake import APP_KEY, BASE_URL, NOW, TAX_NUMBER, FakeNuonuo

from cdc_invoice.config import ProviderConfig
from cdc_invoice.errors import ProviderAuthError, ProviderRejected
from cdc_invoice.invoice.model import InvoiceDraft, Seller
from cdc_invoice.providers.base import IssueAccepted, Provider
from cdc_invoice.providers.nuonuo import NuonuoProvider, payload

ISSUE = "nuonuo.OpeMplatform.requestBillingNew"
QUERY = "nuonuo.OpeMplatform.queryInvoiceResult"


def test_provider_satisfies_the_protocol(make_provider: Callable[..., NuonuoProvider]) -> None:
    provider: Provider = make_provider()  # mypy checks the structural match
    assert provider.max_query_batch == 50


async def test_what_is_sent_is_what_is_signed(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
) -> None:
    async with make_provider() as provider:
        accepted = await provider.issue(seller, special_draft, "shop-SO-1-1")

    assert fake.violations == []
    assert accepted == IssueAccepted(order_no="shop-SO-1-1", serial="25010110000000000001")
    [call] = fake.calls  # the fake verified X-Nuonuo-Sign over exactly these bytes
    assert call.method == ISSUE
    now = datetime.fromtimestamp(NOW, UTC)
    assert call.body == payload.build_order(seller, special_draft, "shop-SO-1-1", invoice_date=now)
    assert call.body["order"]["buyerName"] == "杭州某某贸易有限公司"
    assert call.body["order"]["invoiceDate"] == "2025-01-01 10:00:00"
    # Compact UTF-8, not \\u escapes: the platform signs and prints what it receives.
    assert "杭州某某贸易有限公司".encode() in call.raw
    assert b"\\u" not in call.raw and b", " not in call.raw and b": " not in call.raw
    headers = call.request.headers
    assert headers["userTax"] == TAX_NUMBER
    assert headers["method"] == ISSUE
    assert headers["accessToken"] == fake.issued_tokens[0]
    assert str(call.request.url).startswith(f"{BASE_URL}/open/v1/services?senid=")
    assert call.request.url.params["appkey"] == APP_KEY


async def test_a_body_changed_after_signing_is_refused(
    fake: FakeNuonuo, make_provider: Callable[..., NuonuoProvider], seller: Seller
) -> None:
    """Negative control: proves the fake's signature check really bites."""

    async def tamper(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/services"):
            body = request.content.replace("旧".encode(), "新".encode())
            request = httpx.Request(
                request.method, request.url, headers=request.headers, content=body
            )
        return await fake.handler(request)

    async with make_provider(transport=httpx.MockTransport(tamper)) as provider:
        with pytest.raises(ProviderAuthError) as info:
            await provider.query_by_order_nos(seller, ["旧-1"])
    assert info.value.code == "070601"
    assert fake.calls == []


async def test_each_request_has_a_fresh_senid_and_nonce(
    fake: FakeNuonuo, make_provider: Callable[..., NuonuoProvider], seller: Seller
) -> None:
    async with make_provider() as provider:
        await asyncio.gather(*(provider.query_by_serials(seller, [str(i)]) for i in range(20)))
    senids = {c.request.url.params["senid"] for c in fake.calls}
    assert len(fake.calls) == 20 and len(senids) == 20


async def test_issue_then_poll_by_serial_and_by_order_number(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
) -> None:
    async with make_provider() as provider:
        accepted = await provider.issue(seller, special_draft, "shop-SO-1-1")
        by_serial = await provider.query_by_serials(seller, [accepted.serial, "unknown"])
        by_order = await provider.query_by_order_nos(seller, ["shop-SO-1-1"])
        missing = await provider.query_by_order_nos(seller, ["never-issued"])  # E9500
        with pytest.raises(ProviderRejected) as info:
            await provider.issue(seller, special_draft, "shop-SO-1-1")
    assert [i.serial for i in by_serial] == [accepted.serial]
    assert by_serial[0].status == "issuing"
    assert by_serial == by_order
    assert missing == []
    assert info.value.code == "E9106"
    assert info.value.hint is not None and "query by order number" in info.value.hint
    assert fake.calls[1].body == {
        "serialNos": [accepted.serial, "unknown"],
        "isOfferInvoiceDetail": "1",
    }


async def test_query_amounts_never_pass_through_float(
    fake: FakeNuonuo, make_provider: Callable[..., NuonuoProvider], seller: Seller
) -> None:
    # JSON numbers, not strings, and more digits than a binary double holds.
    raw = (
        b'{"code":"E0000","describe":"","result":[{"serialNo":"s1","orderNo":"o1","status":"2",'
        b'"exTaxAmount":12345678901234567.89,"taxAmount":0.1,"orderAmount":12345678901234567.99}]}'
    )

    def answer(request: httpx.Request, method: str, body: Any) -> httpx.Response:
        return httpx.Response(200, content=raw, headers={"content-type": "application/json"})

    fake.on_gateway = answer
    async with make_provider() as provider:
        [inv] = await provider.query_by_serials(seller, ["s1"])
    assert inv.total_excl_tax == Decimal("12345678901234567.89")
    assert inv.total_tax == Decimal("0.1")
    assert inv.total_incl_tax == Decimal("12345678901234567.99")


async def test_query_batches_are_bounded(
    fake: FakeNuonuo, make_provider: Callable[..., NuonuoProvider], seller: Seller
) -> None:
    async with make_provider() as provider:
        with pytest.raises(ValueError, match="at most 50"):
            await provider.query_by_serials(seller, [str(i) for i in range(51)])
        with pytest.raises(ValueError, match="at most 50"):
            await provider.query_by_order_nos(seller, [str(i) for i in range(51)])
        with pytest.raises(TypeError):
            await provider.query_by_serials(seller, "22072015181902023731")
        assert await provider.query_by_serials(seller, []) == []
        assert await provider.query_by_serials(seller, [str(i) for i in range(50)]) == []
    assert fake.token_fetches == 1 and len(fake.calls) == 1  # only the 50-batch was sent


async def test_unknown_seller_is_an_auth_error_without_any_request(
    fake: FakeNuonuo, make_provider: Callable[..., NuonuoProvider], seller: Seller
) -> None:
    async with make_provider(credentials={}) as provider:
        with pytest.raises(ProviderAuthError, match="no Nuonuo credentials"):
            await provider.query_by_serials(seller, ["1"])
    assert fake.token_fetches == 0


async def test_separate_token_url(
    fake: FakeNuonuo, make_provider: Callable[..., NuonuoProvider], seller: Seller
) -> None:
    hosts: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return await fake.handler(request)

    async with make_provider(
        base_url="https://sdk.nuonuo.test/",
        token_url="https://open.nuonuo.test/accessToken",
        transport=httpx.MockTransport(handler),
    ) as provider:
        await provider.query_by_serials(seller, ["1"])
    assert hosts == ["open.nuonuo.test", "sdk.nuonuo.test"]


async def test_the_default_token_url_is_the_documented_host_not_the_gateway(
    fake: FakeNuonuo, make_provider: Callable[..., NuonuoProvider], seller: Seller
) -> None:
    # 创建应用.md: "POST https://open.nuonuo.com/accessToken" — never {gateway}/accessToken,
    # which exists only in our sandbox (issue 14 row 4).
    urls: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url.copy_with(query=None)))
        return await fake.handler(request)

    async with make_provider(
        base_url="https://sdk.nuonuo.com", transport=httpx.MockTransport(handler)
    ) as provider:
        await provider.query_by_serials(seller, ["1"])
    assert urls == [
        "https://open.nuonuo.com/accessToken",
        "https://sdk.nuonuo.com/open/v1/services",
    ]


def test_the_configured_default_token_url_is_the_documented_host() -> None:
    assert ProviderConfig().token_url == "https://open.nuonuo.com/accessToken"


async def test_cookies_set_by_the_gateway_are_never_sent_back(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
) -> None:
    sent: list[str | None] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("cookie"))
        response = await fake.handler(request)
        response.headers["set-cookie"] = "SESSION=seller-a; Path=/"
        return response

    async with make_provider(transport=httpx.MockTransport(handler)) as provider:
        await provider.issue(seller, special_draft, "shop-SO-1-1")
        await provider.issue(seller, special_draft, "shop-SO-1-2")
    assert len(sent) >= 3 and sent == [None] * len(sent)  # token + two issues, no Cookie
