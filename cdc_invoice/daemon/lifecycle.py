"""Lifecycle requests asked for in SQL: reverse (红冲), void (作废), deliver, refresh, and
confirm_slip (the seller's answer to a buyer's 红字确认单, daemon/buyer_slips.py).

Red-letter reversal of a 数电 invoice goes through a confirmation slip (红字确认单):
  apply for the slip (bill_id = our idempotency key) -> poll it -> ready: the platform issues
  the red invoice itself (pc/bs) or we ask for it (fastInvoiceRed, paper es/ec) -> poll the red
  invoice -> record it with its blue, whose status becomes partially_reversed or reversed.
A slip that needs the buyer's confirmation waits (cdc_invoice.pending_red_slips) and expires
after 72 hours. As for issuing, any attempt after the first asks the platform before acting.

A whole-order reversal (attach's reverse_when) settles the order's issue requests first
(Repository.expand_order_reversal): one never sent is cancelled, one in flight is waited for,
one failed with parts at the platform refuses the reversal with the fix; a returned order nets
to zero (docs/reliability.md, "Lifecycle rules"). Every request ends: unexpected errors are
caught per request and retries are capped by ``max_attempts`` (handler.py).
An agreed buyer slip is polled like a reversal's slip: its red invoice is recorded the same way.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from cdc_invoice.daemon import buyer_slips
from cdc_invoice.daemon.drafts import draft_from_json, draft_to_json, invoice_row, order_no
from cdc_invoice.daemon.handler import Handler
from cdc_invoice.db.queries import q
from cdc_invoice.db.repository import ClaimedRequest, DatabaseUnavailable, Fence
from cdc_invoice.errors import (
    InvalidOrder,
    OrderError,
    Problem,
    ProviderError,
    ProviderRejected,
    RequestRefused,
)
from cdc_invoice.invoice import reversal
from cdc_invoice.invoice.model import Buyer, InvoiceDraft, InvoiceLine, Seller
from cdc_invoice.providers.base import InvoiceRef

log = logging.getLogger(__name__)

KINDS = ("reverse", "void", "deliver", "refresh", "confirm_slip")
PAPER = ("es", "ec", "c", "s")  # the only kinds that can be voided or need fastInvoiceRed
SLIP_POLL_SECONDS = 30.0  # a slip waiting for the buyer: no hurry
MAX_VOID_POLLS = 120


class Lifecycle(Handler):
    async def start(self, req: ClaimedRequest) -> None:
        fence = Fence(req.id, req.attempt)
        try:
            if req.kind == "reverse":
                await self._start_reverse(req, fence)
            elif req.kind == "void":
                await self._start_void(req, fence)
            elif req.kind == "deliver":
                await self._deliver(req, fence)
            elif req.kind == "refresh":
                await self._refresh(req, fence)
            elif req.kind == "confirm_slip":
                await self._start_confirm(req, fence)
            else:
                raise InvalidOrder([Problem(f"unknown request kind {req.kind!r}")])
        except (OrderError, RequestRefused) as exc:
            hint = exc.hint
            if isinstance(exc, OrderError):
                hint = "; ".join(p.fix for p in exc.problems if p.fix) or hint
            await self._fail(req, fence, str(exc), _code(exc), hint)
        except ProviderRejected as exc:
            await self._fail(
                req, fence, f"platform refused {req.kind}: {exc.message}", exc.code, exc.hint
            )
        except (ProviderError, DatabaseUnavailable) as exc:
            await self._retry(req, fence, exc)
        except Exception as exc:  # this request only: never the batch, never forever
            await self._unexpected(req, fence, exc)

    async def poll(self, reqs: list[ClaimedRequest]) -> None:
        for req in reqs:
            fence = Fence(req.id, req.attempt)
            try:
                if req.kind in ("reverse", "confirm_slip"):  # an agreed buyer slip: same poll
                    await self._poll_reverse(req, fence)
                elif req.kind == "void":
                    await self._poll_void(req, fence)
            except (OrderError, RequestRefused) as exc:
                await self._fail(req, fence, str(exc), _code(exc), exc.hint)
            except ProviderRejected as exc:
                await self._fail(
                    req, fence, f"platform refused {req.kind}: {exc.message}", exc.code, exc.hint
                )
            except (ProviderError, DatabaseUnavailable) as exc:
                await self._retry(req, fence, exc)
            except Exception as exc:  # this request only: the others of the batch go on
                await self._unexpected(req, fence, exc)

    # --- shared ----------------------------------------------------------------------------

    async def _invoice(self, req: ClaimedRequest) -> tuple[dict[str, Any], Seller, InvoiceRef]:
        if req.invoice_id is None:
            raise InvalidOrder([Problem(f"{req.kind} request {req.id} names no invoice")])
        inv = await self.repo.invoice(req.invoice_id)
        if inv is None:
            raise InvalidOrder([Problem(f"invoice id {req.invoice_id} does not exist")])
        seller = await self.sellers.for_source(inv["source"])
        ref = InvoiceRef(
            serial=inv["platform_serial"],
            order_no=inv["platform_order_no"],
            number=inv["invoice_number"],
            invoice_line=inv["invoice_line"],
            buyer_name=inv["buyer_name"],
            buyer_tax_number=inv["buyer_tax_number"],
            paper_code=inv["paper_code"],
            paper_number=inv["paper_number"],
        )
        return inv, seller, ref

    # --- reverse -----------------------------------------------------------------------------

    async def _start_reverse(self, req: ClaimedRequest, fence: Fence) -> None:
        params = req.params or {}
        reason = str(params.get("reason", "1"))
        if req.invoice_id is None:  # a whole order, from attach(reverse_when)
            numbers = await self.repo.expand_order_reversal(
                fence, req.source, req.order_ref, reason
            )
            if numbers is None:
                # Not capped: the issue request it waits for is (max_attempts), so this ends.
                await self._retry(
                    req,
                    fence,
                    ProviderError(
                        f"order {req.order_ref!r} is still being invoiced; its reversal waits"
                    ),
                    capped=False,
                )
            return
        inv, seller, ref = await self._invoice(req)
        blue = await self.repo.invoice_lines(inv["id"])
        reds = await self.repo.invoice_lines(inv["id"], reds=True)
        requested = None
        if not params.get("full", True):
            requested = [
                reversal.RedRequestLine(
                    line_no=int(line["line_no"]),
                    quantity=Decimal(str(line["quantity"])) if "quantity" in line else None,
                    amount=Decimal(str(line["amount"])) if "amount" in line else None,
                )
                for line in params.get("lines") or []
            ]
        lines = reversal.red_lines(blue, requested, reason, reds)
        bill_id = f"{req.platform_order_no}RC"
        red_order_no = order_no(req.platform_order_no, 1)
        slip = None
        if req.attempt > 1:  # an earlier attempt may have applied already
            slip = await self._timed(
                "query_red_slip", self.provider.query_red_slip(seller, bill_id)
            )
        if slip is None:
            await self._timed(
                "red_slip",
                self.provider.request_red_slip(
                    seller, ref, None if requested is None else lines, reason, bill_id, red_order_no
                ),
            )
        draft = _red_draft(inv, lines)
        progress = {
            "stage": "slip",
            "bill_id": bill_id,
            "red_order_no": red_order_no,
            "reason": reason,
            "draft": draft_to_json(draft),
        }
        ok = await self.repo.mark_submitted(
            fence,
            progress,
            None,
            self.result_poll_seconds,
            event={
                "event": "platform.red_slip",
                "source": req.source,
                "order_ref": req.order_ref,
                "detail": {
                    "bill_id": bill_id,
                    "invoice": inv["invoice_number"],
                    "reason": reason,
                    "total": str(draft.total_incl_tax),
                },
            },
        )
        if not ok:
            log.warning("request %s lost its lease after applying for slip %s", req.id, bill_id)

    async def _poll_reverse(self, req: ClaimedRequest, fence: Fence) -> None:
        progress = dict(req.progress or {})
        inv, seller, ref = await self._invoice(req)
        if progress.get("stage") == "slip":
            slip = await self._timed(
                "query_red_slip", self.provider.query_red_slip(seller, progress["bill_id"])
            )
            if slip is None or slip.status == "applying":
                await self.repo.release_poll([fence], self.result_poll_seconds)
                return
            progress["slip_status"] = slip.status
            if slip.bill_time is not None:  # the 72 h count from the slip's time, not ours
                progress["slip_time"] = slip.bill_time.isoformat()
            if slip.status in ("awaiting_buyer", "awaiting_seller"):
                await self.repo.update_progress(fence, progress, SLIP_POLL_SECONDS)
                return
            if slip.status in ("cancelled", "failed"):
                await self._fail(
                    req,
                    fence,
                    f"red-letter slip {progress['bill_id']} for invoice {inv['invoice_number']} "
                    f"ended: {slip.status} ({slip.status_code}) {slip.message or ''}".strip(),
                    f"SLIP_{slip.status_code}",
                    "07 means 72 hours passed without the buyer's confirmation: request again",
                )
                return
            serial = slip.red_serial
            if serial is None and ref.invoice_line in PAPER:
                accepted = await self._timed(
                    "issue_red",
                    self.provider.issue_red_from_slip(seller, ref, slip, progress["red_order_no"]),
                )
                serial = accepted.serial
            if serial is None:  # electronic: the platform issues it by itself, soon
                await self.repo.update_progress(fence, progress, self.result_poll_seconds)
                return
            progress.update(stage="red", serial=serial)
            await self.repo.update_progress(fence, progress, self.result_poll_seconds)
            return
        results = await self._timed(
            "query", self.provider.query_by_serials(seller, [progress["serial"]])
        )
        found = results[0] if results else None
        if found is None or found.status == "issuing":
            await self.repo.release_poll([fence], self.result_poll_seconds)
            return
        if found.status != "issued":
            await self._fail(
                req,
                fence,
                f"the red invoice {progress['serial']} ended "
                f"{found.status_code}: {found.fail_cause or ''}".strip(),
                "ISSUE_FAILED",
                "check the platform; then request the reversal again",
            )
            return
        draft = draft_from_json(progress["draft"])
        row = invoice_row(
            request_id=req.id,
            seller=seller,
            draft=draft,
            order_no=found.order_no or progress["red_order_no"],
            result=found,
            original_invoice_id=inv["id"],
        )
        status = await self.repo.record_red(fence, row, inv["id"])
        if status is not None:
            self.stats.recorded += 1
            log.info(
                "invoice %s: red invoice %s recorded; blue is now %s",
                inv["invoice_number"],
                found.number,
                status,
            )

    # --- a buyer's slip: the seller's answer (confirm_red_slip) --------------------------------

    async def _start_confirm(self, req: ClaimedRequest, fence: Fence) -> None:
        """Answer a buyer's slip (红字确认单确认 doc); on agreement the platform issues the red
        invoice itself and the request then polls it like a reversal (_poll_reverse)."""
        params = req.params or {}
        bill_id, agree = str(params["bill_id"]), bool(params["agree"])
        inv, seller, _ = await self._invoice(req)
        red_order_no = order_no(req.platform_order_no, 1)
        # Always ask first: an earlier attempt's answer may have been lost (confirm acts).
        slip = await self._timed("query_red_slip", self.provider.query_red_slip(seller, bill_id))
        if slip is None:
            raise ProviderRejected(
                f"the platform has no red-letter slip {bill_id}", code="SLIP_UNKNOWN"
            )
        if slip.status == "awaiting_seller":
            await self._timed(
                "confirm_slip",
                self.provider.confirm_red_slip(seller, bill_id, agree, red_order_no),
            )
        elif slip.status_code not in ("04", "06"):  # 04/06: our answer already arrived
            await self._fail(
                req,
                fence,
                f"red-letter slip {bill_id} no longer waits for the seller: "
                f"{slip.status_code} {slip.message or ''}".strip(),
                f"SLIP_{slip.status_code}",
                "07: the 72 hours passed; 08: the buyer withdrew it — nothing to answer",
            )
            return
        status = "04" if agree else "06"
        async with self.repo.connection() as conn:
            await conn.execute(q("set_buyer_slip_status"), {"bill_id": bill_id, "status": status})
        if not agree:
            await self.repo.finish(
                fence,
                [],
                {
                    "event": "red_slip.refused",
                    "invoice_id": inv["id"],
                    "source": req.source,
                    "order_ref": req.order_ref,
                    "detail": {"bill_id": bill_id, "invoice": inv["invoice_number"]},
                },
            )
            return
        async with self.repo.connection() as conn:
            row = await (await conn.execute(q("load_buyer_slip"), {"bill_id": bill_id})).fetchone()
        if row is None:
            raise InvalidOrder([Problem(f"buyer red-letter slip {bill_id} is not recorded")])
        blue = await self.repo.invoice_lines(inv["id"])
        draft = _red_draft(inv, buyer_slips.red_lines(list(row[1]), blue))
        await self.repo.mark_submitted(
            fence,
            {
                "stage": "slip",
                "bill_id": bill_id,
                "red_order_no": red_order_no,
                "reason": str(row[2]),
                "draft": draft_to_json(draft),
            },
            None,
            self.result_poll_seconds,
            event={
                "event": "platform.red_slip_confirmed",
                "source": req.source,
                "order_ref": req.order_ref,
                "detail": {
                    "bill_id": bill_id,
                    "invoice": inv["invoice_number"],
                    "total": str(draft.total_incl_tax),
                },
            },
        )

    # --- void --------------------------------------------------------------------------------

    async def _start_void(self, req: ClaimedRequest, fence: Fence) -> None:
        _, seller, ref = await self._invoice(req)
        if ref.invoice_line not in PAPER:
            raise InvalidOrder(
                [
                    Problem(
                        f"invoice {ref.number} is an electronic invoice ({ref.invoice_line}); "
                        "it cannot be voided",
                        fix=f"SELECT cdc_invoice.request_reversal('{ref.number}', "
                        "'invoicing_error')",
                    )
                ]
            )
        already = False
        if req.attempt > 1:
            found = await self._timed("query", self.provider.query_by_serials(seller, [ref.serial]))
            already = bool(found) and found[0].status in ("voiding", "voided")
        if not already:
            reason = str((req.params or {}).get("reason", "2"))
            await self._timed("void", self.provider.void(seller, ref, reason))
        await self.repo.mark_submitted(
            fence,
            {"stage": "void", "polls": 0},
            ref.serial,
            self.result_poll_seconds,
            event={
                "event": "platform.void",
                "source": req.source,
                "order_ref": req.order_ref,
                "detail": {"invoice": ref.number},
            },
        )

    async def _poll_void(self, req: ClaimedRequest, fence: Fence) -> None:
        inv, seller, ref = await self._invoice(req)
        found = await self._timed("query", self.provider.query_by_serials(seller, [ref.serial]))
        status = found[0].status if found else None
        if status == "voided":
            await self.repo.finish(
                fence,
                [("set_invoice_status", {"id": inv["id"], "status": "voided"})],
                {
                    "event": "invoice.voided",
                    "invoice_id": inv["id"],
                    "source": req.source,
                    "order_ref": req.order_ref,
                    "detail": {"invoice": ref.number},
                },
            )
            return
        polls = int((req.progress or {}).get("polls", 0)) + 1
        if polls > MAX_VOID_POLLS:
            await self._fail(
                req,
                fence,
                f"the platform did not void invoice {ref.number} (status {status})",
                "VOID_TIMEOUT",
                "check the platform's portal",
            )
            return
        await self.repo.update_progress(
            fence, {"stage": "void", "polls": polls}, self.result_poll_seconds
        )

    # --- deliver, refresh ---------------------------------------------------------------------

    async def _deliver(self, req: ClaimedRequest, fence: Fence) -> None:
        inv, seller, ref = await self._invoice(req)
        params = req.params or {}
        try:
            await self._timed(
                "deliver",
                self.provider.deliver(seller, ref, params.get("email"), params.get("phone")),
            )
        except ValueError as exc:  # what was asked cannot be sent (e.g. not a mobile number)
            raise InvalidOrder(
                [
                    Problem(
                        f"cannot deliver invoice {ref.number}: {exc}",
                        fix=f"SELECT cdc_invoice.request_delivery('{ref.number}', "
                        "'<email>', '<11-digit mobile number or NULL>')",
                    )
                ]
            ) from exc
        await self.repo.finish(
            fence,
            [("set_delivery_status", {"id": inv["id"], "status": "sent"})],
            {
                "event": "invoice.delivered",
                "invoice_id": inv["id"],
                "source": req.source,
                "order_ref": req.order_ref,
                "detail": {"email": params.get("email"), "phone": params.get("phone")},
            },
        )

    async def _refresh(self, req: ClaimedRequest, fence: Fence) -> None:
        inv, seller, ref = await self._invoice(req)
        found = await self._timed("query", self.provider.query_by_serials(seller, [ref.serial]))
        if not found:
            raise ProviderRejected(
                f"the platform does not know invoice {ref.number}",
                code="E9500",
                hint="run cdc-invoice reconcile for its day",
            )
        p = found[0]
        await self.repo.finish(
            fence,
            [
                (
                    "refresh_invoice",
                    {
                        "id": inv["id"],
                        "pdf_url": p.pdf_url,
                        "ofd_url": p.ofd_url,
                        "xml_url": p.xml_url,
                        "voided": p.status == "voided",
                    },
                )
            ],
            {
                "event": "invoice.refreshed",
                "invoice_id": inv["id"],
                "source": req.source,
                "order_ref": req.order_ref,
                "detail": {"status": p.status_code},
            },
        )


def _code(exc: OrderError | RequestRefused) -> str | None:
    """The failure code: an order error's own, or the SQLSTATE-like code of a refusal."""
    return getattr(exc, "code", None) or getattr(exc, "sqlstate", None)


def _red_draft(inv: dict[str, Any], lines: list[InvoiceLine]) -> InvoiceDraft:
    """The red invoice as recorded: the blue's buyer, the red lines, their (negative) totals."""
    return InvoiceDraft(
        source=inv["source"],
        order_ref=inv["order_ref"],
        buyer=Buyer(name=inv["buyer_name"], tax_number=inv["buyer_tax_number"]),
        invoice_line=inv["invoice_line"],
        lines=tuple(lines),
        total_excl_tax=sum((ln.amount_excl_tax for ln in lines), Decimal(0)),
        total_tax=sum((ln.tax for ln in lines), Decimal(0)),
        total_incl_tax=sum((ln.amount_incl_tax for ln in lines), Decimal(0)),
        kind="red",
    )
