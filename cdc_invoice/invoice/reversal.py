"""Red-letter (红冲) lines for a blue invoice: full or partial, with cumulative limits (§3.7).

Red invoices carry only normal lines: a blue discount line is netted into its discounted line, and
the red line's ``line_no`` is that discounted line's index (Nuonuo ``blueDetailIndex``). Amounts and
quantities on red lines are negative; unit prices stay positive.

Reason rules (乐企 3.1.2), and how requests must be shaped here:
- 1 销货退回 sales_return: by quantity only, at the blue unit price:
  "“红冲原因”为“销货退回”时，只允许修改数量，不允许修改单价"
  (乐企 基础版 V4.000, 红字确认单 业务校验). Not for service codes (3…).
- 2 开票有误 invoicing_error: full reversal only, of an invoice not reversed before (the red
  invoice must mirror the blue one exactly).
- 3 服务中止 service_termination: by quantity or by amount (quantity then follows at the blue unit
  price). Not for goods codes (1…, 2…).
- 4 销售折让 sales_allowance: by amount only; the red line has no quantity and no price.
- The goods/service rule above is waived for an invoice that mixes both (兼营): "商品服务编码为以
  1、2开头的冲红原因不允许选择“服务中止”，商品服务编码为以3开头的冲红原因不允许选择“销售退回”，
  兼营销售则不对红字原因进行控制" (same section).
A partial piece is the proportional (or requested) amount, split by the reference method or a
cent off it (see ``_piece``); the last piece of a line takes exactly what remains, so pieces always
add up to the blue line.
After an allowance (4) on a line, a later 销货退回 still prices a unit at the blue unit price (the
rule above), so it can return only as many units as the amount the allowance left pays for at that
price; the rest of that amount is settled by amount (another 销售折让), which the refusal
says. Other reasons (服务中止) price a unit at what remains per unit.
A piece that rounds to 0.00 is refused: the platform needs a red amount.
Not modelled here: natural-person and 差额征税 restrictions (the platform enforces them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_FLOOR, Decimal

from cdc_invoice.errors import InvalidOrder, Problem
from cdc_invoice.invoice import money
from cdc_invoice.invoice.model import InvoiceLine, LineProperty

REASONS = {
    "1": "1",
    "sales_return": "1",
    "2": "2",
    "invoicing_error": "2",
    "3": "3",
    "service_termination": "3",
    "4": "4",
    "sales_allowance": "4",
}
REASON_NAMES = {
    "1": "1 销货退回 (sales_return)",
    "2": "2 开票有误 (invoicing_error)",
    "3": "3 服务中止 (service_termination)",
    "4": "4 销售折让 (sales_allowance)",
}


@dataclass(frozen=True)
class RedRequestLine:
    """Reverse part of blue line ``line_no``: a quantity, or a tax-inclusive positive amount."""

    line_no: int
    quantity: Decimal | None = None
    amount: Decimal | None = None


@dataclass(frozen=True, slots=True)
class _Amounts:
    quantity: Decimal
    excl: Decimal
    tax: Decimal
    incl: Decimal

    def __add__(self, other: _Amounts) -> _Amounts:
        return _Amounts(
            self.quantity + other.quantity,
            self.excl + other.excl,
            self.tax + other.tax,
            self.incl + other.incl,
        )

    def __sub__(self, other: _Amounts) -> _Amounts:
        return self + _Amounts(-other.quantity, -other.excl, -other.tax, -other.incl)


_NOTHING = _Amounts(money.ZERO, money.ZERO, money.ZERO, money.ZERO)


@dataclass(frozen=True, slots=True)
class _Blue:
    """A reversible blue line: a normal or discounted line with its discount netted in."""

    line: InvoiceLine
    net: _Amounts
    unit_price: Decimal | None  # the net unit price on the line's own basis


def normalize_reason(reason: str) -> str:
    """The platform's reason code '1'..'4' for a code or an English name."""
    code = REASONS.get(str(reason).strip().lower())
    if code is None:
        raise InvalidOrder(
            [
                Problem(
                    f"red-letter reason {reason!r} is unknown",
                    field="reason",
                    fix="use one of " + "; ".join(REASON_NAMES.values()),
                )
            ]
        )
    return code


