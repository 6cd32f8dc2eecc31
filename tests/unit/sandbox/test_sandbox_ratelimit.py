"""The sandbox's rate_limit_per_s (an assumption, docs/platform-assumptions.md)."""

from __future__ import annotations

import pytest

from cdc_invoice.sandbox.options import RuntimeConfig
from cdc_invoice.sandbox.ratelimit import SlidingWindow


def test_calls_over_the_limit_in_one_second_are_refused_then_allowed_again() -> None:
    now = [0.0]
    w = SlidingWindow(clock=lambda: now[0])
    assert [w.allow("app", 3) for _ in range(5)] == [True, True, True, False, False]
    assert w.allow("other", 3)  # per app key
    assert w.throttled == 2
    now[0] = 1.0  # the first three left the window
    assert w.allow("app", 3)
    assert all(w.allow("app", 0) for _ in range(100))  # 0: no limit


def test_peak_counts_every_call_received_in_a_second() -> None:
    now = [0.0]
    w = SlidingWindow(clock=lambda: now[0])
    for i in range(10):
        now[0] = i * 0.25
        w.observe()
    assert w.peak == 4


def test_the_knob_is_validated() -> None:
    config = RuntimeConfig()
    config.update({"rate_limit_per_s": 5})
    assert config.rate_limit_per_s == 5.0
    with pytest.raises(ValueError, match="rate_limit_per_s must not be negative"):
        config.update({"rate_limit_per_s": -1})
