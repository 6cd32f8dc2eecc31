"""Access tokens: fetched rarely (50 per 30 days), shared, replaced once, never leaked."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx
import pytest
from nuonuo_fake import APP_KEY, APP_SECRET, Clock, FakeNuonuo

from cdc_invoice.errors import ProviderAuthError, ProviderError, ProviderUnavailable
from cdc_invoice.invoice.model import InvoiceDraft, Seller
from cdc_invoice.providers.nuonuo import (
    CachedToken,
    Credentials,
    MemoryTokenStore,
    NuonuoProvider,
)
from cdc_invoice.providers.nuonuo.token import REFRESH_MARGIN_SECONDS


async def test_one_fetch_serves_many_concurrent_calls(
    fake: FakeNuonuo,
    store: MemoryTokenStore,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
) -> None:
    async with make_provider() as provider:
        await asyncio.gather(*(provider.query_by_serials(seller, [str(i)]) for i in range(30)))
        await provider.query_by_serials(seller, ["again"])
    assert fake.token_fetches == 1
    assert store.fetches == 1
    assert len(fake.calls) == 31


class CountingStore(MemoryTokenStore):
    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.gets = 0
        self.fetch_calls = 0

    async def get(self, app_key: str) -> CachedToken | None:
        self.gets += 1
        return await super().get(app_key)

    async def fetch_and_store(
        self,
        app_key: str,
        fetch: Callable[[], Awaitable[CachedToken]],
        *,
        stale_token: str | None,
    ) -> CachedToken:
        self.fetch_calls += 1
        return await super().fetch_and_store(app_key, fetch, stale_token=stale_token)


async def test_the_hot_path_stays_off_the_shared_store(
    clock: Clock, make_provider: Callable[..., NuonuoProvider], seller: Seller
) -> None:
    """The daemon's store is a database: one look-up per process, not one per call."""
    store = CountingStore(clock)
    async with make_provider(token_store=store) as provider:
        await asyncio.gather(*(provider.query_by_serials(seller, [str(i)]) for i in range(30)))
        await provider.query_by_serials(seller, ["again"])
    assert (store.gets, store.fetch_calls, store.fetches) == (1, 1, 1)


async def test_two_processes_share_the_store(
    fake: FakeNuonuo, make_provider: Callable[..., NuonuoProvider], seller: Seller
) -> None:
    async with make_provider() as first, make_provider() as second:
        await asyncio.gather(
            *(p.query_by_serials(seller, ["1"]) for p in (first, second) for _ in range(5))
        )
    assert fake.token_fetches == 1


async def test_token_is_refreshed_shortly_before_it_expires(
    fake: FakeNuonuo,
    clock: Clock,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
) -> None:
    async with make_provider() as provider:
        await provider.query_by_serials(seller, ["1"])
        clock.now += 86_400 - REFRESH_MARGIN_SECONDS - 1
        await provider.query_by_serials(seller, ["1"])
        assert fake.token_fetches == 1
        clock.now += 2
        await provider.query_by_serials(seller, ["1"])
    assert fake.token_fetches == 2
    assert [c.request.headers["accessToken"] for c in fake.calls] == [
        fake.issued_tokens[0],
        fake.issued_tokens[0],
        fake.issued_tokens[1],
    ]


@pytest.mark.parametrize("expires_in", [None, "", "never", -1, "0", "nan"])
async def test_unusable_expires_in_means_the_documented_24_hours(
    fake: FakeNuonuo,
    store: MemoryTokenStore,
    clock: Clock,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    expires_in: object,
) -> None:
    fake.expires_in = expires_in
    async with make_provider() as provider:
        await provider.query_by_serials(seller, ["1"])
    token = await store.get(APP_KEY)
    assert token is not None and token.expires_at == clock.now + 86_400


async def test_rejected_token_is_replaced_once_and_the_call_succeeds(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
) -> None:
    async with make_provider() as provider:
        await provider.query_by_serials(seller, ["1"])
        fake.revoke_all()  # e.g. revoked in the Nuonuo console
        accepted = await provider.issue(seller, special_draft, "o-1")
    assert accepted.serial
    assert fake.token_fetches == 2
    assert [c.method for c in fake.calls].count("nuonuo.OpeMplatform.requestBillingNew") == 1


