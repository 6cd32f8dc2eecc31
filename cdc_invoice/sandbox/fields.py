"""Parsing of the platform's string fields into exact values (Decimal, never float).

The Nuonuo protocol carries every number as a JSON string ("3099", "0.13", "713.04"). The sandbox
also accepts JSON numbers (parsed with ``parse_float=Decimal`` so nothing is lost) because a strict
type check there would only test our JSON encoder, not the invoice rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

CENT = Decimal("0.01")

# Amount, tax and total: at most 2 decimals, at most 20 characters (E9124-E9129).
_AMOUNT_RE = re.compile(r"^-?\d+(\.\d{1,2})?$")
AMOUNT_MAX_LEN = 20
# Price and quantity: at most 8 decimals and 16 characters (reference §2.7 / §3.3).
_QTY_RE = re.compile(r"^-?\d+(\.\d{1,8})?$")
QTY_MAX_LEN = 16
# Tax rate: a decimal fraction with at most 6 decimals (乐企 rate field).
_RATE_RE = re.compile(r"^\d(\.\d{1,6})?$")
_ORDER_TIME_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})$")


def round2(value: Decimal) -> Decimal:
    """Round to cents the way the tax bureau does (half up)."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def text(obj: Mapping[str, object], key: str) -> str:
    """A field as text: absent and null become "", numbers their canonical string."""
    value = obj.get(key)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | Decimal | float):
        return str(value)
    return "\x00invalid"  # lists / objects never satisfy a scalar rule


def as_amount(raw: str) -> Decimal | None:
    """A money field: None if it is not a number with at most 2 decimals."""
    if len(raw) > AMOUNT_MAX_LEN or not _AMOUNT_RE.match(raw):
        return None
    return Decimal(raw)


def as_quantity(raw: str) -> Decimal | None:
    """A price or quantity field: None if malformed."""
    if len(raw) > QTY_MAX_LEN or not _QTY_RE.match(raw):
        return None
    return Decimal(raw)


def as_rate(raw: str) -> Decimal | None:
    if not _RATE_RE.match(raw):
        return None
    return Decimal(raw)


def loose_decimal(raw: str) -> Decimal | None:
    """Best-effort number for rules that run before the format checks (discount rules)."""
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def money(value: Decimal) -> str:
    """Two-decimal string as the platform returns amounts ("0.00", "-87.61")."""
    return str(round2(value))


def quantity_text(value: Decimal | None) -> str:
    """Price / quantity as the platform echoes them; "" when absent (discount lines)."""
    if value is None:
        return ""
    return format(value.normalize(), "f")


def order_time(raw: str) -> datetime | None:
    """``yyyy-MM-dd HH:mm:ss`` (naive, China time) or None; cheaper than strptime per request."""
    match = _ORDER_TIME_RE.match(raw)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    try:
        return datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None
