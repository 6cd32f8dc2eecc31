"""The operator guide's configuration reference is the code's, to the character."""

from __future__ import annotations

import re
from pathlib import Path

from cdc_invoice.config import describe

GUIDE = Path(__file__).parents[3] / "docs" / "operator-guide.md"


def test_operator_guide_has_the_generated_config_reference() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    m = re.search(
        r"<!-- config-reference:begin -->\n```text\n(.*?)```\n<!-- config-reference:end -->",
        text,
        re.DOTALL,
    )
    assert m, "the config-reference markers are missing from docs/operator-guide.md"
    assert m.group(1) == describe() + "\n", (
        "docs/operator-guide.md is stale: replace the block between the config-reference "
        "markers with the output of `cdc-invoice config-reference`"
    )
