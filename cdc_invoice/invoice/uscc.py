"""The check character of an 18-character unified social credit code (统一社会信用代码).

GB 32100-2015 §4 and annex: the code is 18 characters from the 31-character set below (digits and
capitals without I, O, Z, S, V); the 18th is a check character computed from the first 17 with
weights 3^(i) mod 31: C18 = 31 − (Σ Ci × Wi mod 31), where 31 stands for 0.

Only 18-character codes have this check: 15-, 17- and 20-character taxpayer numbers (old tax
registration numbers, individual IDs) are other formats and are not checked here.
"""

from __future__ import annotations

from typing import Final

CHARSET: Final = "0123456789ABCDEFGHJKLMNPQRTUWXY"
# 1 3 9 27 19 26 16 17 20 29 25 13 8 24 10 30 28 (GB 32100-2015 table)
WEIGHTS: Final = tuple(pow(3, i, 31) for i in range(17))


def check_character(first17: str) -> str:
    """The check character for the first 17 characters; ``ValueError`` for a foreign one."""
    if len(first17) != 17:
        raise ValueError(f"expected 17 characters, got {len(first17)}")
    total = 0
    for char, weight in zip(first17, WEIGHTS, strict=True):
        value = CHARSET.find(char)
        if value < 0:
            raise ValueError(f"{char!r} is not a GB 32100 character")
        total += value * weight
    return CHARSET[(31 - total % 31) % 31]


def uscc_problem(code: str) -> str | None:
    """Why an 18-character code is not a valid unified social credit code (None: it is, or it
    is not 18 characters long and so another kind of taxpayer number)."""
    if len(code) != 18:
        return None
    bad = sorted({c for c in code if c not in CHARSET})
    if bad:
        return f"contains {', '.join(bad)}, which a 统一社会信用代码 never has (no I, O, Z, S, V)"
    expected = check_character(code[:17])
    if code[17] != expected:
        return f"its check character is {code[17]!r}, GB 32100-2015 gives {expected!r}"
    return None
