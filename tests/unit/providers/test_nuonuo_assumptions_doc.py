"""docs/platform-assumptions.md stays true: its list of "refused, nothing created" codes is the
adapter's (codes.REFUSED), which decides when a new platform order number may be used."""

from __future__ import annotations

import re
from pathlib import Path

from cdc_invoice.providers.nuonuo import codes

DOC = Path(__file__).parents[3] / "docs" / "platform-assumptions.md"


def listed_codes() -> set[str]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split('## Codes that mean "refused, nothing created"', 1)[1]
    listed = section.split("`E9106`", 1)[0]  # E9106 is named afterwards as the exception
    out: set[str] = set()
    for first, last in re.findall(r"`(E\d{4})`(?:–`(E\d{4})`)?", listed):
        a = int(first[1:])
        b = int(last[1:]) if last else a
        out |= {f"E{n}" for n in range(a, b + 1)}
    return out


def test_the_documented_refusals_are_the_adapters() -> None:
    assert listed_codes() == set(codes.REFUSED)
    assert codes.ORDER_NO_TAKEN not in codes.REFUSED
