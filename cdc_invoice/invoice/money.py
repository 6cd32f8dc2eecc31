"""Money: parsing inputs into ``Decimal`` and the few exact operations the tax rules need.

Never float arithmetic. Floats that arrive from a document are converted through ``repr()`` (the
shortest decimal that round-trips, so ``0.1`` is ``Decimal('0.1')``, not its binary expansion).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Context, Decimal, InvalidOperation

CENT = Decimal("0.01")
ZERO = Decimal(0)
# The platform takes unit price and quantity with at most 8 decimals (Nuonuo price/num).
QUANTITY_QUANTUM = Decimal("1E-8")
MAX_DECIMALS = 8
# Anything above this is a data error (a unit or a decimal point lost), not a real sale.
MAX_AMOUNT = Decimal(10) ** 12

# An 8-decimal quantity times an 8-decimal price near the limits has ~30 significant digits; the
# default context keeps 28 and would round once before we round to cents (double rounding).
_EXACT = Context(prec=60, rounding=ROUND_HALF_UP)


def to_decimal(value: object, *, field: str = "value") -> Decimal:
    """Convert a document value to a finite ``Decimal``; ``ValueError`` names ``field``.

    Accepts int, Decimal, str and float (via ``repr``); rejects bool, None, NaN and infinities.
    """
    if value is None or isinstance(value, bool):  # bool is an int: True must not become 1
        raise ValueError(f"{field}: expected a number, got {value!r}")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{field}: {value!r} is not a number") from None
    else:
        raise ValueError(f"{field}: expected a number, got {type(value).__name__} {value!r}")
    if not result.is_finite():
        raise ValueError(f"{field}: {value!r} is not a finite number")
    return result


def cents(x: Decimal) -> Decimal:
    """Round to cents, half up (the platform's and the tax bureau's rounding)."""
    return x.quantize(CENT, rounding=ROUND_HALF_UP, context=_EXACT)


def mul(a: Decimal, b: Decimal) -> Decimal:
    """Exact product (no intermediate rounding at 28 digits)."""
    return _EXACT.multiply(a, b)


def div(a: Decimal, b: Decimal) -> Decimal:
    """Quotient to 60 significant digits: far below a cent, so rounding it to cents is exact."""
    return _EXACT.divide(a, b)


def decimals(x: Decimal) -> int:
    """Number of significant decimal places (trailing zeros do not count)."""
    exponent = x.normalize(_EXACT).as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def round_quantity(x: Decimal) -> Decimal:
    """Round a quantity or unit price to the platform's 8 decimals (unchanged if it fits)."""
    if decimals(x) <= MAX_DECIMALS:
        return x
    return x.quantize(QUANTITY_QUANTUM, rounding=ROUND_HALF_UP, context=_EXACT)


def line_amount(quantity: Decimal, unit_price: Decimal) -> Decimal:
    """The line amount an ERP shows: quantity × price, rounded to cents once."""
    return cents(mul(quantity, unit_price))


def excl_from_incl(incl: Decimal, rate: Decimal) -> Decimal:
    """The tax-exclusive part of a tax-inclusive amount, to the cent."""
    return cents(div(incl, 1 + rate))


def tax_on(excl: Decimal, rate: Decimal) -> Decimal:
    """The tax on a tax-exclusive amount, to the cent."""
    return cents(mul(excl, rate))


def split_amount(amount: Decimal, rate: Decimal, *, includes_tax: bool) -> tuple[Decimal, Decimal]:
    """(excl, tax) of an amount given on a price basis, by the reference method (nuonuo.md §3.3).

    Tax-inclusive: excl = cents(amount / (1 + rate)), tax = amount − excl.
    Tax-exclusive: excl = amount, tax = cents(amount × rate).
    """
    if includes_tax:
        excl = excl_from_incl(amount, rate)
        return excl, amount - excl
    return amount, tax_on(amount, rate)


def allocate(total: Decimal, weights: Sequence[Decimal]) -> list[Decimal]:
    """Split ``total`` (cents, ≥ 0) over ``weights`` (≥ 0) in proportion, to the cent, exactly.

    Largest-remainder method: every share is the exact proportion rounded down to the cent, and
    the cents left over go one each to the largest remainders (then the largest weight, then the
    earliest position), so the shares add up to ``total`` and no share exceeds its exact
    proportion by a cent or more — a share never exceeds a weight it is proportional to.
    """
    whole = sum(weights, ZERO)
    if total == 0 or whole == 0:
        return [ZERO for _ in weights]
    exact = [div(mul(total, w), whole) for w in weights]
    shares = [e.quantize(CENT, rounding=ROUND_FLOOR, context=_EXACT) for e in exact]
    left = int((total - sum(shares, ZERO)) / CENT)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), -weights[i], i))
    for i in order[:left]:
        shares[i] += CENT
    return shares