def red_lines(
    blue_lines: Sequence[InvoiceLine],
    requested: Sequence[RedRequestLine] | None,
    reason: str,
    already_reversed: Sequence[InvoiceLine] = (),
) -> list[InvoiceLine]:
    """The red lines reversing ``requested`` (None: everything not yet reversed) of a blue
    invoice; ``InvalidOrder`` lists every broken rule, including cumulative over-reversal."""
    code = normalize_reason(reason)
    problems: list[Problem] = []
    blue = _reversible(blue_lines, problems)
    done = _reversed_so_far(already_reversed, blue, problems)
    allowed = {red.line_no for red in already_reversed if red.quantity is None} & blue.keys()
    if code != "1":
        for index in allowed:
            # After an allowance a unit is worth what remains per unit: later red lines use
            # that price so that their price × quantity still matches their amount. 销货退回
            # keeps the blue price instead (module docstring).
            entry = blue[index]
            blue[index] = replace(entry, unit_price=_net_price(entry.line, entry.net - done[index]))
    if requested is None:
        takes = _full(code, blue, done, problems, allowed)
    else:
        takes = _partial(code, blue, done, requested, problems, allowed)
    if not _mixed(blue.values()):
        problems += _reason_code_problems(code, (blue[i].line for i, _ in takes))
    problems += _cumulative_problems(blue, done, takes)
    if problems:
        raise InvalidOrder(problems)
    return [_red_line(code, blue[i], take) for i, take in sorted(takes, key=lambda t: t[0])]


def _reversible(lines: Sequence[InvoiceLine], problems: list[Problem]) -> dict[int, _Blue]:
    blue: dict[int, _Blue] = {}
    previous: _Blue | None = None
    for line in lines:
        amounts = _Amounts(
            line.quantity or money.ZERO, line.amount_excl_tax, line.tax, line.amount_incl_tax
        )
        if line.property == LineProperty.DISCOUNT:
            if previous is None or previous.line.property != LineProperty.DISCOUNTED:
                problems.append(
                    Problem(
                        "a blue discount line does not follow a discounted line",
                        line_no=line.line_no,
                        fix="pass the blue invoice's lines in their invoice order",
                    )
                )
                continue
            net = previous.net + replace(amounts, quantity=money.ZERO)
            blue[previous.line.line_no] = previous = _Blue(
                previous.line, net, _net_price(previous.line, net)
            )
            continue
        previous = blue[line.line_no] = _Blue(line, amounts, line.unit_price)
    return blue


def _net_price(line: InvoiceLine, net: _Amounts) -> Decimal | None:
    if not net.quantity:
        return None
    basis = net.incl if line.price_includes_tax else net.excl
    return money.round_quantity(money.div(basis, net.quantity))


def _reversed_so_far(
    reds: Iterable[InvoiceLine], blue: dict[int, _Blue], problems: list[Problem]
) -> dict[int, _Amounts]:
    done: dict[int, _Amounts] = {}
    for red in reds:
        if red.line_no not in blue:
            problems.append(
                Problem(
                    f"an earlier red line refers to blue line {red.line_no}, which is not a "
                    "reversible line of this invoice",
                    line_no=red.line_no,
                    fix="pass the red lines of earlier reversals of this same blue invoice",
                )
            )
            continue
        amounts = _Amounts(
            -(red.quantity or money.ZERO), -red.amount_excl_tax, -red.tax, -red.amount_incl_tax
        )
        done[red.line_no] = done.get(red.line_no, _NOTHING) + amounts
    return done


def _mixed(blue: Iterable[_Blue]) -> bool:
    """兼营: the invoice has goods or labour (1…, 2…) and services (3…)."""
    kinds = {b.line.tax_code[:1] for b in blue}
    return bool(kinds & {"1", "2"}) and "3" in kinds


