"""Every way a call can fail, mapped once to the right exception class.

The question behind each row: could the platform have acted on the request? Nothing sent, or a
read-only call → ProviderUnavailable (retry freely); an issue that was sent and got no protocol
answer → OutcomeUnknown (query by order number first).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from nuonuo_fake import FakeNuonuo

from cdc_invoice.errors import (
    OutcomeUnknown,
    ProviderAuthError,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
)
from cdc_invoice.invoice.model import InvoiceDraft, Seller
from cdc_invoice.providers.nuonuo import NuonuoProvider


def raises(exc_type: type[httpx.TransportError]) -> Callable[..., httpx.Response]:
    def handler(request: httpx.Request, method: str, body: Any) -> httpx.Response:
        raise exc_type("simulated", request=request)

    return handler


def answers(*args: Any, **kwargs: Any) -> Callable[..., httpx.Response]:
    def handler(request: httpx.Request, method: str, body: Any) -> httpx.Response:
        return httpx.Response(*args, **kwargs)

    return handler


def protocol(code: str, result: Any = None, status: int = 200) -> Callable[..., httpx.Response]:
    return answers(status, json={"code": code, "describe": f"描述 {code}", "result": result})


HTML = answers(200, text="<html><body>502 Bad Gateway</body></html>")
GATEWAY_5XX_WITH_JSON = protocol("E0000", {"invoiceSerialNum": "1"}, status=502)
TRANSPORT = [
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
]
NOT_SENT = {httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout}

# (handler, exception on issue, exception on query, code)
TABLE: list[tuple[str, Callable[..., httpx.Response], type[ProviderError], type[ProviderError]]] = [
    *(
        (
            exc.__name__,
            raises(exc),
            ProviderUnavailable if exc in NOT_SENT else OutcomeUnknown,
            ProviderUnavailable,
        )
        for exc in TRANSPORT
    ),
    ("503", answers(503, text="Service Unavailable"), OutcomeUnknown, ProviderUnavailable),
    ("5xx with protocol JSON", GATEWAY_5XX_WITH_JSON, OutcomeUnknown, ProviderUnavailable),
    ("404 html", answers(404, text="<html/>"), OutcomeUnknown, ProviderUnavailable),
    ("html 200", HTML, OutcomeUnknown, ProviderUnavailable),
    ("empty 200", answers(200), OutcomeUnknown, ProviderUnavailable),
    ("not utf-8", answers(200, content=b"\xff\xfe{"), OutcomeUnknown, ProviderUnavailable),
    ("json array", answers(200, json=[1, 2]), OutcomeUnknown, ProviderUnavailable),
    ("json without code", answers(200, json={"x": 1}), OutcomeUnknown, ProviderUnavailable),
    ("redirect", answers(302, headers={"location": "/x"}), OutcomeUnknown, ProviderUnavailable),
    # 070601 签名不匹配: the real sandbox's answer to a bad signature (nuonuo-sdk
    # docs/sandbox-validation.md). Every six-digit gateway code is the seller's credentials
    # problem, never a rejected order.
    ("signature 070601 (live)", protocol("070601"), ProviderAuthError, ProviderAuthError),
    ("signature 070302", protocol("070302"), ProviderAuthError, ProviderAuthError),
    ("gateway 070799", protocol("070799"), ProviderAuthError, ProviderAuthError),
    ("gateway 999999", protocol("999999"), ProviderAuthError, ProviderAuthError),
    # E4000 接口调用失败 is documented for requestBillingNew: refused, nothing created.
    ("E4000 (requestBillingNew doc)", protocol("E4000"), ProviderRejected, ProviderRejected),
    # Undocumented codes never read as "refused": nothing may burn the order number.
    ("undocumented E9999 on issue", protocol("E9999"), OutcomeUnknown, ProviderUnavailable),
    ("undocumented E9201 on issue", protocol("E9201"), OutcomeUnknown, ProviderUnavailable),
    ("unknown X1234", protocol("X1234"), OutcomeUnknown, ProviderUnavailable),
    ("401 + 070302", protocol("070302", status=401), ProviderAuthError, ProviderAuthError),
    ("other 0703xx", protocol("070399"), ProviderAuthError, ProviderAuthError),
    ("E9601", protocol("E9601"), ProviderUnavailable, ProviderUnavailable),
    ("E9302", protocol("E9302"), ProviderRejected, ProviderRejected),
]  # fmt: skip


@pytest.mark.parametrize(
    ("handler", "on_issue", "on_query"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
async def test_error_mapping(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
    handler: Callable[..., httpx.Response],
    on_issue: type[ProviderError],
    on_query: type[ProviderError],
) -> None:
    fake.on_gateway = handler
    async with make_provider() as provider:
        with pytest.raises(ProviderError) as issue:
            await provider.issue(seller, special_draft, "o-1")
        with pytest.raises(ProviderError) as query:
            await provider.query_by_order_nos(seller, ["o-1"])
    assert type(issue.value) is on_issue
    assert type(query.value) is on_query
    assert issue.value.method == "nuonuo.OpeMplatform.requestBillingNew"
    assert query.value.method == "nuonuo.OpeMplatform.queryInvoiceResult"
    if on_issue is OutcomeUnknown and issue.value.code is None:
        assert issue.value.hint is not None and "query by order number" in issue.value.hint
    if on_issue is OutcomeUnknown and issue.value.code is not None:
        # an undocumented answer: the operator is told it is treated as outcome-unknown
        assert issue.value.hint is not None and "never a new one" in issue.value.hint


@pytest.mark.parametrize("exc_type", TRANSPORT)
async def test_transport_errors_are_chained(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    exc_type: type[httpx.TransportError],
) -> None:
    fake.on_gateway = raises(exc_type)
    async with make_provider() as provider:
        with pytest.raises(ProviderError) as info:
            await provider.query_by_serials(seller, ["1"])
    assert isinstance(info.value.__cause__, exc_type)


@pytest.mark.parametrize(
    ("code", "hint_part"),
    [
        ("E9106", "query by order number"),
        ("E9302", "userTax"),
        ("E9130", "rounding"),
        ("E9131", "rounding"),
        ("E9121", "goods code"),
        ("E9138", "goods code"),
        ("E9301", "register"),
        ("E9338", "entitlement"),
        ("E9108", "discount"),
    ],
)
async def test_business_rejections_keep_code_message_and_hint(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
    code: str,
    hint_part: str,
) -> None:
    fake.on_gateway = protocol(code)
    async with make_provider() as provider:
        with pytest.raises(ProviderRejected) as info:
            await provider.issue(seller, special_draft, "o-1")
    assert info.value.code == code
    assert f"描述 {code}" in info.value.message
    assert info.value.hint is not None and hint_part in info.value.hint
    assert not info.value.retryable


async def test_an_undocumented_code_on_issue_is_outcome_unknown_and_keeps_the_code(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
) -> None:
    # Issue 14 row 3: an undocumented code must never read as "refused" (which would fail the
    # order and let retry() burn its number): query first, keep the order number.
    fake.on_gateway = protocol("E9876")
    async with make_provider() as provider:
        with pytest.raises(OutcomeUnknown) as info:
            await provider.issue(seller, special_draft, "o-1")
    assert info.value.code == "E9876" and info.value.retryable
    assert info.value.hint is not None and "never a new one" in info.value.hint


@pytest.mark.parametrize("result", [None, {}, {"invoiceSerialNum": ""}, ["x"], "x"])
async def test_accepted_issue_without_serial_is_outcome_unknown(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
    result: Any,
) -> None:
    fake.on_gateway = protocol("E0000", result)
    async with make_provider() as provider:
        with pytest.raises(OutcomeUnknown):
            await provider.issue(seller, special_draft, "o-1")


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"x": 1}, ProviderUnavailable),
        ([{"serialNo": "s", "status": "2", "exTaxAmount": "1,00"}], ProviderUnavailable),
        ([{"status": "2"}], ProviderUnavailable),
    ],
)
async def test_malformed_query_results_are_unavailable(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    result: Any,
    expected: type[ProviderError],
) -> None:
    fake.on_gateway = protocol("E0000", result)
    async with make_provider() as provider:
        with pytest.raises(expected):
            await provider.query_by_serials(seller, ["s"])


async def test_query_without_result_is_empty(
    fake: FakeNuonuo, make_provider: Callable[..., NuonuoProvider], seller: Seller
) -> None:
    fake.on_gateway = protocol("E0000", None)
    async with make_provider() as provider:
        assert await provider.query_by_serials(seller, ["s"]) == []


async def test_token_endpoint_failures_are_never_outcome_unknown(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
) -> None:
    """No invoice request was sent while the token was missing: issuing again is safe."""

    def token_fails(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    fake.on_token = token_fails
    async with make_provider() as provider:
        with pytest.raises(ProviderUnavailable) as info:
            await provider.issue(seller, special_draft, "o-1")
    assert info.value.method == "accessToken"
    assert fake.calls == []


# ---------------------------------------------------------------- bounds


async def test_response_size_is_bounded_by_content_length(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
) -> None:
    fake.on_gateway = answers(200, content=b"{" + b" " * 2000 + b"}")
    async with make_provider(max_response_bytes=1000) as provider:
        with pytest.raises(ProviderUnavailable, match="larger than 1000 bytes"):
            await provider.query_by_serials(seller, ["1"])
        with pytest.raises(OutcomeUnknown, match="larger than 1000 bytes"):
            await provider.issue(seller, special_draft, "o-1")


async def test_response_size_is_bounded_while_streaming(
    fake: FakeNuonuo, make_provider: Callable[..., NuonuoProvider], seller: Seller
) -> None:
    produced = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        while produced < 10_000:  # the guard only stops a broken bound from hanging the test
            produced += 1
            yield b"x" * 100

    def stream(request: httpx.Request, method: str, body: Any) -> httpx.Response:
        return httpx.Response(200, content=endless())  # chunked: no Content-Length

    fake.on_gateway = stream
    async with make_provider(max_response_bytes=1000) as provider:
        with pytest.raises(ProviderUnavailable, match="larger than"):
            await provider.query_by_serials(seller, ["1"])
    assert produced <= 11


async def test_a_response_exactly_at_the_limit_is_accepted(
    fake: FakeNuonuo, make_provider: Callable[..., NuonuoProvider], seller: Seller
) -> None:
    body = b'{"code":"E9500","describe":"' + b"x" * 100 + b'"}'
    fake.on_gateway = answers(200, content=body)
    async with make_provider(max_response_bytes=len(body)) as provider:
        assert await provider.query_by_serials(seller, ["1"]) == []


async def test_a_server_that_never_finishes_hits_the_overall_deadline(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
) -> None:
    async def hang(request: httpx.Request, method: str, body: Any) -> httpx.Response:
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    fake.on_gateway = hang
    async with make_provider(timeout=0.05) as provider:
        with pytest.raises(OutcomeUnknown, match="within"):
            await provider.issue(seller, special_draft, "o-1")
        with pytest.raises(ProviderUnavailable, match="within"):
            await provider.query_by_serials(seller, ["1"])
