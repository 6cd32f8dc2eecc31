"""Exponential backoff with "equal jitter" and a cap (as pg-boss does)."""

from __future__ import annotations

import random


def retry_delay(retries: int, *, base: float = 1.0, cap: float = 300.0) -> float:
    """Seconds to wait before retry number ``retries + 1`` (retries = failures so far)."""
    ceiling = min(cap, base * 2.0 ** min(retries, 30))
    return ceiling / 2 + random.uniform(0, ceiling / 2)