async def test_concurrent_rejections_cost_one_fetch(
    fake: FakeNuonuo, make_provider: Callable[..., NuonuoProvider], seller: Seller
) -> None:
    async with make_provider() as provider:
        await provider.query_by_serials(seller, ["warm-up"])
        fake.revoke_all()
        await asyncio.gather(*(provider.query_by_serials(seller, [str(i)]) for i in range(20)))
    assert fake.token_fetches == 2


async def test_a_token_replaced_by_another_process_is_adopted_without_fetching(
    fake: FakeNuonuo,
    store: MemoryTokenStore,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
) -> None:
    async with make_provider() as ours, make_provider() as theirs:
        await ours.query_by_serials(seller, ["1"])
        fake.revoke_all()
        await theirs.query_by_serials(seller, ["1"])  # theirs is fresh: it fetches #2 via the store
        assert fake.token_fetches == 2
        # ours still holds token #1 in memory; the platform rejects it, the store has #2.
        await ours.query_by_serials(seller, ["1"])
    assert fake.token_fetches == 2


async def test_a_token_that_keeps_being_rejected_is_fetched_only_once_more(
    fake: FakeNuonuo, make_provider: Callable[..., NuonuoProvider], seller: Seller
) -> None:
    def always_invalid(request: httpx.Request, method: str, body: object) -> httpx.Response:
        return httpx.Response(200, json={"code": "070301", "describe": "token无效"})

    fake.on_gateway = always_invalid
    async with make_provider() as provider:
        with pytest.raises(ProviderAuthError) as info:
            await provider.query_by_serials(seller, ["1"])
    assert info.value.code == "070301"
    assert fake.token_fetches == 2


@pytest.mark.parametrize("code", ["070302", "070399", "070601"])
async def test_a_gateway_code_naming_the_token_is_a_token_error_too(
    fake: FakeNuonuo, make_provider: Callable[..., NuonuoProvider], seller: Seller, code: str
) -> None:
    # Issue 14 row 2: the real code for a bad token is undocumented, so any gateway answer that
    # names the token gets one fresh token (a signature code — 070601 签名不匹配 — does not).
    def token_in_text(request: httpx.Request, method: str, body: object) -> httpx.Response:
        return httpx.Response(200, json={"code": code, "describe": "accessToken不存在或已失效"})

    fake.on_gateway = token_in_text
    async with make_provider() as provider:
        with pytest.raises(ProviderAuthError) as info:
            await provider.query_by_serials(seller, ["1"])
    assert info.value.code == code
    assert fake.token_fetches == (1 if code in ("070601", "070302") else 2)


async def test_quota_exhausted_is_an_auth_error_that_explains_the_limit(
    fake: FakeNuonuo, make_provider: Callable[..., NuonuoProvider], seller: Seller
) -> None:
    fake.on_token = lambda request: httpx.Response(
        200, json={"error": "070306", "error_description": "调用次数已达上限"}
    )
    async with make_provider() as provider:
        with pytest.raises(ProviderAuthError) as info:
            await provider.query_by_serials(seller, ["1"])
    assert info.value.code == "070306"
    assert info.value.hint is not None and "50" in info.value.hint and "30 days" in info.value.hint
    assert fake.calls == []


@pytest.mark.parametrize(
    ("credentials", "code"),
    [
        (Credentials(app_key="wrong", app_secret=APP_SECRET), "070304"),
        (Credentials(app_key=APP_KEY, app_secret="wrong-secret"), "070305"),
    ],
)
async def test_bad_credentials_say_which_setting_to_check(
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    credentials: Credentials,
    code: str,
) -> None:
    async with make_provider(credentials={"main": credentials}) as provider:
        with pytest.raises(ProviderAuthError) as info:
            await provider.query_by_serials(seller, ["1"])
    assert info.value.code == code
    assert info.value.hint is not None and "app_key/app_secret" in info.value.hint


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(503, text="<html>busy</html>"),
        httpx.Response(200, json={"expires_in": 86400}),
        httpx.Response(200, text="access_token=abc"),
    ],
)
async def test_token_endpoint_garbage_is_unavailable(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    response: httpx.Response,
) -> None:
    fake.on_token = lambda request: response
    async with make_provider() as provider:
        with pytest.raises(ProviderUnavailable):
            await provider.query_by_serials(seller, ["1"])


