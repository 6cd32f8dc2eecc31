"""Orders that break a rule: each is refused with a Problem that names the line and the fix."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from cdc_invoice.errors import InvalidOrder, MappingError
from cdc_invoice.invoice.compute import build_invoices
from cdc_invoice.invoice.mapping import build_order
from cdc_invoice.invoice.model import Buyer, ItemTax, Order, OrderLine, Seller

D = Decimal
SELLER = Seller("main", "339902999999789113", "航信培训企业", clerk="张三")
BUYER = Buyer("杭州某某贸易有限公司", tax_number="91330106MA2B0QWEF1")
GOOD = OrderLine(
    line_no=1,
    item_ref="PC",
    name="电脑",
    tax_code="1090511030000000000",
    tax_rate=D("0.13"),
    quantity=D(2),
    unit_price=D(3099),
)


def with_line(**changes: Any) -> Order:
    return Order("shop", "SO1", BUYER, (replace(GOOD, **changes),))


def with_buyer(invoice_line: str = "pc", **changes: Any) -> Order:
    return Order("shop", "SO1", replace(BUYER, **changes), (GOOD,), invoice_line=invoice_line)


def with_order(**changes: Any) -> Order:
    return replace(Order("shop", "SO1", BUYER, (GOOD,)), **changes)


TWO_LINES = (GOOD, replace(GOOD, line_no=2, unit_price=D(100)))

# (case id, order, seller or None for the default, expected fragment, line_no in the problem)
CASES: list[tuple[str, Order, Seller | None, str, int | None]] = [
    ("rate 17 %", with_line(tax_rate=D("0.17")), None, "tax rate 0.17 is not an allowed", 1),
    ("rate as percent", with_line(tax_rate=D(13)), None, "looks like a percentage", 1),
    ("rate NaN", with_line(tax_rate=D("NaN")), None, "tax rate NaN is not a number", 1),
    ("0 % without flag", with_line(tax_rate=D(0)), None, "0 % rate needs policy flag 03", 1),
    ("1.5 % without flag 10", with_line(tax_rate=D("0.015")), None, "1.5 % rate needs", 1),
    (
        "flag 10 at 3 %",
        with_line(tax_rate=D("0.03"), policy_flag="10"),
        None,
        "flag 10 requires",
        1,
    ),
    ("flag 03 at 13 %", with_line(policy_flag="03"), None, "policy flag 03 requires tax rate 0", 1),
    ("flag not 01-18", with_line(policy_flag="99"), None, "not a 数电 favouredPolicyFlag", 1),
    ("code 18 digits", with_line(tax_code="109051103000000000"), None, "is not 19 digits", 1),
    ("code with letters", with_line(tax_code="10905110300000000AB"), None, "is not 19 digits", 1),
    ("code empty", with_line(tax_code=""), None, "tax code '' is not 19 digits", 1),
    ("code starts with 0", with_line(tax_code="0090511030000000000"), None, "start with 1–6", 1),
    ("summary code", with_line(tax_code="1000000000000000000"), None, "summary (汇总项)", 1),
    ("6-code without 04", with_line(tax_code="6010000000000000000"), None, "policy flag 04", 1),
    ("quantity 0", with_line(quantity=D(0)), None, "quantity 0 is not positive", 1),
    ("quantity negative", with_line(quantity=D(-1)), None, "quantity -1 is not positive", 1),
    ("quantity NaN", with_line(quantity=D("NaN")), None, "quantity NaN is not a number", 1),
    ("quantity infinite", with_line(quantity=D("Inf")), None, "is not a number", 1),
    ("quantity 1e13", with_line(quantity=D("1e13")), None, "absurdly large", 1),
    ("price 0", with_line(unit_price=D(0)), None, "unit_price 0 is not positive", 1),
    ("price negative", with_line(unit_price=D("-5")), None, "unit_price -5 is not positive", 1),
    ("price -Infinity", with_line(unit_price=D("-Inf")), None, "is not a number", 1),
    ("price 1e13", with_line(unit_price=D("1e13")), None, "absurdly large", 1),
    (
        "amount above 1e12",
        with_line(quantity=D(10**7), unit_price=D(10**6)),
        None,
        "quantity × unit_price = 10000000000000.00 is absurdly large",
        1,
    ),
    ("quantity rounds to 0", with_line(quantity=D("1e-9")), None, "rounds to 0 at the", 1),
    ("amount rounds to 0", with_line(quantity=D("0.001"), unit_price=D(1)), None, "0.00", 1),
    ("empty item name", with_line(name="  "), None, "the item name is empty", 1),
    ("name > 90", with_line(name="电" * 91), None, "item_name has 91 characters", 1),
    ("spec > 40", with_line(spec="x" * 41), None, "spec has 41 characters", 1),
    ("unit > 20", with_line(unit="u" * 21), None, "unit has 21 characters", 1),
    ("discount > amount", with_line(discount=D("6198.01")), None, "exceeds the line amount", 1),
    ("discount negative", with_line(discount=D(-1)), None, "is not a non-negative", 1),
    ("buyer name missing", with_buyer(name=" "), None, "the buyer name is missing", None),
    ("buyer name > 100", with_buyer(name="公" * 101), None, "more than 100", None),
    (
        "专票 without tax number",
        with_buyer("bs", tax_number=None),
        None,
        "needs the buyer's tax",
        None,
    ),
    ("tax number lower case", with_buyer(tax_number="91330106ma2b0xxxx1"), None, "15–20", None),
    ("tax number too short", with_buyer(tax_number="12345"), None, "is not 15–20", None),
    ("natural person 专票", with_buyer("bs", natural_person=True), None, "natural-person", None),
    (
        "natural person 1 char",
        with_buyer(name="张", natural_person=True),
        None,
        "more than one",
        None,
    ),
    ("email > 50", with_buyer(email="a" * 45 + "@x.com"), None, "at most 50", None),
    ("invoice kind unknown", with_order(invoice_line="zz"), None, "'zz' is not supported", None),
    ("remark > 200", with_order(remark="备" * 201), None, "more than 200", None),
    ("no lines", with_order(lines=()), None, "the order has no lines", None),
    ("duplicate line_no", with_order(lines=(GOOD, GOOD)), None, "line_no 1 appears 2 times", 1),
    (
        "order discount > total",
        with_order(lines=TWO_LINES, order_discount=D(7000)),
        None,
        "order discount 7000 exceeds the order amount 6398.00",
        None,
    ),
    ("order discount negative", with_order(order_discount=D(-1)), None, "non-negative", None),
    (
        "order discount, mixed basis",
        with_order(
            lines=(GOOD, replace(GOOD, line_no=2, price_includes_tax=False)),
            order_discount=D(1),
        ),
        None,
        "same price basis",
        None,
    ),
    ("free order", with_line(discount=D(6198)), None, "total after discounts is 0", None),
    (
        "seller max_lines 5000",
        with_order(),
        replace(SELLER, max_lines=5000),
        "outside 2..2000",
        None,
    ),
    ("seller max_lines 1", with_order(), replace(SELLER, max_lines=1), "outside 2..2000", None),
    (
        "seller limit 0",
        with_order(),
        replace(SELLER, max_invoice_amount=D(0)),
        "not a positive",
        None,
    ),
    (
        "seller tax number",
        with_order(),
        replace(SELLER, tax_number="abc"),
        "seller tax number",
        None,
    ),
    (
        "line above invoice limit",
        with_order(),
        replace(SELLER, max_invoice_amount=D(5000)),
        "exceeds the seller's per-invoice limit 5000",
        1,
    ),
]


@pytest.mark.parametrize(
    ("order", "seller", "fragment", "line_no"),
    [pytest.param(o, s, f, n, id=case) for case, o, s, f, n in CASES],
)
def test_bad_order_is_refused_with_a_fix(
    order: Order, seller: Seller | None, fragment: str, line_no: int | None
) -> None:
    with pytest.raises(InvalidOrder) as err:
        build_invoices(order, seller or SELLER)
    matching = [p for p in err.value.problems if fragment in p.message]
    assert matching, [p.message for p in err.value.problems]
    assert all(p.fix for p in err.value.problems)
    assert matching[0].line_no == line_no
    assert fragment in str(err.value)
    assert err.value.order_ref == "SO1" and err.value.source == "shop"


def test_every_problem_is_reported_at_once() -> None:
    bad = Order(
        "shop",
        "SO1",
        replace(BUYER, name=""),
        (
            replace(GOOD, tax_rate=D("0.17")),
            replace(GOOD, line_no=2, quantity=D(0), tax_code="123"),
            replace(GOOD, line_no=3, name=""),
        ),
    )
    with pytest.raises(InvalidOrder) as err:
        build_invoices(bad, SELLER)
    found = {(p.line_no, p.field) for p in err.value.problems}
    assert found == {
        (None, "buyer_name"),
        (1, "tax_rate"),
        (2, "quantity"),
        (2, "tax_code"),
        (3, "item_name"),
    }


ROW = {"customer_ref": "C1", "line_no": 1, "item_ref": "PC", "item_name": "电脑"}
ROW |= {"quantity": 1, "unit_price": 10}
ITEMS = {"PC": ItemTax("PC", "1090511030000000000", D("0.13"))}


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        pytest.param({"quantity": "abc"}, "quantity: 'abc' is not a number", id="quantity text"),
        pytest.param({"quantity": True}, "quantity: expected a number, got True", id="bool"),
        pytest.param({"quantity": float("nan")}, "is not a finite number", id="float nan"),
        pytest.param({"unit_price": float("inf")}, "is not a finite number", id="float inf"),
        pytest.param({"quantity": None}, "quantity is missing", id="quantity missing"),
        pytest.param({"unit_price": ""}, "unit_price is missing", id="price empty"),
        pytest.param({"tax_rate": "13%"}, "tax_rate: '13%' is not a number", id="rate text"),
        pytest.param({"discount": [1]}, "expected a number, got list", id="discount list"),
        pytest.param({"line_no": "1.5"}, "line_no '1.5' is not a whole number", id="line_no"),
        pytest.param({"price_includes_tax": "maybe"}, "is not a boolean", id="basis"),
        pytest.param({"item_ref": None}, "no item_ref and no tax_code", id="no item"),
        pytest.param(
            {"customer_ref": None}, "neither a customer_ref nor a buyer_name", id="no buyer"
        ),
    ],
)
def test_unparseable_document_values(changes: dict[str, Any], fragment: str) -> None:
    buyers = {"C1": BUYER}
    with pytest.raises(InvalidOrder) as err:
        build_order("shop", "SO1", [ROW | changes], buyers, ITEMS, SELLER)
    assert not isinstance(err.value, MappingError)
    assert any(fragment in p.message for p in err.value.problems), err.value.problems
    assert all(p.fix for p in err.value.problems)


def test_buyer_address_and_phone_together_at_most_100_characters() -> None:
    from cdc_invoice.invoice.validate import buyer_problems

    ok = Buyer(name="杭州示例贸易有限公司", address="杭" * 80, phone="0571-77777777")
    assert buyer_problems(ok, "pc") == []
    long = replace(ok, address="杭" * 80, phone="0" * 21)  # 80 + 21 = 101
    [problem] = buyer_problems(long, "pc")
    assert "address and phone have 101 characters together" in problem.message
    assert problem.fix and "cdc_invoice.buyer" in problem.fix


def test_buyer_address_at_most_80_and_phone_at_most_50_each() -> None:
    # requestBillingNew: "buyerAddress String N 杭州市 80", "buyerTel String N 0571-88888888 50"
    from cdc_invoice.invoice.validate import buyer_problems

    ok = Buyer(name="杭州示例贸易有限公司", address="杭" * 49, phone="0" * 50)
    assert buyer_problems(ok, "pc") == []
    [phone] = buyer_problems(replace(ok, phone="0" * 51), "pc")
    assert (phone.field, phone.message) == (
        "buyer_phone",
        "the buyer's phone has 51 characters, more than the platform's 50",
    )
    [address] = buyer_problems(replace(ok, address="杭" * 81, phone=None), "pc")
    assert (address.field, address.message) == (
        "buyer_address",
        "the buyer's address has 81 characters, more than the platform's 80",
    )