def _full(
    code: str,
    blue: dict[int, _Blue],
    done: dict[int, _Amounts],
    problems: list[Problem],
    allowed: set[int],
) -> list[tuple[int, _Amounts]]:
    if code == "2" and done:
        problems.append(
            Problem(
                "开票有误 (invoicing_error) reverses a whole invoice, and this one was already "
                "partly reversed",
                field="reason",
                fix="reverse the rest with reason 1, 3 or 4",
            )
        )
    takes = [(i, b.net - done.get(i, _NOTHING)) for i, b in blue.items()]
    if code == "4":  # an allowance reverses amounts, not goods
        takes = [(i, replace(t, quantity=money.ZERO)) for i, t in takes]
    takes = [(i, t) for i, t in takes if t.incl or t.excl or t.tax]
    if code == "1":
        for index, take in takes:
            if index in allowed and take.quantity:
                problems.append(_returned_after_allowance(blue[index], take.quantity, take))
    if not blue:
        problems.append(Problem("the blue invoice has no lines", fix="pass the blue lines"))
    elif not takes:
        problems.append(
            Problem("the invoice is already fully reversed", fix="nothing is left to reverse")
        )
    return takes


def _partial(
    code: str,
    blue: dict[int, _Blue],
    done: dict[int, _Amounts],
    requested: Sequence[RedRequestLine],
    problems: list[Problem],
    allowed: set[int],
) -> list[tuple[int, _Amounts]]:
    if code == "2":
        problems.append(
            Problem(
                "开票有误 (invoicing_error) allows only a full reversal",
                field="reason",
                fix="omit the lines (full reversal), or use reason 1, 3 or 4 for a partial one",
            )
        )
        return []
    if not requested:
        problems.append(
            Problem("no lines to reverse", field="lines", fix="omit lines for a full reversal")
        )
    takes: list[tuple[int, _Amounts]] = []
    seen: set[int] = set()
    for request in requested:
        before = len(problems)
        index = request.line_no
        if index in seen:
            problems.append(_problem(index, "is requested twice", "request each line once"))
        elif index not in blue:
            problems.append(
                _problem(
                    index,
                    "is not a reversible line of the blue invoice",
                    "give the index of a normal or discounted line (a discount is netted into "
                    "the line before it)",
                )
            )
        seen.add(index)
        quantity = _positive(request.quantity, index, "quantity", problems)
        amount = _positive(request.amount, index, "amount", problems)
        _shape_problems(code, index, quantity, amount, problems)
        if len(problems) == before:
            rest = done.get(index, _NOTHING)
            if code == "1" and index in allowed and quantity is not None:
                take = _return_at_blue_price(blue[index], rest, quantity, problems)
            else:
                take = _take(code, blue[index], rest, quantity, amount, problems)
            if take is not None:
                takes.append((index, take))
    return takes


def _problem(index: int, what: str, fix: str) -> Problem:
    return Problem(f"blue line {index} {what}", line_no=index, fix=fix)


def _positive(value: object, index: int, field: str, problems: list[Problem]) -> Decimal | None:
    if value is None:
        return None
    try:
        number = money.to_decimal(value, field=field)
    except ValueError as exc:
        problems.append(_problem(index, f"has a bad {field}: {exc}", f"give a positive {field}"))
        return None
    places = 2 if field == "amount" else money.MAX_DECIMALS
    if number <= 0 or money.decimals(number) > places:
        problems.append(
            _problem(
                index,
                f"{field} {number} is not positive with at most {places} decimals",
                f"give the {field} to reverse as a positive number",
            )
        )
        return None
    return money.cents(number) if field == "amount" else number


def _shape_problems(
    code: str,
    index: int,
    quantity: Decimal | None,
    amount: Decimal | None,
    problems: list[Problem],
) -> None:
    name = REASON_NAMES[code]
    if code == "1" and (quantity is None or amount is not None):
        fix = "give a quantity and no amount (the unit price cannot change)"
        problems.append(_problem(index, f"needs a quantity only for reason {name}", fix))
    elif code == "3" and (quantity is None) == (amount is None):
        fix = "give either a quantity or an amount"
        problems.append(_problem(index, f"needs a quantity or an amount for reason {name}", fix))
    elif code == "4" and (amount is None or quantity is not None):
        fix = "give an amount and no quantity (a 销售折让 has no quantity or price)"
        problems.append(_problem(index, f"needs an amount only for reason {name}", fix))


