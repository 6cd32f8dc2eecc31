"""Query loading, draft persistence, backoff: pure logic, no database."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest

from cdc_invoice.daemon.backoff import retry_delay
from cdc_invoice.daemon.drafts import draft_from_json, draft_to_json, order_no
from cdc_invoice.db import queries
from cdc_invoice.invoice.model import Buyer, InvoiceDraft, InvoiceLine, LineProperty

ROOT = Path(__file__).resolve().parents[3]


def test_parse_named_keeps_comments_and_rejects_duplicates() -> None:
    text = "-- name: a\n-- why\nSELECT 1;\n\n-- name: b\nSELECT 2;\n"
    assert queries.parse_named(text) == {"a": "-- why\nSELECT 1;", "b": "SELECT 2;"}
    with pytest.raises(ValueError, match="defined twice"):
        queries.parse_named("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_every_named_query_used_in_the_code_exists() -> None:
    code = "\n".join(p.read_text() for p in (ROOT / "cdc_invoice").rglob("*.py"))
    used = set(re.findall(r'\bq\("([a-z0-9_]+)"\)', code))
    assert used, "the pattern should find the daemon's queries"
    missing = used - set(queries.named("queries.sql"))
    assert not missing


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [v for v, _ in queries.migrations()]
    assert versions == list(range(1, len(versions) + 1))
    assert queries.latest_version() == versions[-1]


def test_draft_round_trips_through_json() -> None:
    line = InvoiceLine(
        line_no=1,
        source_line_no=7,
        item_ref="P",
        name="电脑",
        tax_code="1" * 19,
        tax_rate=Decimal("0.13"),
        quantity=Decimal("2"),
        unit_price=Decimal("3099"),
        price_includes_tax=True,
        amount_excl_tax=Decimal("5484.96"),
        tax=Decimal("713.04"),
        amount_incl_tax=Decimal("6198.00"),
        property=LineProperty.DISCOUNTED,
    )
    discount = InvoiceLine(
        line_no=2,
        source_line_no=7,
        item_ref="P",
        name="电脑",
        tax_code="1" * 19,
        tax_rate=Decimal("0.13"),
        quantity=None,
        unit_price=None,
        price_includes_tax=True,
        amount_excl_tax=Decimal("-87.61"),
        tax=Decimal("-11.39"),
        amount_incl_tax=Decimal("-99.00"),
        property=LineProperty.DISCOUNT,
    )
    draft = InvoiceDraft(
        source="s",
        order_ref="1",
        buyer=Buyer(name="买方", tax_number="91330106MA2B0001XY"),
        invoice_line="bs",
        lines=(line, discount),
        total_excl_tax=Decimal("5397.35"),
        total_tax=Decimal("701.65"),
        total_incl_tax=Decimal("6099.00"),
        part=2,
        parts=3,
    )
    data = draft_to_json(draft)
    assert data["lines"][0]["amount_incl_tax"] == "6198.00"  # decimal strings, never floats
    assert draft_from_json(data) == draft


def test_order_numbers_are_20_characters() -> None:
    assert order_no("CIAB12000000000042", 3) == "CIAB1200000000004203"
    assert len(order_no("CIAB12000000000042", 1)) == 20


def test_backoff_grows_with_jitter_and_stays_under_the_cap() -> None:
    for retries in range(40):
        d = retry_delay(retries, base=1.0, cap=300.0)
        ceiling = min(300.0, 2.0**retries)
        assert ceiling / 2 <= d <= ceiling
    assert len({retry_delay(5) for _ in range(20)}) > 1  # jitter: not all the same
