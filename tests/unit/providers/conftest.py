"""Fixtures for the Nuonuo adapter tests; the fake platform lives in nuonuo_fake.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from nuonuo_fake import APP_KEY, APP_SECRET, BASE_URL, TAX_NUMBER, Clock, FakeNuonuo

from cdc_invoice.invoice.model import Buyer, InvoiceDraft, InvoiceLine, LineProperty, Seller
from cdc_invoice.providers.nuonuo import Credentials, MemoryTokenStore, NuonuoProvider


@pytest.fixture
def fake() -> FakeNuonuo:
    return FakeNuonuo()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryTokenStore:
    return MemoryTokenStore(clock=clock)


@pytest.fixture
def make_provider(
    fake: FakeNuonuo, clock: Clock, store: MemoryTokenStore
) -> Iterator[Callable[..., NuonuoProvider]]:
    """Build providers on the fake; use them as ``async with make_provider() as provider``."""

    def build(**kwargs: Any) -> NuonuoProvider:
        options: dict[str, Any] = {
            "base_url": BASE_URL,
            "credentials": {"main": Credentials(app_key=APP_KEY, app_secret=APP_SECRET)},
            "token_store": store,
            "transport": httpx.MockTransport(fake.handler),
            "clock": clock,
        }
        options.update(kwargs)
        return NuonuoProvider(**options)

    yield build


@pytest.fixture
def seller() -> Seller:
    return Seller(
        seller_id="main",
        tax_number=TAX_NUMBER,
        name="航信培训企业789113",
        address="杭州市西湖区文三路1号",
        phone="0571-77777777",
        bank_account="工商银行西湖支行 1202000000000000001",
        clerk="张三",
        payee="李四",
        invoice_line="pc",
        extension_number="8889",
    )


def _line(
    line_no: int,
    name: str,
    *,
    qty: str | None,
    price: str | None,
    incl_flag: bool,
    ex: str,
    tax: str,
    incl: str,
    prop: LineProperty,
    spec: str | None = None,
    unit: str | None = None,
    code: str = "1090511030000000000",
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
        property=prop,
        spec=spec,
        unit=unit,
    )


@pytest.fixture
def special_draft() -> InvoiceDraft:
    """A 数电专票 (bs) for a company buyer: a discounted computer, its discount line, and mice."""
    buyer = Buyer(
        name="杭州某某贸易有限公司",
        tax_number="91330106MA2B0QWEF1",
        email="buyer@example.com",
        phone="0571-88888888",  # a landline: printed, but no SMS
        address="杭州市滨江区江南大道100号",
        bank_account="招商银行滨江支行 571900000000001",
        invoice_line="bs",
    )
    lines = (
        _line(1, "电脑", qty="1", price="3099.00", incl_flag=True, ex="2742.48", tax="356.52",
              incl="3099.00", prop=LineProperty.DISCOUNTED, spec="y460", unit="台"),
        _line(2, "电脑", qty=None, price=None, incl_flag=True, ex="-87.61", tax="-11.39",
              incl="-99.00", prop=LineProperty.DISCOUNT),
        _line(3, "鼠标", qty="2", price="49.50000000", incl_flag=False, ex="99.00", tax="12.87",
              incl="111.87", prop=LineProperty.NORMAL, unit="个", code="1090512990000000000"),
    )  # fmt: skip
    return InvoiceDraft(
        source="shop",
        order_ref="SO-1",
        buyer=buyer,
        invoice_line="bs",
        lines=lines,
        total_excl_tax=Decimal("2753.87"),
        total_tax=Decimal("358.00"),
        total_incl_tax=Decimal("3111.87"),
        remark="合同号 HT-2025-001",
    )
