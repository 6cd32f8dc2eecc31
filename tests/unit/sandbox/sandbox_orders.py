"""Crafted requestBillingNew payloads for the sandbox tests (valid unless a test breaks them)."""

from __future__ import annotations

from typing import Any

SELLER = "339902999999789113"
BUYER_TAX = "91330106MA2AYNWD8M"
COMPUTER = "1090511030000000000"


def line(**overrides: Any) -> dict[str, Any]:
    """The reference's A1 line: 2 × 3099 incl. 13 % → 5484.96 + 713.04 = 6198.00."""
    base: dict[str, Any] = {
        "goodsName": "电脑",
        "goodsCode": COMPUTER,
        "specType": "y460",
        "unit": "台",
        "withTaxFlag": "1",
        "price": "3099",
        "num": "2",
        "taxRate": "0.13",
        "taxIncludedAmount": "6198.00",
        "taxExcludedAmount": "5484.96",
        "tax": "713.04",
        "invoiceLineProperty": "0",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def discount_pair() -> list[dict[str, Any]]:
    """The reference's A2 pair: a discounted line and its −99.00 discount line."""
    return [
        line(
            num="1",
            taxIncludedAmount="3099.00",
            taxExcludedAmount="2742.48",
            tax="356.52",
            invoiceLineProperty="2",
        ),
        line(
            price=None,
            num=None,
            specType=None,
            unit=None,
            taxIncludedAmount="-99.00",
            taxExcludedAmount="-87.61",
            tax="-11.39",
            invoiceLineProperty="1",
        ),
    ]


def order(
    order_no: str = "SO-1", *, lines: list[dict[str, Any]] | None = None, **overrides: Any
) -> dict[str, Any]:
    base: dict[str, Any] = {
        "buyerName": "杭州某某贸易有限公司",
        "buyerTaxNum": BUYER_TAX,
        "salerTaxNum": SELLER,
        "salerTel": "0571-77777777",
        "salerAddress": "杭州市西湖区",
        "orderNo": order_no,
        "invoiceDate": "2025-01-01 10:00:00",
        "clerk": "张三",
        "invoiceType": "1",
        "invoiceLine": "pc",
        "pushMode": "-1",
        "invoiceDetail": lines if lines is not None else [line()],
    }
    base.update(overrides)
    return {"order": {k: v for k, v in base.items() if v is not None}}
