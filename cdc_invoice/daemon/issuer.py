"""Issue requests: compute the invoices of an order, submit them, poll the results, record them.

Never two invoices for one order:
  * the platform order number (idempotency key) is fixed when the request is claimed, and the
    claim itself commits the attempt, before any platform call;
  * any attempt after the first asks the platform by order number first and adopts what it
    finds (after checking buyer and totals) instead of issuing again;
  * every completion is fenced by (claimed_by, attempt), and invoice numbers and order
    numbers are unique in cdc_invoice.invoice;
  * a split order's parts carry their own order numbers (``progress["parts"]``): a part that
    reached the platform keeps its number for good; only a part the platform refused outright
    gets a new one from retry() (docs/reliability.md, "Lifecycle rules");
  * status 22 (开票失败) is re-issued under the same serial and order number (reInvoice, 开票重试
    doc), at most REISSUE_LIMIT times per attempt; 24 (开票成功签章失败) is an issued invoice
    (发票详情查询 doc): recorded at once with ``seal_failed``, never issued again.
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
from cdc_invoice.daemon.handler import (
    OUTCOME_UNKNOWN,
    OUTCOME_UNKNOWN_HINT,
    Handler,
    SellerCache,
)
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
from cdc_invoice.providers.pace import QuotaGuard

log = logging.getLogger(__name__)

__all__ = ["Issuer", "SellerCache"]  # SellerCache: for callers that built on this module


# source -> (buyers by customer_ref, item tax rows by item_ref)
MappingsBySource = dict[str, tuple[dict[str, Buyer], dict[str, ItemTax]]]

# Our codes for a request the platform accepted and then failed (status 22, reInvoice spent).
# Neither burns an order number: the invoice exists at the platform (failed) under it, and a
# retry re-issues it there (reInvoice) instead of issuing a second one.
ISSUE_FAILED = "ISSUE_FAILED"
ISSUE_FAILED_HINT = (
    "the platform failed the invoice (status 22) and re-issuing it (reInvoice) did not help: fix "
    "the cause shown, then SELECT cdc_invoice.retry(<request id>) re-issues it under the same "
    "order number"
)
PARTIAL_ISSUE = "PARTIAL_ISSUE"
PARTIAL_HINT = (
    "some parts of this split order reached the platform: a retry keeps their order numbers "
    "(and adopts or re-issues them there) and gives a new number only to a part the platform "
    "refused outright; fix the cause shown, then SELECT cdc_invoice.retry(<request id>)"
)
INCOMPLETE = "the platform says issued but gives no invoice number or issue time"

# Platform codes that mean "that order number exists already": resolve by querying, never fail.
ALREADY_EXISTS = {"E9106"}
REINVOICE_LIMIT_CODE = "E9613"  # 开票重试 doc: 20 retries per serial
REISSUE_LIMIT = 3  # reInvoice calls per part per attempt before the request fails
MAX_INCOMPLETE_POLLS = 20  # "issued" answers without number/time before giving up


class _PartsFailed(Exception):
    """A part was refused outright, or failed and could not be re-issued: the request fails,
    and what reached the platform is recorded (progress) so that a retry keeps it."""

    def __init__(self, error: ProviderRejected, parts: list[dict[str, Any]], part: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.parts = parts
        self.part = part


def _reached(parts: Sequence[dict[str, Any]], but: int | None = None) -> list[int]:
    return [int(p["part"]) for p in parts if p.get("state") != "refused" and int(p["part"]) != but]


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
            await self._start(req, fence, mappings)
        except Exception as exc:  # one bad request never takes its batch down, nor loops
            await self._unexpected(req, fence, exc)

    async def _start(
        self, req: ClaimedRequest, fence: Fence, mappings: Awaitable[MappingsBySource] | None
    ) -> None:
        try:
            seller = await self.sellers.for_source(req.source)
            drafts = await self._compute(req, seller, mappings)
            parts = await self._submit(req, seller, drafts)
        except OrderError as exc:
            await self._fail(req, fence, str(exc), exc.code, _order_hint(exc))
            return
        except _PartsFailed as exc:
            others = _reached(exc.parts, but=exc.part)
            code: str | None = exc.error.code
            hint = exc.error.hint
            if others:
                code, hint = PARTIAL_ISSUE, f"{PARTIAL_HINT} (platform: {exc.error.code})"
            elif exc.error.code == REINVOICE_LIMIT_CODE or exc.error.code == ISSUE_FAILED:
                code, hint = ISSUE_FAILED, ISSUE_FAILED_HINT
            await self._fail(
                req,
                fence,
                f"platform rejected order {req.order_ref!r} part {exc.part}: {exc.error.message}"
                + (f" (part(s) {', '.join(map(str, others))} at the platform)" if others else ""),
                code,
                hint,
                progress={"parts": exc.parts},
            )
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
        # A part that reached the platform keeps its order number (retry() renumbers only the
        # parts the platform refused outright): the progress of earlier attempts wins.
        prior = {int(p["part"]): p for p in (req.progress or {}).get("parts", [])}
        numbers = [
            str(prior[d.part]["order_no"])
            if d.part in prior
            else order_no(req.platform_order_no, d.part)
            for d in drafts
        ]
        found: dict[str, PlatformInvoice] = {}
        if req.attempt > 1 or prior:
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

        def failed(exc: ProviderRejected, entry: dict[str, Any]) -> _PartsFailed:
            # What reached the platform, this attempt's and earlier ones' (never forgotten).
            merged = {**prior, **{int(p["part"]): p for p in parts}, entry["part"]: entry}
            return _PartsFailed(exc, [merged[k] for k in sorted(merged)], entry["part"])

        for draft, number in zip(drafts, numbers, strict=True):
            entry: dict[str, Any] = {
                "part": draft.part,
                "order_no": number,
                "draft": draft_to_json(draft),
            }
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
                entry.update(serial=existing.serial, adopted=True, state="accepted")
                if existing.status == "failed":
                    # 22: re-issue it there, same serial and order number (开票重试 doc).
                    try:
                        await self._timed(
                            "reissue", self.provider.reissue(seller, existing.serial, number)
                        )
                    except ProviderRejected as exc:
                        entry["state"] = "failed"
                        raise failed(
                            ProviderRejected(
                                f"the platform failed invoice {existing.serial} "
                                f"({existing.fail_cause or 'no cause given'}) and refused to "
                                f"re-issue it: {exc.message}",
                                code=exc.code,
                                hint=exc.hint,
                            ),
                            entry,
                        ) from exc
                    entry["reissues"] = 1
                self.stats.adopted += 1
                parts.append(entry)
                continue
            try:
                accepted = await self._timed("issue", self.provider.issue(seller, draft, number))
            except ProviderRejected as exc:
                if exc.code in ALREADY_EXISTS:
                    # Ours from an attempt whose answer was lost; resolve by querying next time.
                    raise OutcomeUnknown(
                        f"order number {number} already at the platform", code=exc.code
                    ) from exc
                # Refused outright: nothing exists under this number; only this part may get
                # a new one. The parts accepted before it are recorded with the failure.
                entry.update(state="refused", code=exc.code)
                raise failed(exc, entry) from exc
            self.stats.issued += 1
            entry.update(serial=accepted.serial, adopted=False, state="accepted")
            parts.append(entry)
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
            except Exception as exc:
                await self._unexpected(req, Fence(req.id, req.attempt), exc)
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
        except Exception as exc:
            for req in reqs:
                await self._unexpected(req, Fence(req.id, req.attempt), exc)
            return
        to_record: list[tuple[Fence, list[dict[str, Any]]]] = []
        still: list[Fence] = []
        for req in reqs:
            fence = Fence(req.id, req.attempt)
            try:
                outcome = await self._settle(req, fence, seller, results)
            except (ProviderError, DatabaseUnavailable) as exc:
                await self._retry(req, fence, exc)
                continue
            except Exception as exc:  # this request only: the others of the batch go on
                await self._unexpected(req, fence, exc)
                continue
            if outcome == "still":
                still.append(fence)
            elif isinstance(outcome, list):
                to_record.append((fence, outcome))
        if to_record:
            await self._record(reqs, to_record)
        try:
            await self.repo.release_poll(still, self.result_poll_seconds)
        except DatabaseUnavailable as exc:
            log.warning("releasing %d polled requests failed: %s", len(still), exc)

    async def _record(
        self,
        reqs: Sequence[ClaimedRequest],
        to_record: list[tuple[Fence, list[dict[str, Any]]]],
    ) -> None:
        """Record finished requests in one statement; should that fail for a reason other than
        the database being away, record them one by one, so that the request at fault is
        retried (and capped) on its own and the others are recorded."""
        by_id = {r.id: r for r in reqs}
        handled: set[int] = set()
        try:
            done = await self.repo.record_invoices(to_record)
        except DatabaseUnavailable as exc:
            # Leases expire and the next holder polls and records again: nothing is lost.
            log.warning("recording %d invoices failed: %s", len(to_record), exc)
            return
        except Exception as exc:
            if len(to_record) == 1:
                fence = to_record[0][0]
                await self._unexpected(by_id[fence.id], fence, exc)
                return
            done = []
            for fence, rows in to_record:
                try:
                    done += await self.repo.record_invoices([(fence, rows)])
                except DatabaseUnavailable as db_exc:
                    handled.add(fence.id)
                    log.warning("recording request %s failed: %s", fence.id, db_exc)
                except Exception as one_exc:
                    handled.add(fence.id)
                    await self._unexpected(by_id[fence.id], fence, one_exc)
        for fence, _ in to_record:
            if fence.id not in done and fence.id not in handled:
                # Not recorded and no database outage: its invoice or order number is recorded
                # for another request already (the lease-lost case makes this a fenced no-op).
                # Retried, so capped: it ends failed, never loops.
                await self._retry(
                    by_id[fence.id],
                    fence,
                    ProviderError(
                        "its invoice could not be recorded: its invoice number or order number "
                        "is recorded for another request (see the daemon log)",
                        hint="compare with the platform: cdc-invoice reconcile",
                    ),
                )
        self.stats.recorded += len(done)
        now = datetime.now(UTC)
        for rid in done:
            self.observer.recorded("issue", (now - by_id[rid].created_at).total_seconds())
        for fence, rows in to_record:
            for row in rows:
                if row["seal_failed"] and fence.id in done:
                    # The alert: the invoice exists (recorded) but carries no valid seal.
                    log.error(
                        "invoice %s (order %s, request %s): issued but its seal failed "
                        "(status 24); follow it up with the platform, it is never issued again",
                        row["invoice_number"],
                        row["order_ref"],
                        fence.id,
                    )

    async def _settle(
        self,
        req: ClaimedRequest,
        fence: Fence,
        seller: Seller,
        results: dict[str, PlatformInvoice],
    ) -> str | list[dict[str, Any]] | None:
        """One polled request: "still" (poll again), its invoice rows (record them), or None
        (handled here: failed, re-issued or put back)."""
        progress = dict(req.progress or {})
        parts = [dict(p) for p in progress.get("parts", [])]
        states = [results.get(p["serial"]) for p in parts]
        if any(s is None or s.status == "issuing" for s in states):
            return "still"
        incomplete = [
            p["part"]
            for p, s in zip(parts, states, strict=True)
            if s is not None and s.status == "issued" and (s.number is None or s.issued_at is None)
        ]
        if incomplete:
            # Poll again, bounded: never crash on it, never record an invoice without a number.
            polls = int(progress.get("incomplete_polls", 0)) + 1
            if polls > MAX_INCOMPLETE_POLLS:
                await self._fail(
                    req,
                    fence,
                    f"{INCOMPLETE} for order {req.order_ref!r} part(s) "
                    f"{', '.join(map(str, incomplete))}, {MAX_INCOMPLETE_POLLS} times",
                    OUTCOME_UNKNOWN,
                    OUTCOME_UNKNOWN_HINT,
                )
                return None
            log.warning("request %s: %s (part(s) %s); asking again", req.id, INCOMPLETE, incomplete)
            progress["incomplete_polls"] = polls
            await self.repo.update_progress(fence, progress, self.result_poll_seconds)
            return None
        failed = [(p, s) for p, s in zip(parts, states, strict=True) if s and s.status == "failed"]
        if self.quota is not None and not failed:  # nothing failed: the seller has quota
            self.quota.on_issued(seller.seller_id)
        if failed and await self._quota_wait(req, fence, seller, failed):
            return None  # failed for lack of quota: the seller pauses, nothing is lost
        if failed:
            await self._reissue(req, fence, seller, progress, parts, failed)
            return None
        gone = [(p, s) for p, s in zip(parts, states, strict=True) if s and s.status != "issued"]
        if gone:
            p, s = gone[0]
            await self._fail(
                req,
                fence,
                f"invoice {s.serial} of order {req.order_ref!r} part {p['part']} is "
                f"{s.status} ({s.status_code}) at the platform before we recorded it",
                OUTCOME_UNKNOWN,
                OUTCOME_UNKNOWN_HINT,
            )
            return None
        rows = []
        for p, state in zip(parts, states, strict=True):
            assert state is not None  # checked above: every part has an answer
            rows.append(
                invoice_row(
                    request_id=req.id,
                    seller=seller,
                    draft=draft_from_json(p["draft"]),
                    order_no=p["order_no"],
                    result=state,
                )
            )
        return rows

    async def _reissue(
        self,
        req: ClaimedRequest,
        fence: Fence,
        seller: Seller,
        progress: dict[str, Any],
        parts: list[dict[str, Any]],
        failed: Sequence[tuple[dict[str, Any], PlatformInvoice]],
    ) -> None:
        """Status 22: reInvoice each failed part under its serial and order number (开票重试
        doc) and poll again; after REISSUE_LIMIT calls (or the platform's E9613) fail the request,
        keeping every number: the invoice exists there, failed, and is never issued anew."""
        for p, s in failed:
            done = int(p.get("reissues", 0))
            refusal: ProviderRejected | None = None
            if done < REISSUE_LIMIT:
                try:
                    await self._timed(
                        "reissue", self.provider.reissue(seller, s.serial, p["order_no"])
                    )
                except ProviderRejected as exc:
                    refusal = exc
            if done >= REISSUE_LIMIT or (refusal and refusal.code == REINVOICE_LIMIT_CODE):
                p["state"] = "failed"
                others = [int(q["part"]) for q in parts if q is not p]
                partial = bool(others)
                why = f"; reInvoice: {refusal.message}" if refusal else ""
                await self._fail(
                    req,
                    fence,
                    f"the platform did not issue order {req.order_ref!r} part {p['part']} "
                    f"({p['order_no']}): status {s.status_code} {s.fail_cause or ''}".strip()
                    + f" after {done} re-issue(s){why}",
                    PARTIAL_ISSUE if partial else ISSUE_FAILED,
                    PARTIAL_HINT if partial else ISSUE_FAILED_HINT,
                    progress={**progress, "parts": parts},
                )
                return
            # Accepted, or refused for another reason (e.g. "发票已生成": it was issued in the
            # meantime): poll again; the count bounds it either way.
            p["reissues"] = done + 1
            log.info(
                "request %s part %s: status %s (%s); re-issued under %s (%d/%d)",
                req.id,
                p["part"],
                s.status_code,
                s.fail_cause or "no cause given",
                p["order_no"],
                done + 1,
                REISSUE_LIMIT,
            )
        await self.repo.update_progress(
            fence, {**progress, "parts": parts}, self.result_poll_seconds
        )

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
        if guard is None or not all(s.status == "failed" and s.quota_exhausted for _, s in failed):
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
            numbers = {s.serial: p["order_no"] for p, s in failed}
            for serial in resend:
                await self._timed("reissue", self.provider.reissue(seller, serial, numbers[serial]))
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
