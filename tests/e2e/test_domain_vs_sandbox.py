"""The domain's invoices pass the sandbox's independent checks, end to end over HTTP.

The same random orders as the domain's property tests (1–300 lines, every rate, inclusive and
exclusive prices, line and order discounts, float-typed sources, 8-decimal quantities, splits)
are computed by cdc_invoice.invoice, sent by the Nuonuo adapter to a real sandbox process, and
must be accepted (E0000) and issued (status 2, not 22), with the platform's totals equal to ours.
The sandbox's rules are written from the reference, not from the domain's code.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from cdc_invoice import harness
from cdc_invoice.errors import InvalidOrder
from cdc_invoice.invoice.compute import build_invoices
from cdc_invoice.invoice.mapping import build_order
from cdc_invoice.invoice.model import Seller
from cdc_invoice.providers.nuonuo.adapter import NuonuoProvider
from cdc_invoice.providers.nuonuo.client import Credentials
from cdc_invoice.providers.nuonuo.token import MemoryTokenStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "invoice"))
from test_invoice_properties import BUYERS, ITEMS, GenLine, orders, rows_for


@pytest.fixture(scope="module")
def platform(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[NuonuoProvider, asyncio.AbstractEventLoop]]:
    sb = harness.start_sandbox(tmp_path_factory.mktemp("sb"), issue_delay_ms=0)
    loop = asyncio.new_event_loop()
    provider = NuonuoProvider(
        base_url=sb.url,
        token_url=sb.token_url,
        token_store=MemoryTokenStore(),
        credentials={"main": Credentials(app_key=sb.app_key, app_secret=sb.app_secret)},
    )
    yield provider, loop
    loop.run_until_complete(provider.aclose())
    loop.close()
    sb.proc.stop()


async def issue_all(provider: NuonuoProvider, seller: Seller, drafts: list) -> list:  # type: ignore[type-arg]
    numbers = []
    for draft in drafts:
        order_no = uuid.uuid4().hex[:20].upper()
        await provider.issue(seller, draft, order_no)
        numbers.append(order_no)
    found = []
    for i in range(0, len(numbers), provider.max_query_batch):
        found += await provider.query_by_order_nos(
            seller, numbers[i : i + provider.max_query_batch]
        )
    return found


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=orders())
def test_random_orders_are_issued_by_the_independent_sandbox(
    platform: tuple[NuonuoProvider, asyncio.AbstractEventLoop],
    case: tuple[list[GenLine], int, Seller],
) -> None:
    provider, loop = platform
    lines, order_pct, seller = case
    seller = Seller(
        seller.seller_id,
        harness.SELLER_TAX_NUMBER,
        seller.name,
        clerk=seller.clerk,
        max_lines=seller.max_lines,
        max_invoice_amount=seller.max_invoice_amount,
    )
    rows, _ = rows_for(lines, order_pct)
    order = build_order("shop", "SO1", rows, BUYERS, ITEMS, seller)
    try:
        drafts = build_invoices(order, seller)
    except InvalidOrder:
        return  # refused before sending (all discounted away, …): the property test covers it
    found = loop.run_until_complete(issue_all(provider, seller, drafts))
    assert len(found) == len(drafts)
    by_total = sorted((f.status_code, f.fail_cause, f.total_incl_tax) for f in found)
    assert all(code == "2" for code, _, _ in by_total), by_total
    assert sorted(f.total_incl_tax for f in found) == sorted(d.total_incl_tax for d in drafts)
    assert sum((f.total_tax or Decimal(0) for f in found), Decimal(0)) == sum(
        d.total_tax for d in drafts
    )
