"""Issue lifecycle 20 → 21 → 2 / 22, 数电 numbers, quota, persistence across a restart."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sandbox_orders import SELLER, order

from cdc_invoice.sandbox import numbers
from cdc_invoice.sandbox.lifecycle import Clock, Lifecycle
from cdc_invoice.sandbox.model import AcceptedOrder
from cdc_invoice.sandbox.options import RuntimeConfig
from cdc_invoice.sandbox.rules import check_billing
from cdc_invoice.sandbox.store import Store

T0 = 1_767_225_600.0  # 2026-01-01 08:00 CST


class FakeClock(Clock):
    def __init__(self, store: Store, at: float) -> None:
        super().__init__(store)
        self.at = at

    def now(self) -> float:
        return self.at


def accepted(order_no: str, **overrides: Any) -> AcceptedOrder:
    result = check_billing(
        order(order_no, **overrides),
        user_tax=SELLER,
        sellers={SELLER},
        is_duplicate=lambda *_: False,
    )
    assert isinstance(result, AcceptedOrder)
    return result


State = tuple[Store, FakeClock, Lifecycle, RuntimeConfig]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    store = Store(tmp_path / "state.db")
    clock = FakeClock(store, T0)
    config = RuntimeConfig()
    yield store, clock, Lifecycle(store, clock, config), config
    store.close()


def test_status_moves_20_then_21_then_2_with_the_delay(state: State) -> None:
    _, clock, life, _ = state
    invoice = life.submit(accepted("SO-1"), delay_s=10)
    assert re.fullmatch(r"\d{20}", invoice.serial)
    for at, expected in [(0, "20"), (4.9, "20"), (5, "21"), (9.9, "21"), (10, "2")]:
        clock.at = T0 + at
        life.advance()
        assert life.status(invoice) == expected, at
    assert invoice.issued_at == T0 + 10
    assert invoice.number.startswith("26") and len(invoice.number) == 20


def test_numbers_are_unique_20_digits_with_the_year_first(state: State) -> None:
    _, clock, life, _ = state
    invoices = [life.submit(accepted(f"SO-{i}"), delay_s=0) for i in range(50)]
    clock.at += 1
    assert life.advance() == 50
    issued = [inv.number for inv in invoices]
    assert len(set(issued)) == 50
    assert all(numbers.is_invoice_number(n, year=2026) for n in issued)
    assert issued == sorted(issued)  # assigned in acceptance order


def test_number_year_follows_china_time() -> None:
    new_year_cst = 1_767_196_800.0  # 2026-01-01 00:00 CST == 2025-12-31 16:00 UTC
    assert numbers.invoice_number(new_year_cst, 1).startswith("26")
    assert numbers.invoice_number(new_year_cst - 1, 1).startswith("25")
    assert numbers.is_invoice_number("26332000000000000001", year=2026)
    assert not numbers.is_invoice_number("2633200000000000001")  # 19 digits


def test_monthly_quota_fails_the_invoice_that_exceeds_it(state: State) -> None:
    _, clock, life, config = state
    config.monthly_quota = Decimal("10000")  # one A1 invoice is 5484.96 ex tax
    first = life.submit(accepted("SO-1"), delay_s=0)
    second = life.submit(accepted("SO-2"), delay_s=0)
    clock.at += 1
    life.advance()
    assert (first.status, second.status) == ("2", "22")
    assert "额度" in second.fail_cause and not second.number


def test_deferred_rule_failure_ends_in_22_with_the_cause(state: State) -> None:
    _, clock, life, _ = state
    invoice = life.submit(accepted("SO-1"), delay_s=1, injected_fail="boom")
    clock.at += 1
    life.advance()
    assert (invoice.status, invoice.fail_cause, invoice.number) == ("22", "boom", "")


def test_sign_failure_ends_in_24_with_number_date_and_quota(state: State) -> None:
    """发票详情查询 doc: 24 开票成功签章失败 — issued (number, date), the seal failed."""
    _, clock, life, _ = state
    invoice = life.submit(accepted("SO-1"), delay_s=1, sign_fail="签章失败")
    clock.at += 1
    life.advance()
    assert (invoice.status, invoice.fail_cause) == ("24", "签章失败")
    assert len(invoice.number) == 20 and invoice.issued_at == T0 + 1
    assert sum(life.quota_used.values()) == invoice.total_ex  # it exists: it uses quota


def test_sign_failed_knob_is_a_validated_rate() -> None:
    config = RuntimeConfig()
    config.update({"fault_sign_failed": 0.25})
    assert config.to_json()["fault_sign_failed"] == 0.25
    with pytest.raises(ValueError, match="fault_sign_failed must be between 0 and 1"):
        config.update({"fault_sign_failed": 2})


def test_restart_keeps_acknowledged_invoices_and_finishes_pending_ones(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    clock = FakeClock(store, T0)
    life = Lifecycle(store, clock, RuntimeConfig())
    done = life.submit(accepted("SO-1"), delay_s=0)
    pending = life.submit(accepted("SO-2"), delay_s=60)
    clock.at += 1
    life.advance()
    store.flush()
    store.close()  # the "crash" happens after the acknowledgement was committed

    again = Store(tmp_path / "state.db")
    clock2 = FakeClock(again, T0 + 30)
    life2 = Lifecycle(again, clock2, RuntimeConfig())
    assert again.order_taken(SELLER, "SO-1") and again.order_taken(SELLER, "SO-2")
    assert again.invoices[done.serial].number == done.number
    assert life2.status(again.invoices[pending.serial]) == "21"
    clock2.at = T0 + 61
    life2.advance()
    restored = again.invoices[pending.serial]
    assert restored.status == "2" and restored.number != done.number
    assert restored.lines[0].ex == Decimal("5484.96")
    again.close()


async def test_group_commit_shares_one_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    before = store.commits
    life = Lifecycle(store, FakeClock(store, T0), RuntimeConfig())

    async def one(i: int) -> None:
        life.submit(accepted(f"SO-{i}"), delay_s=1)
        await store.commit()

    await asyncio.gather(*(one(i) for i in range(20)))
    assert store.commits == before + 1
    store.close()
    reopened = Store(tmp_path / "state.db")
    assert len(reopened.invoices) == 20
    reopened.close()


def test_the_database_refuses_a_second_invoice_for_an_order_number(tmp_path: Path) -> None:
    from sqlalchemy.exc import IntegrityError

    store = Store(tmp_path / "state.db")
    life = Lifecycle(store, FakeClock(store, T0), RuntimeConfig())
    life.submit(accepted("SO-1"), delay_s=1)
    store.flush()
    life.submit(accepted("SO-1"), delay_s=1)  # bypassing E9106 must not replace the first
    with pytest.raises(IntegrityError):
        store.flush()
    store.close()
