"""What every request handler shares: the platform, the sellers, and the three outcomes.

A claimed request ends in exactly one of: done (recorded), failed (parked with the reason and
the fix), or put back with a backoff (retryable). All three are fenced by (claimed_by, attempt).
Every request ends: retryable errors are capped by ``max_attempts`` (then the request fails with
the last error), and an unexpected exception is caught per request (``_unexpected``), so one bad
request never blocks its batch nor loops forever.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from cdc_invoice.daemon.backoff import retry_delay
from cdc_invoice.daemon.observe import NullObserver, Observer
from cdc_invoice.db.repository import ClaimedRequest, DatabaseUnavailable, Fence, Repository
from cdc_invoice.errors import (
    CdcInvoiceError,
    InvalidOrder,
    OutcomeUnknown,
    Problem,
    ProviderAuthError,
    ProviderError,
    SellerPaused,
)
from cdc_invoice.invoice.model import Seller
from cdc_invoice.providers.base import Provider

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_ATTEMPTS = 30  # [daemon] max_attempts: ~1.5 h of capped backoff at the defaults

# The failure code when the platform may have acted and we do not know: never burns a number.
OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
OUTCOME_UNKNOWN_HINT = (
    "the platform may have acted on this request: run `cdc-invoice reconcile --day <its day>` "
    "(it adopts what the platform holds), then SELECT cdc_invoice.retry(<request id>), which "
    "keeps the order number"
)
INTERNAL = "INTERNAL"
INTERNAL_HINT = (
    "an unexpected error (see the daemon log): report it; SELECT cdc_invoice.retry(<id>)"
)
# Kinds whose calls act on the platform: an unexpected error there leaves the outcome unknown.
MUTATING_KINDS = frozenset({"issue", "reverse", "void"})


class Unexpected(CdcInvoiceError):
    """An unexpected error while handling a request (a bug, or an answer nobody foresaw)."""


class SellerCache:
    """source -> Seller, refreshed every ``ttl`` seconds (DBAs edit the seller table rarely)."""

    def __init__(self, repo: Repository, ttl: float = 30.0) -> None:
        self.repo = repo
        self.ttl = ttl
        self._loaded = 0.0
        self._by_source: dict[str, Seller] = {}

    async def for_source(self, source: str) -> Seller:
        cached = self._by_source.get(source)
        # A seller without clerk fails every order until the DBA sets it: read it again at
        # once, so that the retry right after the UPDATE the error asked for succeeds.
        stale = time.monotonic() - self._loaded > self.ttl
        if stale or cached is None or not cached.clerk:
            await self._reload()
        try:
            return self._by_source[source]
        except KeyError:
            raise InvalidOrder(
                [
                    Problem(
                        f"source {source!r} is not attached or its seller is missing",
                        fix="SELECT * FROM cdc_invoice.source; re-run cdc_invoice.attach(...)",
                    )
                ],
                source=source,
            ) from None

    async def _reload(self) -> None:
        sellers: dict[str, Seller] = {}
        by_source: dict[str, Seller] = {}
        for source, seller_id in (await self.repo.source_sellers()).items():
            if seller_id not in sellers:
                seller = await self.repo.seller(seller_id)
                if seller is None:
                    continue
                sellers[seller_id] = seller
            by_source[source] = sellers[seller_id]
        self._by_source = by_source
        self._loaded = time.monotonic()


@dataclass(slots=True)
class Stats:
    issued: int = 0
    adopted: int = 0
    recorded: int = 0
    failed: int = 0
    retried: int = 0
    deferred: int = 0


class Handler:
    def __init__(
        self,
        repo: Repository,
        provider: Provider,
        sellers: SellerCache,
        *,
        result_poll_seconds: float = 0.5,
        max_backoff_seconds: float = 300.0,
        observer: Observer | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self.repo = repo
        self.provider = provider
        self.sellers = sellers
        self.result_poll_seconds = result_poll_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.max_attempts = max_attempts
        self.stats = Stats()
        self.observer: Observer = observer or NullObserver()

    async def _timed(self, method: str, call: Awaitable[T]) -> T:
        """Await a platform call, reporting its duration and outcome code."""
        t0 = time.perf_counter()
        code = "E0000"
        try:
            return await call
        except ProviderError as exc:
            code = exc.code or type(exc).__name__
            raise
        finally:
            self.observer.platform_call(method, code, time.perf_counter() - t0)

    # --- outcomes ----------------------------------------------------------------------------

    async def _fail(
        self,
        req: ClaimedRequest,
        fence: Fence,
        error: str,
        code: str | None,
        hint: str | None,
        progress: dict[str, Any] | None = None,
    ) -> None:
        self.stats.failed += 1
        self.observer.failed(req.kind, code)
        log.warning("request %s (%s %s) failed: %s", req.id, req.source, req.order_ref, error)
        try:
            await self.repo.mark_failed(
                fence,
                error,
                code,
                hint,
                event={
                    "event": "request.failed",
                    "source": req.source,
                    "order_ref": req.order_ref,
                    "detail": {"error": error, "code": code},
                },
                progress=progress,
            )
        except DatabaseUnavailable as exc:
            log.warning("could not record the failure of request %s: %s", req.id, exc)

    async def _unexpected(self, req: ClaimedRequest, fence: Fence, exc: BaseException) -> None:
        """An exception nobody foresaw, for this request only: logged with its traceback and
        retried like a retryable error (so capped by max_attempts)."""
        log.error(
            "request %s (%s %s %s): unexpected error",
            req.id,
            req.kind,
            req.source,
            req.order_ref,
            exc_info=exc,
        )
        await self._retry(
            req, fence, Unexpected(f"unexpected error: {type(exc).__name__}: {exc}"), internal=True
        )

    async def _retry(
        self,
        req: ClaimedRequest,
        fence: Fence,
        exc: CdcInvoiceError,
        *,
        capped: bool = True,
        internal: bool = False,
    ) -> None:
        """Back off and try again, or, once ``max_attempts`` retries are spent, fail with the
        last error. ``capped=False`` for waiting on another request that is itself capped.
        Database outages are ours, not the request's: they never count toward the cap; nor
        does waiting the platform asked for (throttling, a paused seller: issue 17)."""
        if not exc.counts_as_attempt:
            await self._defer(req, fence, exc)
            return
        if (
            capped
            and not isinstance(exc, DatabaseUnavailable)
            and req.retries + 1 >= self.max_attempts
        ):
            await self._give_up(req, fence, exc, internal=internal)
            return
        self.stats.retried += 1
        delay = retry_delay(req.retries, cap=self.max_backoff_seconds)
        code = getattr(exc, "code", None)
        self.observer.retried(req.kind, code)
        log.info(
            "request %s (%s %s): %s; retry in %.1fs", req.id, req.source, req.order_ref, exc, delay
        )
        try:
            await self.repo.release_retry(
                fence,
                delay,
                str(exc),
                code,
                exc.hint,
                event={
                    "event": "request.retry",
                    "source": req.source,
                    "order_ref": req.order_ref,
                    "detail": {
                        "error": str(exc),
                        "code": code,
                        "delay": round(delay, 2),
                        "unknown_outcome": isinstance(exc, OutcomeUnknown),
                    },
                },
            )
        except DatabaseUnavailable as db_exc:
            log.warning("could not release request %s: %s (its lease will expire)", req.id, db_exc)

    async def _give_up(
        self, req: ClaimedRequest, fence: Fence, exc: CdcInvoiceError, *, internal: bool
    ) -> None:
        code: str | None = getattr(exc, "code", None)
        hint = exc.hint
        # Where the platform may have acted (a lost answer, a submitted request whose result we
        # never got, a crash in the middle of a mutating call) the failure says so, and the fix
        # is reconcile: never a new order number.
        if (
            isinstance(exc, OutcomeUnknown)
            or req.state == "submitted"
            or (internal and req.kind in MUTATING_KINDS)
        ):
            code, hint = OUTCOME_UNKNOWN, OUTCOME_UNKNOWN_HINT
        elif internal:
            code, hint = INTERNAL, INTERNAL_HINT
        await self._fail(
            req,
            fence,
            f"gave up after {req.retries + 1} attempts ([daemon] max_attempts = "
            f"{self.max_attempts}); last error: {exc.message}",
            code or "RETRY_LIMIT",
            hint,
        )

    async def _defer(self, req: ClaimedRequest, fence: Fence, exc: CdcInvoiceError) -> None:
        """The platform asked us to wait (ProviderThrottled, SellerPaused) or refused the
        seller's credentials (ProviderAuthError): put the request back without counting a
        retry, so no cap fails it and its backoff does not grow."""
        self.stats.deferred += 1
        code = getattr(exc, "code", None)
        self.observer.deferred(req.kind, code)
        if isinstance(exc, SellerPaused):
            delay = exc.retry_after
        elif isinstance(exc, ProviderAuthError):
            # the seller's account, until someone fixes it: ask rarely (each call is refused,
            # and token fetches are rationed), and say so loudly
            delay = self.max_backoff_seconds
            log.error(
                "request %s (%s %s): the platform refused seller credentials: %s; it waits "
                "%.0fs and is not failed", req.id, req.source, req.order_ref, exc, delay,
            )  # fmt: skip
        else:  # throttled for the pacer's whole max_throttle_wait: others get a turn
            delay = random.uniform(1.0, 5.0)
        log.debug(
            "request %s (%s %s): %s; waits %.1fs", req.id, req.source, req.order_ref, exc, delay
        )
        try:
            await self.repo.release_deferred(fence, delay, str(exc), code, exc.hint)
        except DatabaseUnavailable as db_exc:
            log.warning("could not release request %s: %s (its lease will expire)", req.id, db_exc)
