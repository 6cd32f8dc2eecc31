"""Property tests: random orders through mapping and computation satisfy every invoice rule.

The checks below are written independently of the implementation (own rounding, own sums), so a
rule broken in compute.py cannot be hidden by the same mistake in the test.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, localcontext
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cdc_invoice.errors import InvalidOrder
from cdc_invoice.invoice.compute import build_invoices
from cdc_invoice.invoice.mapping import build_order
from cdc_invoice.invoice.model import Buyer, InvoiceDraft, ItemTax, LineProperty, Seller

C = Decimal("0.01")
D0 = Decimal(0)
# (rate, policy flag, tax code): every allowed rate, with the flag it needs.
RATES = [
    ("0.13", None, "1090511030000000000"),
    ("0.09", None, "1030201010000000000"),
    ("0.06", None, "3049900000000000000"),
    ("0.05", "09", "3070401000000000000"),
    ("0.03", None, "1060512990000000000"),
    # 3040502020200000000 (停车费) is a 不动产经营租赁 code, refused as a special business now
    ("0.015", "10", "3049900000000000000"),
    ("0.01", None, "1060512990000000000"),
    ("0", "03", "3070401000000000000"),
]
ITEMS = {
    f"R{i}": ItemTax(f"R{i}", code, Decimal(rate), policy_flag=flag)
    for i, (rate, flag, code) in enumerate(RATES)
}
BUYERS = {"C1": Buyer("杭州某某贸易有限公司", tax_number="91330106MA2B0QWEF1")}


def cents(x: Decimal) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 80
        return x.quantize(C, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class GenLine:
    line_no: int
    item: int
    quantity: Decimal
    price: Decimal
    includes_tax: bool
    discount_pct: int
    as_type: str  # how the numbers travel: float, str, Decimal


def scaled(places: int, top: int) -> st.SearchStrategy[Decimal]:
    return st.integers(1, top * 10**places).map(lambda n: Decimal(n).scaleb(-places))


@st.composite
def decimals_up_to_8(draw: st.DrawFn, top: int) -> Decimal:
    places = draw(st.sampled_from([0, 0, 2, 3, 4, 8]))
    return draw(scaled(places, top))


@st.composite
def orders(draw: st.DrawFn) -> tuple[list[GenLine], int, Seller]:
    n = draw(st.one_of(st.integers(1, 12), st.integers(100, 300)))
    same_basis = draw(st.booleans())
    basis = draw(st.booleans())
    lines = []
    for i in range(n):
        quantity = draw(decimals_up_to_8(5000))
        price = draw(decimals_up_to_8(20000))
        # a line must come to at least 0.01 (validation refuses a 0.00 line)
        price = max(price, (C / quantity).quantize(Decimal("1E-8"), rounding=ROUND_CEILING))
        lines.append(
            GenLine(
                line_no=i + 1,
                item=draw(st.integers(0, len(RATES) - 1)),
                quantity=quantity,
                price=price,
                includes_tax=basis if same_basis else draw(st.booleans()),
                discount_pct=draw(st.sampled_from([0, 0, 0, 1, 10, 33, 50, 100])),
                as_type=draw(st.sampled_from(["float", "str", "Decimal"])),
            )
        )
    order_pct = draw(st.sampled_from([0, 0, 3, 17, 50, 90])) if same_basis else 0
    gross_max = max(cents(g.quantity * g.price) for g in lines) * Decimal("1.13") + 1
    seller = Seller(
        "main",
        "339902999999789113",
        "航信培训企业",
        clerk="张三",
        max_lines=draw(st.sampled_from([2000, 2000, 2, 3, 7, 40])),
        max_invoice_amount=draw(st.sampled_from([None, cents(gross_max), cents(gross_max * 3)])),
    )
    return lines, order_pct, seller


def encode(value: Decimal, as_type: str) -> Any:
    if as_type == "float":
        return float(value)  # every generated value has ≤ 15 significant digits
    return str(value) if as_type == "str" else value


def rows_for(lines: list[GenLine], order_pct: int) -> tuple[list[dict[str, Any]], list[Decimal]]:
    discounts = []
    rows = []
    for g in lines:
        discount = cents(cents(g.quantity * g.price) * g.discount_pct / 100)
        discounts.append(discount)
        rows.append(
            {
                "order_ref": "SO1",
                "customer_ref": "C1",
                "line_no": g.line_no,
                "item_ref": f"R{g.item}",
                "item_name": f"商品{g.item}",
                "unit": "个",
                "quantity": encode(g.quantity, g.as_type),
                "unit_price": encode(g.price, g.as_type),
                "price_includes_tax": g.includes_tax,
                "discount": encode(discount, g.as_type),
            }
        )
    net = sum((cents(g.quantity * g.price) - d for g, d in zip(lines, discounts, strict=True)), D0)
    order_discount = cents(net * order_pct / 100)
    for row in rows:
        row["order_discount"] = float(order_discount)
    return rows, discounts


def check_draft(draft: InvoiceDraft, seller: Seller) -> None:
    lines = draft.lines
    assert 1 <= len(lines) <= seller.max_lines
    drift = Decimal(0)
    for position, line in enumerate(lines, 1):
        assert line.line_no == position
        e, t, i, r = line.amount_excl_tax, line.tax, line.amount_incl_tax, line.tax_rate
        for amount in (e, t, i):
            assert amount == cents(amount)
        assert e + t == i
        assert abs(e * r - t) <= Decimal("0.06")
        drift += e * r
        if line.property == LineProperty.DISCOUNT:
            main = lines[position - 2]
            assert position > 1 and main.property == LineProperty.DISCOUNTED
            assert (line.name, line.tax_code, line.tax_rate, line.policy_flag) == (
                main.name,
                main.tax_code,
                main.tax_rate,
                main.policy_flag,
            )
            assert line.source_line_no == main.source_line_no
            assert line.quantity is None and line.unit_price is None
            assert i < 0 and e < 0 and t <= 0
            assert -i <= main.amount_incl_tax and -e <= main.amount_excl_tax and -t <= main.tax
            continue
        if line.property == LineProperty.DISCOUNTED:
            assert lines[position].property == LineProperty.DISCOUNT  # never split apart
        assert line.quantity is not None and line.unit_price is not None
        assert line.quantity > 0 and line.unit_price > 0 and e > 0 and t >= 0
        basis = i if line.price_includes_tax else e
        assert abs(line.quantity * line.unit_price - basis) <= C
    assert abs(drift - draft.total_tax) <= Decimal("1.27")
    assert draft.total_excl_tax == sum(ln.amount_excl_tax for ln in lines)
    assert draft.total_tax == sum(ln.tax for ln in lines)
    assert draft.total_incl_tax == sum(ln.amount_incl_tax for ln in lines)
    if seller.max_invoice_amount is not None:
        assert draft.total_incl_tax <= seller.max_invoice_amount


def check_order(
    drafts: list[InvoiceDraft], lines: list[GenLine], discounts: list[Decimal], od: Decimal
) -> None:
    assert [d.part for d in drafts] == list(range(1, len(drafts) + 1))
    assert {d.parts for d in drafts} == {len(drafts)}
    flat = [line for d in drafts for line in d.lines]
    mains = [ln for ln in flat if ln.property != LineProperty.DISCOUNT]
    assert [ln.source_line_no for ln in mains] == [g.line_no for g in lines]  # document order
    total_discount: dict[int, Decimal] = {}
    for ln in flat:
        if ln.property == LineProperty.DISCOUNT:
            basis = ln.amount_incl_tax if ln.price_includes_tax else ln.amount_excl_tax
            assert ln.source_line_no is not None
            total_discount[ln.source_line_no] = -basis
    gross = [cents(g.quantity * g.price) for g in lines]
    net_before = [g - d for g, d in zip(gross, discounts, strict=True)]
    whole = sum(net_before)
    expected = Decimal(0)
    shares = Decimal(0)
    exclusive_tax: dict[Decimal, Decimal] = {}  # rate -> Σ net × rate of tax-exclusive lines
    for g, main, amount, own, before in zip(
        lines, mains, gross, discounts, net_before, strict=True
    ):
        basis = main.amount_incl_tax if g.includes_tax else main.amount_excl_tax
        assert basis == amount  # the discounted line keeps quantity × price
        share = total_discount.get(g.line_no, Decimal(0)) - own
        if od and whole:  # spread in proportion, within a cent of exact
            assert abs(share - od * before / whole) < C
        shares += share
        net = amount - own - share
        rate = ITEMS[f"R{g.item}"].tax_rate
        expected += net
        if not g.includes_tax:
            exclusive_tax[rate] = exclusive_tax.get(rate, D0) + net * rate
    expected += sum((cents(tax) for tax in exclusive_tax.values()), D0)
    assert shares == od
    assert sum(d.total_incl_tax for d in drafts) == expected


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(orders())
def test_random_orders_satisfy_every_rule(case: tuple[list[GenLine], int, Seller]) -> None:
    lines, order_pct, seller = case
    rows, discounts = rows_for(lines, order_pct)
    order = build_order("shop", "SO1", rows, BUYERS, ITEMS, seller)
    net = sum(cents(g.quantity * g.price) for g in lines) - sum(discounts)
    if net == order.order_discount:  # everything discounted away: nothing to invoice
        with pytest.raises(InvalidOrder, match="total after discounts is 0"):
            build_invoices(order, seller)
        return
    try:
        drafts = build_invoices(order, seller)
    except InvalidOrder as exc:
        # The one refusal a valid order may meet: with a tiny max_lines, lines discounted to
        # zero can be left alone on a part, which the platform would refuse (total 0).
        assert all("discounted to zero" in p.message for p in exc.problems), exc
        assert seller.max_lines < 10
        return
    event(f"lines {'≥ 100' if len(lines) >= 100 else '< 100'}, parts {min(len(drafts), 3)}")
    event(f"order discount {'yes' if order.order_discount else 'no'}")
    for draft in drafts:
        check_draft(draft, seller)
    check_order(drafts, lines, discounts, order.order_discount)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(225, 2600),
    st.sampled_from(RATES),
    st.sampled_from(["1.00", "0.35", "1.01", "10.07"]),
    st.booleans(),
)
def test_many_identical_lines_stay_within_the_invoice_tax_tolerance(
    n: int, rate: tuple[str, str | None, str], price: str, includes_tax: bool
) -> None:
    # Identical lines round the same way, so per-line errors add up: the worst case for 1.27.
    item = ItemTax("X", rate[2], Decimal(rate[0]), policy_flag=rate[1])
    rows = [
        {
            "customer_ref": "C1",
            "line_no": k,
            "item_ref": "X",
            "item_name": "螺丝",
            "quantity": 1,
            "unit_price": price,
            "price_includes_tax": includes_tax,
        }
        for k in range(1, n + 1)
    ]
    seller = Seller("main", "339902999999789113", "S", clerk="张三")
    drafts = build_invoices(build_order("s", "o", rows, BUYERS, {"X": item}, seller), seller)
    assert len(drafts) == -(-n // 2000)
    for draft in drafts:
        check_draft(draft, seller)
    net = n * Decimal(price)
    expected = net if includes_tax else net + cents(net * Decimal(rate[0]))
    assert sum(d.total_incl_tax for d in drafts) == expected