def _take(
    code: str,
    blue: _Blue,
    done: _Amounts,
    quantity: Decimal | None,
    amount: Decimal | None,
    problems: list[Problem],
) -> _Amounts | None:
    """The positive amounts to reverse on one blue line, within what remains of it."""
    line, rest = blue.line, blue.net - done
    index = line.line_no
    if amount is not None:
        if amount > rest.incl:
            problems.append(_over(index, f"amount {amount}", rest.incl, done.incl))
            return None
        if amount == rest.incl:
            return rest if code == "3" else replace(rest, quantity=money.ZERO)
        if code == "4":
            return _piece(line.tax_rate, rest, money.ZERO, incl=amount)
        quantity = _quantity_for(blue, amount, rest)
        if quantity is None:
            fix = "reverse by quantity, or by a larger amount"
            problems.append(_problem(index, f"amount {amount} is less than one unit", fix))
            return None
        return _piece(line.tax_rate, rest, quantity, incl=amount)
    assert quantity is not None  # _shape_problems guarantees one of the two
    if quantity > rest.quantity:
        problems.append(_over(index, f"quantity {quantity}", rest.quantity, done.quantity))
        return None
    if quantity == rest.quantity:
        return rest
    basis = rest.incl if line.price_includes_tax else rest.excl
    share = money.cents(money.div(money.mul(basis, quantity), rest.quantity))
    if share <= 0:
        problems.append(_nothing(index, f"quantity {quantity}", share))
        return None
    if line.price_includes_tax:
        return _piece(line.tax_rate, rest, quantity, incl=share)
    return _piece(line.tax_rate, rest, quantity, excl=share)


def _nothing(index: int, what: str, share: Decimal) -> Problem:
    return _problem(
        index,
        f"{what} comes to {share} at the blue unit price; a red line needs at least 0.01",
        "reverse a larger quantity",
    )


def _return_at_blue_price(
    blue: _Blue, done: _Amounts, quantity: Decimal, problems: list[Problem]
) -> _Amounts | None:
    """销货退回 on a line an allowance reduced: the blue unit price, within what is left."""
    line, rest = blue.line, blue.net - done
    if quantity > rest.quantity:
        problems.append(_over(line.line_no, f"quantity {quantity}", rest.quantity, done.quantity))
        return None
    assert blue.unit_price is not None  # a line with a quantity has a price
    share = money.cents(money.mul(blue.unit_price, quantity))
    basis = rest.incl if line.price_includes_tax else rest.excl
    if share <= 0:
        problems.append(_nothing(line.line_no, f"quantity {quantity}", share))
        return None
    if share > basis:
        problems.append(_returned_after_allowance(blue, quantity, rest))
        return None
    if line.price_includes_tax:
        return _piece(line.tax_rate, rest, quantity, incl=share)
    return _piece(line.tax_rate, rest, quantity, excl=share)


def _returned_after_allowance(blue: _Blue, quantity: Decimal, rest: _Amounts) -> Problem:
    line, price = blue.line, blue.unit_price or money.ZERO
    basis = rest.incl if line.price_includes_tax else rest.excl
    most = _most_units(basis, price, whole=(line.quantity or money.ZERO) % 1 == 0)
    share = money.cents(money.mul(price, quantity))
    left = basis - money.cents(money.mul(price, most))
    fix = f"return at most {most} (at {price}) with sales_return" + (
        f", and reverse the remaining {left} with sales_allowance (销售折让, by amount)"
        if left
        else ""
    )
    return _problem(
        line.line_no,
        f"cannot return {quantity} at the blue unit price {price} ({share}): an earlier "
        f"销售折让 left {basis} on the line, and 销货退回 may not change the unit price "
        "(“红冲原因”为“销货退回”时，只允许修改数量，不允许修改单价)",
        fix,
    )


def _most_units(amount: Decimal, price: Decimal, *, whole: bool) -> Decimal:
    """The largest quantity whose price × quantity (in cents) stays within ``amount``."""
    if price <= 0 or amount <= 0:
        return money.ZERO
    step = Decimal(1) if whole else Decimal(1).scaleb(-money.MAX_DECIMALS)
    most = money.div(amount, price).quantize(step, rounding=ROUND_FLOOR)
    while most > 0 and money.cents(money.mul(price, most)) > amount:
        most -= step
    return most


def _quantity_for(blue: _Blue, incl: Decimal, rest: _Amounts) -> Decimal | None:
    """The quantity an amount stands for at the blue unit price (服务中止 by amount)."""
    if not blue.unit_price:
        return None
    basis = incl
    if not blue.line.price_includes_tax:
        basis = money.excl_from_incl(incl, blue.line.tax_rate)
    quantity = min(money.round_quantity(money.div(basis, blue.unit_price)), rest.quantity)
    return quantity if quantity > 0 else None


