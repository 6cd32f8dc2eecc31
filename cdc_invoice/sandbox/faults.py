"""Fault injection, decided per gateway request with a seeded RNG (reproducible chaos runs).

One uniform draw per request picks at most one fault, so the configured rates are exact
probabilities of each fault (they must add up to ≤ 1):

- ``5xx``            HTTP 503 with an HTML body; the request is not acted on
- ``timeout``        stall for ``timeout_fault_s`` (60 s) then 504; not acted on
- ``lost_response``  the request IS acted on (an invoice may be issued), then the connection is
                     dropped without an answer — the "outcome unknown" case
- ``garbage``        HTTP 200 with a body that is not JSON; not acted on

Invoice-level faults (their own RNG streams): ``fault_issue_fail`` ends an accepted invoice in
22 (开票失败), ``fault_sign_failed`` in 24 (开票成功签章失败: issued, number and date, seal failed).

The token endpoint is never faulted: the 50-per-30-days token quota would make a chaos run burn
through it for no insight.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Literal

from cdc_invoice.sandbox.options import RuntimeConfig

Fault = Literal["5xx", "timeout", "lost_response", "garbage"]

ERROR_503_HTML = (
    "<html><head><title>503 Service Temporarily Unavailable</title></head>"
    "<body><center><h1>503 Service Temporarily Unavailable</h1></center>"
    "<hr><center>nginx</center></body></html>"
)
ERROR_504_HTML = ERROR_503_HTML.replace(
    "503 Service Temporarily Unavailable", "504 Gateway Time-out"
)
# Cut mid-object, as a proxy that truncates a response would.
GARBAGE_BODY = '{"code":"E0000","describe":"开票提交成功","result":{"invoiceSer'


class FaultInjector:
    def __init__(self, seed: int) -> None:
        self._gateway = random.Random(seed)
        self._issue = random.Random(seed + 1)  # separate stream: issue failures don't shift it
        self._sign = random.Random(seed + 2)  # and seal failures shift neither
        self.injected: Counter[str] = Counter()

    def decide(self, config: RuntimeConfig) -> Fault | None:
        draw = self._gateway.random()
        choices: tuple[tuple[Fault, float], ...] = (
            ("5xx", config.fault_5xx),
            ("timeout", config.fault_timeout),
            ("lost_response", config.fault_lost_response),
            ("garbage", config.fault_garbage),
        )
        for fault, rate in choices:
            if draw < rate:
                self.injected[fault] += 1
                return fault
            draw -= rate
        return None

    def issue_failure(self, config: RuntimeConfig) -> str | None:
        """A failure cause for an accepted invoice, or None (rate ``fault_issue_fail``)."""
        if config.fault_issue_fail and self._issue.random() < config.fault_issue_fail:
            self.injected["issue_fail"] += 1
            return "沙箱注入的开票失败(税局返回未知异常)"
        return None

    def sign_failure(self, config: RuntimeConfig) -> str | None:
        """A seal failure cause for an invoice that will be issued, or None (rate
        ``fault_sign_failed``): it ends in status 24 with its number and date."""
        if config.fault_sign_failed and self._sign.random() < config.fault_sign_failed:
            self.injected["sign_failed"] += 1
            return "沙箱注入的签章失败(发票已开具,电子签章失败)"
        return None
