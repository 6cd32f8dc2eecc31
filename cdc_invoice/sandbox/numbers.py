"""Identifier formats the platform hands out (reference §2.8, §3.1).

- serial (invoiceSerialNum / fpqqlsh): 20 characters, ``yyMMddHHmmss`` + 8-digit sequence, the
  shape seen in live answers (``22072015181902023731``, ``24080518065402849336``);
- 数电 number: 20 digits, ``YY`` + province ``33`` + channel ``2`` + 15-digit yearly sequence
  (only "first two digits = year" is verified; positions 3-5 are an assumption);
- paper invoices (es/ec) also get a 12-digit code and an 8-digit paper number;
- red-letter slip: billNo = ``yyyyMMdd`` + 13-digit sequence (21 digits as in the doc example),
  billUuid = 32 hex.

All times are China Standard Time (UTC+8, no DST), which fixes the year and month boundaries.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone

CST = timezone(timedelta(hours=8), "CST")
NUMBER_RE = re.compile(r"^\d{20}$")
SERIAL_RE = re.compile(r"^\d{20}$")
PROVINCE = "33"  # 浙江, where the Nuonuo sandbox sellers are registered
CHANNEL = "2"


def cst(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, CST)


def serial(epoch: float, seq: int) -> str:
    return cst(epoch).strftime("%y%m%d%H%M%S") + f"{seq % 100_000_000:08d}"


def invoice_number(epoch: float, seq: int) -> str:
    """20-digit 数电 number; ``seq`` is the per-year sequence (starting at 1)."""
    if not 0 < seq < 10**15:
        raise ValueError("数电 number sequence exhausted for this year")
    return f"{cst(epoch):%y}{PROVINCE}{CHANNEL}{seq:015d}"


def is_invoice_number(value: str, *, year: int | None = None) -> bool:
    if not NUMBER_RE.match(value):
        return False
    return year is None or value[:2] == f"{year % 100:02d}"


def year_key(epoch: float) -> str:
    return f"{cst(epoch):%y}"


def month_key(epoch: float) -> str:
    return f"{cst(epoch):%Y-%m}"


def paper_code(epoch: float) -> str:
    return f"0{PROVINCE}{cst(epoch):%y}2300111"


def paper_number(seq: int) -> str:
    return f"{seq % 100_000_000:08d}"


def bill_no(epoch: float, seq: int) -> str:
    return f"{cst(epoch):%Y%m%d}{seq:013d}"


def bill_uuid(seller_tax: str, seq: int) -> str:
    # Deterministic (no RNG draw) so a replayed state produces the same ids.
    return hashlib.md5(f"{seller_tax}:{seq}".encode(), usedforsecurity=False).hexdigest()