def _piece(
    rate: Decimal,
    rest: _Amounts,
    quantity: Decimal,
    *,
    incl: Decimal | None = None,
    excl: Decimal | None = None,
) -> _Amounts:
    """A piece of ``rest`` with a fixed ``incl`` (tax-inclusive basis) or ``excl`` (exclusive).

    The free part (excl/tax split, or the tax) is the reference method's, or a cent off it when
    that keeps what remains closer to amount × rate = tax: otherwise the last piece of a line
    reversed in many steps would collect every step's rounding and could break the 0.06 rule.
    """
    if incl is not None:
        e = money.excl_from_incl(incl, rate)
        low, high = max(incl - rest.tax, money.ZERO), min(rest.excl, incl)
        splits = [e, e - money.CENT, e + money.CENT, min(max(e, low), high)]
        candidates = [_Amounts(quantity, x, incl - x, incl) for x in splits]
    else:
        assert excl is not None
        t = money.tax_on(excl, rate)
        taxes = [t, t - money.CENT, t + money.CENT, min(max(t, money.ZERO), rest.tax)]
        candidates = [_Amounts(quantity, excl, x, excl + x) for x in taxes]

    def fits(p: _Amounts) -> bool:
        return 0 <= p.excl <= rest.excl and 0 <= p.tax <= rest.tax and p.incl <= rest.incl

    def badness(p: _Amounts) -> Decimal:
        return max(abs(_tax_error(p, rate)), abs(_tax_error(rest - p, rate)))

    # The clamped candidate fits unless earlier reds already overdrew the line (then reported).
    return min((p for p in candidates if fits(p)), key=badness, default=candidates[-1])


def _tax_error(amounts: _Amounts, rate: Decimal) -> Decimal:
    return amounts.tax - money.mul(amounts.excl, rate)


def _over(index: int, what: str, remaining: Decimal, done: Decimal) -> Problem:
    return _problem(
        index,
        f"cannot take a red {what}: only {remaining} remains ({done} already reversed); "
        "cumulative red lines cannot exceed the blue line",
        "reverse at most what remains",
    )


def _reason_code_problems(code: str, lines: Iterable[InvoiceLine]) -> list[Problem]:
    problems = []
    for line in lines:
        goods = line.tax_code[:1] in {"1", "2"}
        if code == "3" and goods:
            problems.append(
                _problem(
                    line.line_no,
                    f"has goods/labour code {line.tax_code}, which cannot use 服务中止",
                    "use reason 1 (sales_return) or 4 (sales_allowance)",
                )
            )
        elif code == "1" and line.tax_code[:1] == "3":
            problems.append(
                _problem(
                    line.line_no,
                    f"has service code {line.tax_code}, which cannot use 销货退回",
                    "use reason 3 (service_termination) or 4 (sales_allowance)",
                )
            )
    return problems


def _cumulative_problems(
    blue: dict[int, _Blue], done: dict[int, _Amounts], takes: Sequence[tuple[int, _Amounts]]
) -> list[Problem]:
    total = dict(done)
    for index, take in takes:
        total[index] = total.get(index, _NOTHING) + take
    problems = []
    for index, amounts in sorted(total.items()):
        net = blue[index].net
        for field in ("quantity", "excl", "tax", "incl"):
            if getattr(amounts, field) > getattr(net, field):
                problems.append(
                    _problem(
                        index,
                        f"would be reversed beyond the blue line: {field} "
                        f"{getattr(amounts, field)} > {getattr(net, field)}",
                        "cumulative red lines cannot exceed the blue line; check earlier reversals",
                    )
                )
    return problems


def _red_line(code: str, blue: _Blue, take: _Amounts) -> InvoiceLine:
    with_quantity = code != "4" and take.quantity > 0
    return replace(
        blue.line,
        quantity=-take.quantity if with_quantity else None,
        unit_price=blue.unit_price if with_quantity else None,
        amount_excl_tax=-take.excl,
        tax=-take.tax,
        amount_incl_tax=-take.incl,
        property=LineProperty.NORMAL,
    )
