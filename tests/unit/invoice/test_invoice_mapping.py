"""Document rows to an Order: mapping lookups, overrides, and the INSERTs that fix a gap."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from cdc_invoice.errors import InvalidOrder, MappingError
from cdc_invoice.invoice.mapping import build_order, document_refs, sql_literal
from cdc_invoice.invoice.model import Buyer, ItemTax, Seller

D = Decimal
SELLER = Seller("main", "339902999999789113", "航信培训企业", clerk="张三")
BUYERS = {"C1": Buyer("杭州某某", tax_number="91330106MA2B0QWEF1", email="a@b.cn")}
ITEMS = {"PC": ItemTax("PC", "1090511030000000000", D("0.13"), short_name="计算机")}


def row(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "order_ref": "SO1",
        "customer_ref": "C1",
        "line_no": 1,
        "item_ref": "PC",
        "item_name": "电脑",
        "quantity": 1,
        "unit_price": 100,
    }
    return base | kw


def test_document_refs() -> None:
    rows = [row(), row(line_no=2, item_ref="SKU-2"), row(item_ref=None), row(customer_ref=" ")]
    rows.append(row(customer_ref=42, item_ref=7))
    assert document_refs(rows) == ({"C1", "42"}, {"PC", "SKU-2", "7"})


def test_every_unmapped_customer_and_item_at_once_with_the_insert_that_fixes_it() -> None:
    rows = [
        row(),
        row(line_no=2, item_ref="SKU-9"),
        row(line_no=3, item_ref="SKU-9"),
        row(line_no=4, item_ref="SKU'1", tax_code="3070401000000000000"),
        row(line_no=5, quantity="x"),
        row(line_no=6, item_ref="SKU-6", tax_code="3070401000000000000", tax_rate=" "),
    ]
    rows = [r | {"customer_ref": "O'Brien"} for r in rows]
    with pytest.raises(MappingError) as err:
        build_order("shop", "SO1", rows, BUYERS, ITEMS, SELLER)
    fixes = [p.fix for p in err.value.problems]
    assert fixes[:4] == [
        "INSERT INTO cdc_invoice.buyer (source, customer_ref, name, tax_number) "
        "VALUES ('shop', 'O''Brien', '<buyer name>', NULL);",
        "INSERT INTO cdc_invoice.item_tax (source, item_ref, tax_code, tax_rate) "
        "VALUES ('shop', 'SKU-9', '<19-digit code>', 0.13);",
        "INSERT INTO cdc_invoice.item_tax (source, item_ref, tax_code, tax_rate) "
        "VALUES ('shop', 'SKU''1', '3070401000000000000', 0.13);",
        "INSERT INTO cdc_invoice.item_tax (source, item_ref, tax_code, tax_rate) "
        "VALUES ('shop', 'SKU-6', '3070401000000000000', 0.13);",
    ]
    messages = [p.message for p in err.value.problems]
    assert "item 'SKU-9' (line 2, 3) has no row in cdc_invoice.item_tax" in messages
    assert err.value.problems[1].line_no == 2
    # the parse problem rides along, so one round of fixes is enough
    assert any("quantity: 'x' is not a number" in m for m in messages)


def test_document_columns_replace_a_missing_mapping() -> None:
    rows = [
        row(
            customer_ref="NEW",
            buyer_name="新客户",
            item_ref="NEW",
            tax_code="3049900000000000000",
            tax_rate="0.06",
        )
    ]
    order = build_order("shop", "SO1", rows, BUYERS, ITEMS, SELLER)
    assert order.buyer == Buyer("新客户")
    (line,) = order.lines
    assert (line.tax_code, line.tax_rate, line.short_name) == (
        "3049900000000000000",
        D("0.06"),
        None,
    )


def test_document_columns_override_the_mapping() -> None:
    rows = [row(buyer_email="x@y.cn", buyer_tax_number="91330106MA2B0YYYY2", tax_rate=0.09)]
    order = build_order("shop", "SO1", rows, BUYERS, ITEMS, SELLER)
    assert order.buyer.email == "x@y.cn" and order.buyer.tax_number == "91330106MA2B0YYYY2"
    assert order.buyer.name == "杭州某某"
    assert order.lines[0].tax_rate == D("0.09") and order.lines[0].short_name == "计算机"


def test_numbers_of_every_type() -> None:
    rows = [
        row(quantity=0.1, unit_price="19.90", discount=D("1.5")),
        row(line_no=2, quantity=D("1.23456789"), unit_price=3, price_includes_tax="f"),
        row(line_no=3, quantity=1.1, unit_price=0.3, price_includes_tax=0),
    ]
    order = build_order("shop", "SO1", rows, BUYERS, ITEMS, SELLER)
    assert [(x.quantity, x.unit_price, x.price_includes_tax) for x in order.lines] == [
        (D("0.1"), D("19.90"), True),
        (D("1.23456789"), D(3), False),
        (D("1.1"), D("0.3"), False),
    ]
    assert order.lines[0].discount == D("1.5")


def test_lines_follow_line_no_and_missing_line_no_is_the_position() -> None:
    rows = [row(line_no=None, item_name="a"), row(line_no=3, item_name="c"), row(line_no=2)]
    order = build_order("shop", "SO1", rows, BUYERS, ITEMS, SELLER)
    assert [(x.line_no, x.name) for x in order.lines] == [(1, "a"), (2, "电脑"), (3, "c")]


def test_order_discount_and_invoice_kind() -> None:
    buyers = {"C1": Buyer("杭州某某", tax_number="91330106MA2B0QWEF1", invoice_line="bs")}
    rows = [row(order_discount=5.5), row(line_no=2, order_discount="5.50")]
    order = build_order("shop", "SO1", rows, buyers, ITEMS, SELLER)
    assert order.order_discount == D("5.5") and order.invoice_line == "bs"
    assert build_order("shop", "SO1", [row()], BUYERS, ITEMS, SELLER).invoice_line == "pc"


@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        ([], "the order has no lines"),
        ([row(), row(line_no=2, customer_ref="C2")], "the rows disagree on customer_ref"),
        ([row(buyer_name="A"), row(line_no=2, buyer_name="B")], "disagree on buyer_name"),
        ([row(order_discount=1), row(line_no=2, order_discount=2)], "disagree on order_discount"),
    ],
)
def test_inconsistent_documents(rows: list[dict[str, Any]], fragment: str) -> None:
    with pytest.raises(InvalidOrder) as err:
        build_order("shop", "SO1", rows, BUYERS, ITEMS, SELLER)
    assert not isinstance(err.value, MappingError)
    assert any(fragment in p.message for p in err.value.problems)


def test_sql_literal() -> None:
    assert sql_literal("it's") == "'it''s'"
    assert sql_literal("a\\b") == "'a\\b'"