def test_reprs_hide_secrets() -> None:
    creds = Credentials(app_key=APP_KEY, app_secret=APP_SECRET)
    token = CachedToken(access_token="TOKEN-xyz", expires_at=1.0)
    assert APP_SECRET not in repr(creds) and APP_KEY in repr(creds)
    assert "TOKEN-xyz" not in repr(token) and "TOKEN-xyz" not in str(token)


async def test_secrets_and_tokens_never_reach_logs_or_exceptions(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx included
    errors: list[ProviderError] = []
    leak_header = {"on": False}

    async def handler(request: httpx.Request) -> httpx.Response:
        if leak_header["on"] and request.url.path.endswith("/services"):
            # h11 quotes illegal header values in its message: the adapter must redact them.
            token = request.headers["accessToken"]
            raise httpx.LocalProtocolError(f"Illegal header value b'{token}' secret={APP_SECRET}")
        return await fake.handler(request)

    async with make_provider(transport=httpx.MockTransport(handler)) as provider:
        await provider.issue(seller, special_draft, "o-1")
        await provider.query_by_order_nos(seller, ["o-1"])
        fake.revoke_all()
        await provider.query_by_order_nos(seller, ["o-1"])  # refetch path
        leak_header["on"] = True
        for attempt in (
            provider.issue(seller, special_draft, "o-2"),
            provider.query_by_serials(seller, ["1"]),
        ):
            with pytest.raises(ProviderError) as info:
                await attempt
            errors.append(info.value)
        leak_header["on"] = False
        fake.revoke_all()
        fake.on_token = lambda request: httpx.Response(
            200, json={"error": "070306", "error_description": "limit"}
        )
        with pytest.raises(ProviderAuthError) as auth:
            await provider.query_by_serials(seller, ["1"])
        errors.append(auth.value)

    assert len(fake.issued_tokens) == 2 and len(errors) == 3
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    text = "\n".join(
        [caplog.text]
        + [r.getMessage() for r in caplog.records]
        + [f"{e!s} {e!r} {e.hint} {e.code}" for e in errors]
    )
    for needle in (APP_SECRET, *fake.issued_tokens):
        assert needle not in text
    assert "<redacted>" in str(errors[0])


async def test_store_refetches_only_when_its_token_is_the_stale_one(clock: Clock) -> None:
    store = MemoryTokenStore(clock=clock)
    issued = iter(["A", "B", "C"])

    async def fetch() -> CachedToken:
        return CachedToken(access_token=next(issued), expires_at=clock() + 3600)

    a = await store.fetch_and_store("k", fetch, stale_token=None)
    assert (await store.fetch_and_store("k", fetch, stale_token=None)) is a
    assert (await store.fetch_and_store("k", fetch, stale_token="other")) is a
    b = await store.fetch_and_store("k", fetch, stale_token="A")
    assert b.access_token == "B" and store.fetches == 2
    clock.now += 3600
    c = await store.fetch_and_store("k", fetch, stale_token=None)  # expired: fetch anyway
    assert c.access_token == "C" and store.fetches == 3


async def test_platform_messages_that_echo_the_token_are_redacted(
    fake: FakeNuonuo, make_provider: Callable[..., NuonuoProvider], seller: Seller
) -> None:
    def echo(request: httpx.Request, method: str, body: object) -> httpx.Response:
        token = request.headers["accessToken"]
        return httpx.Response(200, json={"code": "E9876", "describe": f"bad token {token}"})

    fake.on_gateway = echo
    async with make_provider() as provider:
        with pytest.raises(ProviderError) as info:
            await provider.query_by_serials(seller, ["1"])
    assert fake.issued_tokens[0] not in str(info.value)
    assert "<redacted>" in str(info.value)
