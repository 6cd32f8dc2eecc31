"""Issue requests: compute the invoices of an order, submit them, poll the results, record them.

Never two invoices for one order:
  * the platform order number (idempotency key) is fixed when the request is claimed, and the
    claim itself commits the attempt, before any platform call;
  * any attempt after the first asks the platform by order number first and adopts what it
    finds (after checking buyer and totals) instead of issuing again;
  * every completion is fenced by (claimed_by, attempt), and invoice numbers and order
    numbers are unique in cdc_invoice.invoice.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any

from cdc_invoice.daemon.drafts import (
    draft_from_json,
    draft_to_json,
    invoice_row,
    mismatch,
    order_no,
)
from cdc_invoice.daemon.handler import Handler, SellerCache
from cdc_invoice.db.repository import ClaimedRequest, DatabaseUnavailable, Fence
from cdc_invoice.errors import (
    CdcInvoiceError,
    InvalidOrder,
    OrderError,
    OutcomeUnknown,
    Problem,
    ProviderError,
    ProviderRejected,
    SellerPaused,
)
from cdc_invoice.invoice import compute, mapping
from cdc_invoice.invoice.model import Buyer, InvoiceDraft, ItemTax, Seller
from cdc_invoice.providers.base import PlatformInvoice
from cdc_invoice.providers.nuonuo.codes import is_quota_failure
from cdc_invoice.providers.pace import QuotaGuard

log = logging.getLogger(__name__)

__all__ = ["Issuer", "SellerCache"]  # SellerCache: for callers that built on this module


# source -> (buyers by customer_ref, item tax rows by item_ref)
MappingsBySource = dict[str, tuple[dict[str, Buyer], dict[str, ItemTax]]]

# Our codes for a request the platform accepted and then failed (status 22/24). retry() gives
# an ISSUE_FAILED request a new order number (the old one is burned); a PARTIAL_ISSUE (some parts
# of a split order issued) keeps its numbers, so that the issued parts are never issued again.
ISSUE_FAILED = "ISSUE_FAILED"
ISSUE_FAILED_HINT = "fix the cause shown, then SELECT cdc_invoice.retry(<request id>)"
PARTIAL_ISSUE = "PARTIAL_ISSUE"
PARTIAL_HINT = (
    "some parts were issued: check them with cdc-invoice reconcile; a retry keeps the order "
    "numbers and cannot re-issue the failed part, so reverse the issued parts and re-ship the order"
)

# Platform codes that mean "that order number exists already": resolve by querying, never fail.
ALREADY_EXISTS = {"E9106"}


class Issuer(Handler):
    """Issue requests: compute, submit (or adopt), poll in batches, record."""

    # Sellers paused for quota (providers/pace.py); the runner shares the adapter's. None: a
    # quota failure is parked like any other platform failure.
    quota: QuotaGuard | None = None

    # --- a claimed request that has not reached the platform (as far as we know) -----------

    async def load_mappings(self, reqs: Sequence[ClaimedRequest]) -> MappingsBySource:
        """The buyer and item mappings named by a batch of claimed requests, one lookup per
        source: the requests of one claim share it instead of each asking for its own."""
        refs: dict[str, tuple[set[str], set[str]]] = {}
        for req in reqs:
            try:
                customers, items = mapping.document_refs(req.document or [])
            except (AttributeError, TypeError):
                continue  # a malformed document: its own start() reports it
            c, i = refs.setdefault(req.source, (set(), set()))
            c |= customers
            i |= items
        return {
            source: await self.repo.mappings(source, sorted(c), sorted(i))
            for source, (c, i) in refs.items()
        }

    async def start(
        self, req: ClaimedRequest, mappings: Awaitable[MappingsBySource] | None = None
    ) -> None:
        """Compute, submit (or adopt) and mark submitted one claimed request. ``mappings``: the
        claim batch's shared lookup (load_mappings), or None to look up this request's own."""
        fence = Fence(req.id, req.attempt)
        try:
            seller = await self.sellers.for_source(req.source)
            drafts = await self._compute(req, seller, mappings)
            parts = await self._submit(req, seller, drafts)
        except OrderError as exc:
            await self._fail(req, fence, str(exc), exc.code, _order_hint(exc))
            return
        except ProviderRejected as exc:
            await self._fail(
                req,
                fence,
                f"platform rejected order {req.order_ref!r}: {exc.message}",
                exc.code,
                exc.hint,
            )
            return
        except (ProviderError, DatabaseUnavailable) as exc:
            await self._retry(req, fence, exc)
            return
        progress = {"parts": parts}
        serial = parts[0]["serial"] if len(parts) == 1 else None
        try:
            ok = await self.repo.mark_submitted(
                fence,
                progress,
                serial,
                self.result_poll_seconds,
                event={
                    "event": "platform.submitted",
                    "source": req.source,
                    "order_ref": req.order_ref,
                    "detail": {
                        "parts": [
                            {k: p[k] for k in ("order_no", "serial", "adopted")} for p in parts
                        ]
                    },
                },
            )
        except DatabaseUnavailable as exc:
            # The platform has it; when the lease expires the next holder asks by order number
            # and adopts it. Nothing is lost and nothing is issued twice.
            log.warning(
                "request %s: accepted by the platform, not recorded yet (%s); it will "
                "be adopted after its lease expires",
                req.id,
                exc,
            )
            return
        if not ok:
            log.warning(
                "request %s lost its lease while submitting; the new holder adopts it", req.id
            )

    async def _compute(
        self,
        req: ClaimedRequest,
        seller: Seller,
        shared: Awaitable[MappingsBySource] | None = None,
    ) -> list[InvoiceDraft]:
        rows = req.document or []
        customer_refs, item_refs = mapping.document_refs(rows)
        found = (await shared).get(req.source) if shared is not None else None
        if found is None:
            found = await self.repo.mappings(req.source, sorted(customer_refs), sorted(item_refs))
        buyers, items = found
        order = mapping.build_order(req.source, req.order_ref, rows, buyers, items, seller)
        return compute.build_invoices(order, seller)

    async def _submit(
        self, req: ClaimedRequest, seller: Seller, drafts: Sequence[InvoiceDraft]
    ) -> list[dict[str, Any]]:
        numbers = [order_no(req.platform_order_no, d.part) for d in drafts]
        found: dict[str, PlatformInvoice] = {}
        if req.attempt > 1:
            # A previous attempt may have reached the platform (lost response, killed worker).
            for i in range(0, len(numbers), self.provider.max_query_batch):
                for inv in await self._timed(
                    "query",
                    self.provider.query_by_order_nos(
                        seller, numbers[i : i + self.provider.max_query_batch]
                    ),
                ):
                    found[inv.order_no] = inv
        parts: list[dict[str, Any]] = []
        for draft, number in zip(drafts, numbers, strict=True):
            existing = found.get(number)
            if existing is not None:
                why = mismatch(draft, existing)
                if why:
                    raise InvalidOrder(
                        [
                            Problem(
                                f"the platform holds invoice {existing.serial} under our order "
                                f"number {number} but it differs from the order ({why})",
                                fix="compare with the platform; the order changed after issue?",
                            )
                        ],
                        source=req.source,
                        order_ref=req.order_ref,
                    )
                if existing.status == "failed":
                    partial = any(f.status == "issued" for f in found.values())
                    raise ProviderRejected(
                        f"the platform failed invoice {existing.serial}: {existing.fail_cause}",
                        code=PARTIAL_ISSUE if partial else ISSUE_FAILED,
                        hint=PARTIAL_HINT if partial else ISSUE_FAILED_HINT,
                    )
                self.stats.adopted += 1
                parts.append(
                    {
                        "part": draft.part,
                        "order_no": number,
                        "serial": existing.serial,
                        "adopted": True,
                        "draft": draft_to_json(draft),
                    }
                )
                continue
            try:
                accepted = await self._timed("issue", self.provider.issue(seller, draft, number))
            except ProviderRejected as exc:
                if exc.code in ALREADY_EXISTS:
                    # Ours from an attempt whose answer was lost; resolve by querying next time.
                    raise OutcomeUnknown(
                        f"order number {number} already at the platform", code=exc.code
                    ) from exc
                raise
            self.stats.issued += 1
            parts.append(
                {
                    "part": draft.part,
                    "order_no": number,
                    "serial": accepted.serial,
                    "adopted": False,
                    "draft": draft_to_json(draft),
                }
            )
        return parts

    # --- submitted requests: poll in batches of up to max_query_batch serials ----------------

    async def poll(self, reqs: Sequence[ClaimedRequest]) -> None:
        by_seller: dict[str, list[ClaimedRequest]] = defaultdict(list)
        sellers: dict[str, Seller] = {}
        for req in reqs:
            try:
                seller = await self.sellers.for_source(req.source)
            except CdcInvoiceError as exc:
                await self._retry(req, Fence(req.id, req.attempt), exc)
                continue
            sellers[seller.seller_id] = seller
            by_seller[seller.seller_id].append(req)
        for seller_id, group in by_seller.items():
            await self._poll_group(sellers[seller_id], group)

    async def _poll_group(self, seller: Seller, reqs: Sequence[ClaimedRequest]) -> None:
        batch = self.provider.max_query_batch
        chunk: list[ClaimedRequest] = []
        size = 0
        for req in reqs:
            n = len((req.progress or {}).get("parts", []))
            if chunk and size + n > batch:
                await self._poll_chunk(seller, chunk)
                chunk, size = [], 0
            chunk.append(req)
            size += n
        if chunk:
            await self._poll_chunk(seller, chunk)

    async def _poll_chunk(self, seller: Seller, reqs: Sequence[ClaimedRequest]) -> None:
        serials = [p["serial"] for r in reqs for p in (r.progress or {}).get("parts", [])]
        try:
            results = {
                inv.serial: inv
                for inv in await self._timed(
                    "query", self.provider.query_by_serials(seller, serials)
                )
            }
        except (ProviderError, DatabaseUnavailable) as exc:
            for req in reqs:
                await self._retry(req, Fence(req.id, req.attempt), exc)
            return
        to_record: list[tuple[Fence, list[dict[str, Any]]]] = []
        still: list[Fence] = []
        for req in reqs:
            fence = Fence(req.id, req.attempt)
            parts = (req.progress or {}).get("parts", [])
            states = [results.get(p["serial"]) for p in parts]
            if any(s is None or s.status == "issuing" for s in states):
                still.append(fence)
                continue
            failed = [
                (p, s) for p, s in zip(parts, states, strict=True) if s and s.status != "issued"
            ]
            if self.quota is not None and not failed:  # all issued: the quota is there
                self.quota.on_issued(seller.seller_id)
            if failed and await self._quota_wait(req, fence, seller, failed):
                continue
            if failed:
                p, s = failed[0]
                assert s is not None
                partial = len(failed) < len(parts)
                await self._fail(
                    req,
                    fence,
                    f"the platform did not issue order {req.order_ref!r} part {p['part']} "
                    f"({p['order_no']}): status {s.status_code} {s.fail_cause or ''}".strip(),
                    PARTIAL_ISSUE if partial else ISSUE_FAILED,
                    PARTIAL_HINT if partial else ISSUE_FAILED_HINT,
                )
                continue
            rows = []
            for p, state in zip(parts, states, strict=True):
                assert state is not None
                rows.append(
                    invoice_row(
                        request_id=req.id,
                        seller=seller,
                        draft=draft_from_json(p["draft"]),
                        order_no=p["order_no"],
                        result=state,
                    )
                )
            to_record.append((fence, rows))
        if to_record:
            try:
                done = await self.repo.record_invoices(to_record)
                self.stats.recorded += len(done)
                now = datetime.now(UTC)
                created = {r.id: r.created_at for r in reqs}
                for rid in done:
                    self.observer.recorded("issue", (now - created[rid]).total_seconds())
            except DatabaseUnavailable as exc:
                # Leases expire and the next holder polls and records again: nothing is lost.
                log.warning("recording %d invoices failed: %s", len(to_record), exc)
        try:
            await self.repo.release_poll(still, self.result_poll_seconds)
        except DatabaseUnavailable as exc:
            log.warning("releasing %d polled requests failed: %s", len(still), exc)

    async def _quota_wait(
        self,
        req: ClaimedRequest,
        fence: Fence,
        seller: Seller,
        failed: Sequence[tuple[dict[str, Any], PlatformInvoice]],
    ) -> bool:
        """Peak season (issue 17): parts the platform failed for lack of monthly quota keep
        their serials and numbers. The seller pauses; the request stays submitted and waits;
        a probe (or, once the quota is back, every such part) is re-submitted with reInvoice.
        False: not a quota failure (or no guard), the caller parks it as usual."""
        guard = self.quota
        if guard is None or not all(
            s.status == "failed" and is_quota_failure(s.fail_cause) for _, s in failed
        ):
            return False
        resend = [
            s.serial
            for _, s in failed
            if guard.on_quota_failure(seller.seller_id, s.serial, s.fail_cause or "")
        ]
        if not resend:
            pause = guard.paused.get(seller.seller_id)
            await self._defer(
                req,
                fence,
                SellerPaused(
                    f"the platform failed order {req.order_ref!r} for lack of quota "
                    f"({pause.reason if pause else 'quota'}); waiting for the quota to be raised",
                    seller_id=seller.seller_id,
                    retry_after=guard.retry_after(seller.seller_id) or 1.0,
                    hint="ask the tax bureau / Nuonuo to raise the seller's 发票总额度; the "
                    "invoice is re-submitted by itself (reInvoice, same number)",
                ),
            )
            return True
        try:
            for serial in resend:
                await self._timed("reissue", self.provider.re_invoice(seller, serial))
                guard.forget(serial)
        except ProviderRejected as exc:  # E9613: 20 re-submissions of one serial
            await self._fail(
                req,
                fence,
                f"re-submitting order {req.order_ref!r}: {exc.message}",
                exc.code,
                exc.hint,
            )
            return True
        except (ProviderError, DatabaseUnavailable) as exc:
            await self._retry(req, fence, exc)  # still submitted: the next poll looks again
            return True
        try:
            await self.repo.release_poll([fence], self.result_poll_seconds)
        except DatabaseUnavailable as exc:
            log.warning("releasing request %s failed: %s", req.id, exc)
        return True


def _order_hint(exc: OrderError) -> str | None:
    fixes = [p.fix for p in exc.problems if p.fix]
    return " ; ".join(fixes) if fixes else exc.hint
