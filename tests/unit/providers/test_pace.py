"""Peak season (issue 17): the adapter paces calls, absorbs throttling answers, and holds a
seller's invoices while its quota is exhausted; QuotaGuard's pause / probe / resume rules."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from nuonuo_fake import FakeNuonuo

from cdc_invoice.errors import ProviderThrottled, SellerPaused
from cdc_invoice.invoice.model import InvoiceDraft, Seller
from cdc_invoice.providers.nuonuo import NuonuoProvider
from cdc_invoice.providers.pace import Pacer, QuotaGuard

ISSUE = "nuonuo.OpeMplatform.requestBillingNew"


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def throttling(fake: FakeNuonuo, times: int, *, http_429: bool = False) -> httpx.MockTransport:
    """The fake platform, whose first ``times`` gateway calls are throttled (not acted on)."""
    left = [times]

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/services") and left[0] > 0:
            left[0] -= 1
            if http_429:
                return httpx.Response(429, text="Too Many Requests")
            return httpx.Response(200, json={"code": "E9429", "describe": "请求过于频繁"})
        return await fake.handler(request)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("http_429", [False, True], ids=["E9429", "HTTP429"])
async def test_throttling_answers_are_resent_further_apart_and_nothing_fails(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
    http_429: bool,
) -> None:
    t = FakeTime()
    pacer = Pacer(clock=t.clock, sleep=t.sleep)
    transport = throttling(fake, 3, http_429=http_429)
    async with make_provider(transport=transport, pacer=pacer) as provider:
        accepted = await provider.issue(seller, special_draft, "shop-SO-1-1")
    assert accepted.order_no == "shop-SO-1-1"
    assert [c.method for c in fake.calls] == [ISSUE]  # one invoice: throttled calls did nothing
    assert pacer.throttled["main"] == 3
    assert pacer.spacing["main"] > 0  # the seller's calls are now spaced
    assert sum(t.slept) > 0


async def test_throttled_past_the_wait_limit_is_deferred_not_failed(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
) -> None:
    t = FakeTime()
    pacer = Pacer(clock=t.clock, sleep=t.sleep, max_throttle_wait=10.0)
    async with make_provider(transport=throttling(fake, 10_000), pacer=pacer) as provider:
        with pytest.raises(ProviderThrottled) as info:
            await provider.issue(seller, special_draft, "shop-SO-1-1")
    assert info.value.retryable and not info.value.counts_as_attempt
    assert info.value.code == "E9429" and "max_requests_per_second" in (info.value.hint or "")
    assert fake.calls == []
    assert t.now - 1000.0 <= 10.0 + pacer.max_spacing * 2


def test_spacing_doubles_once_per_period_and_narrows_on_success() -> None:
    t = FakeTime()
    pacer = Pacer(clock=t.clock, sleep=t.sleep, min_spacing=0.1)
    pacer.on_throttled("s")
    pacer.on_throttled("s")  # same moment: the same signal, not a second doubling
    assert pacer.spacing["s"] == pytest.approx(0.1)
    t.now += 0.1
    pacer.on_throttled("s")
    assert pacer.spacing["s"] == pytest.approx(0.2)
    for _ in range(40):
        pacer.on_success("s")
    assert pacer.spacing["s"] == 0.0


async def test_a_paused_seller_sends_no_new_invoice(
    fake: FakeNuonuo,
    make_provider: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
) -> None:
    t = FakeTime()
    quota = QuotaGuard(probe_seconds=60.0, clock=t.clock)
    assert quota.on_quota_failure("main", "S1", "当月发票总额度不足") is False  # pauses
    async with make_provider(quota=quota) as provider:
        with pytest.raises(SellerPaused) as info:
            await provider.issue(seller, special_draft, "shop-SO-1-1")
    assert not info.value.counts_as_attempt and info.value.code == "QUOTA_PAUSED"
    assert 59.0 <= info.value.retry_after <= 61.0
    assert fake.calls == []


def test_quota_guard_probes_once_per_interval_and_resumes_on_an_issued_invoice() -> None:
    t = FakeTime()
    g = QuotaGuard(probe_seconds=10.0, clock=t.clock)
    assert g.on_quota_failure("s", "A", "额度不足") is False  # first sighting: pause
    assert g.on_quota_failure("s", "B", "额度不足") is False  # waits
    assert not g.may_issue("s")
    t.now += 10.0
    assert g.on_quota_failure("s", "A", "额度不足") is True  # the probe
    assert g.on_quota_failure("s", "B", "额度不足") is False  # one probe at a time
    assert g.on_quota_failure("s", "A", "额度不足") is False  # the probe failed: next interval
    t.now += 10.0
    assert g.on_quota_failure("s", "B", "额度不足") is True  # probe again
    g.on_issued("s")  # the quota was raised
    assert g.may_issue("s") and "s" not in g.paused
    t.now += 1.0
    assert g.on_quota_failure("s", "A", "额度不足") is True  # failed before: resent at once
    assert g.on_quota_failure("s", "A", "额度不足") is False  # resent and failed: pause again
    assert "s" in g.paused


def test_a_pause_without_anything_to_resend_lets_one_new_invoice_probe() -> None:
    t = FakeTime()
    g = QuotaGuard(probe_seconds=10.0, clock=t.clock)
    g.on_quota_failure("s", "A", "额度不足")
    t.now += 15.0
    assert not g.may_issue("s")
    t.now += 5.0
    assert g.may_issue("s")  # nobody probed for a whole extra interval
    assert not g.may_issue("s")


def test_one_sellers_pause_leaves_the_others_flowing() -> None:
    t = FakeTime()
    g = QuotaGuard(probe_seconds=10.0, clock=t.clock)
    g.on_quota_failure("a", "A1", "额度不足")
    assert not g.may_issue("a")
    assert g.may_issue("b") and g.retry_after("b") is None
    assert g.on_quota_failure("b", "B1", "额度不足") is False  # b's own first failure pauses b
    g.on_issued("a")
    assert g.may_issue("a") and not g.may_issue("b")
