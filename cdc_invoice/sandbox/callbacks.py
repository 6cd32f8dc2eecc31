"""Opt-in callbacks (``--callback-url``): the sandbox tells the seller about results, as the
platform does (【诺诺发票】回传开票结果对接文档 V1.1.1).

- §一 回传开票结果 ``operater=callback``: a **FORM** POST with ``orderno`` and ``content`` (a
  JSON string: c_status 1 开票完成 / 2 开票失败, c_kprq, c_fpqqlsh, c_orderno,
  allElectronicInvoiceNumber, oldEleInvoiceNumber, c_bhsje, c_hjse, c_url, c_errorMessage),
  once an invoice is final.
- §五 回传红字确认单结果 ``operater=redConfirmCallback``: a **JSON** POST with ``billId`` and
  ``content`` (an object: billInfoNo, billStatus, billMessage, sellerTaxNo, buyerTaxNo, …) on every
  status change of a slip.

The receiver answers ``{"status": "0000"}``; anything else (or no answer) is retried a few times.
ASSUMPTIONS (docs/platform-assumptions.md): the resend schedule (3 tries, 0.2 s / 1 s apart) and
that a slip callback carries the 数电 slip statuses of the query doc (01–16); the doc's table
lists the older 信息表 statuses. Callbacks carry no signature: receivers treat them as hints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from cdc_invoice.sandbox.fields import money
from cdc_invoice.sandbox.model import FAILED, ISSUED, Invoice, RedSlip
from cdc_invoice.sandbox.numbers import cst
from cdc_invoice.sandbox.store import Store

log = logging.getLogger(__name__)

TICK_S = 0.1
RESEND_DELAYS_S = (0.2, 1.0)
SUCCESS = "0000"


def invoice_form(invoice: Invoice, base_url: str) -> dict[str, str]:
    """§一: FORM fields; content is a JSON string."""
    issued = invoice.status == ISSUED
    content = {
        "c_status": "1" if issued else "2",
        "c_kprq": str(int((invoice.issued_at or invoice.submitted_at) * 1000)),
        "c_fpdm": invoice.paper_code,
        "c_fphm": invoice.paper_no,
        "allElectronicInvoiceNumber": invoice.number,
        "oldEleInvoiceNumber": invoice.original_number,
        "c_bhsje": money(invoice.total_ex),
        "c_hjse": money(invoice.total_tax),
        "c_orderno": invoice.order_no,
        "c_fpqqlsh": invoice.serial,
        "c_saletaxnum": invoice.seller_tax,
        "c_invoice_line": invoice.invoice_line,
        "c_url": f"{base_url}/_sandbox/files/{invoice.serial}.pdf" if issued else "",
        "c_errorMessage": "" if issued else invoice.fail_cause,
    }
    return {
        "operater": "callback",
        "orderno": invoice.order_no,
        "content": json.dumps(content, ensure_ascii=False),
    }


def slip_json(slip: RedSlip) -> dict[str, Any]:
    """§五: a JSON body; content is an object (as in the doc's 请求示例)."""
    return {
        "operater": "redConfirmCallback",
        "billId": slip.bill_id,
        "content": {
            "billInfoNo": slip.bill_no,
            "billStatus": slip.bill_status,
            "billMessage": slip.message,
            "billTime": f"{cst(slip.created_at):%Y-%m-%d %H:%M:%S}",
            "sellerTaxNo": slip.seller_tax,
            "sellerName": slip.seller_name,
            "buyerTaxNo": slip.buyer_tax_no,
            "buyerName": slip.buyer_name,
            "taxExcludedAmount": money(slip.total_ex),
            "taxAmount": money(slip.total_tax),
            "applyRemark": "0000000100" if slip.apply_source == "0" else "1100000000",
        },
    }


class CallbackSender:
    """Watches the state and posts what changed; started only when a URL is configured."""

    def __init__(
        self,
        url: str,
        store: Store,
        advance: Callable[[], None],
        base_url: Callable[[], str],
    ) -> None:
        self.url = url
        self._store = store
        self._advance = advance
        self._base_url = base_url
        # Whatever was final before this process started was called back by an earlier one.
        self._sent_invoices = {
            s for s, inv in store.invoices.items() if inv.status in (ISSUED, FAILED)
        }
        self._sent_slips = {b: s.bill_status for b, s in store.slips.items()}
        self.delivered: list[dict[str, Any]] = []  # GET /_sandbox/callbacks
        self._task: asyncio.Task[None] | None = None
        self._posts: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self._task = asyncio.create_task(self._run(), name="sandbox-callbacks")

    async def stop(self) -> None:
        for task in (self._task, *self._posts):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._advance()
            await self._store.commit()
            for serial, invoice in list(self._store.invoices.items()):
                if invoice.status in (ISSUED, FAILED) and serial not in self._sent_invoices:
                    self._sent_invoices.add(serial)
                    form = invoice_form(invoice, self._base_url())
                    self._spawn(self._post("callback", serial, data=form))
            for bill_id, slip in list(self._store.slips.items()):
                if self._sent_slips.get(bill_id) != slip.bill_status:
                    self._sent_slips[bill_id] = slip.bill_status
                    self._spawn(
                        self._post("redConfirmCallback", bill_id, json_body=slip_json(slip))
                    )

    def _spawn(self, post: Coroutine[Any, Any, None]) -> None:
        # one task per callback: a slow or failing receiver must not hold the others
        task = asyncio.create_task(post)
        self._posts.add(task)
        task.add_done_callback(self._posts.discard)

    async def _post(
        self,
        operater: str,
        key: str,
        *,
        data: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
    ) -> None:
        assert self._session is not None
        answer = ""
        for attempt, delay in enumerate((0.0, *RESEND_DELAYS_S)):
            await asyncio.sleep(delay)
            try:
                async with self._session.post(self.url, data=data, json=json_body) as response:
                    text = await response.text()
                answer = str(json.loads(text).get("status", ""))
            except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
                answer = f"error: {exc!r}"
            log.info("callback %s %s try %d: %s", operater, key, attempt + 1, answer)
            if answer == SUCCESS:
                break
        self.delivered.append(
            {
                "operater": operater,
                "key": key,
                "encoding": "form" if data is not None else "json",
                "answer": answer,
            }
        )
