"""The claim loop: wake on NOTIFY or every poll_interval, claim what is due, dispatch it.

Up to ``concurrency`` requests are in flight; each claimed row is held by a lease that a
background task renews while we work on it. On stop, claiming ends, in-flight work gets the
grace period, and whatever is left is handed back (its next holder resolves any unknown outcome).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence

from cdc_invoice.daemon.issuer import Issuer
from cdc_invoice.daemon.lifecycle import KINDS as LIFECYCLE_KINDS
from cdc_invoice.daemon.lifecycle import Lifecycle
from cdc_invoice.db.repository import ClaimedRequest, DatabaseUnavailable, Repository

log = logging.getLogger(__name__)

TIMER_SLOT = 0.01  # seconds: due-row wake-ups are grouped into slots this wide
TIMER_SLACK = 0.002  # and fire this much after the row's run_after


class Worker:
    def __init__(
        self,
        repo: Repository,
        issuer: Issuer,
        wake: asyncio.Event,
        *,
        concurrency: int = 32,
        poll_interval: float = 1.0,
        lease_seconds: float = 60.0,
        on_cycle: Callable[[], Awaitable[None]] | None = None,
        lifecycle: Lifecycle | None = None,
        sellers: Sequence[str] | None = None,
    ) -> None:
        self.repo = repo
        self.issuer = issuer
        self.lifecycle = lifecycle or Lifecycle(
            issuer.repo,
            issuer.provider,
            issuer.sellers,
            result_poll_seconds=issuer.result_poll_seconds,
            max_backoff_seconds=issuer.max_backoff_seconds,
            observer=issuer.observer,
            max_attempts=issuer.max_attempts,
        )
        self.kinds = ("issue", *LIFECYCLE_KINDS)
        # the sellers this daemon can sign for: others' work is left to a daemon that can
        self.sellers = None if sellers is None else tuple(sellers)
        self.wake = wake
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self.on_cycle = on_cycle
        self.stopping = asyncio.Event()
        self.inflight: dict[int, asyncio.Task[None]] = {}  # request id -> its task
        self.tasks: set[asyncio.Task[None]] = set()  # what counts against the concurrency
        self._slot_freed = asyncio.Event()
        self._timers: dict[int, asyncio.TimerHandle] = {}  # wake-ups by TIMER_SLOT bucket
        self.claimed_total = 0

    async def run(self) -> None:
        renewer = asyncio.create_task(self._renew_leases(), name="lease-renewer")
        try:
            await self._loop()
        finally:
            renewer.cancel()
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()

    async def _loop(self) -> None:
        db_delay = 0.2
        while not self.stopping.is_set():
            free = self.concurrency - len(self.tasks)
            claimed: list[ClaimedRequest] = []
            if free > 0:
                self.wake.clear()
                limit = min(free, 200)
                try:
                    # polls come in batches of up to 50 per task (one platform query each)
                    claimed = await self.repo.claim(
                        limit,
                        self.lease_seconds,
                        self.kinds,
                        poll_limit=50 * limit,
                        sellers=self.sellers,
                    )
                    db_delay = 0.2
                except DatabaseUnavailable as exc:
                    log.warning("claim failed: %s; retrying in %.1fs", exc, db_delay)
                    await self._sleep(db_delay)
                    db_delay = min(db_delay * 2, 10.0)
                    continue
                self._dispatch(claimed)
            if self.on_cycle is not None:
                await self.on_cycle()
            if claimed and len(self.tasks) < self.concurrency:
                continue  # there may be more due and there is room: claim again at once
            await self._wait()

    def _dispatch(self, claimed: list[ClaimedRequest]) -> None:
        self.claimed_total += len(claimed)
        issue_polls = [r for r in claimed if r.state == "submitted" and r.kind == "issue"]
        other_polls = [r for r in claimed if r.state == "submitted" and r.kind != "issue"]
        issues = [r for r in claimed if r.state != "submitted" and r.kind == "issue"]
        # one mapping lookup for the whole batch, awaited by each of its requests
        mappings = asyncio.ensure_future(self.issuer.load_mappings(issues)) if issues else None
        if mappings is not None:
            # its error, if any, is each request's to handle; never "exception not retrieved"
            mappings.add_done_callback(lambda f: f.cancelled() or f.exception())
        for req in claimed:
            if req.state == "submitted":
                continue
            if req.kind == "issue":
                self._track([req.id], self.issuer.start(req, mappings))
            else:
                self._track([req.id], self.lifecycle.start(req))
        for i in range(0, len(issue_polls), 50):  # one platform query per 50 serials
            chunk = issue_polls[i : i + 50]
            self._track([r.id for r in chunk], self.issuer.poll(chunk))
        if other_polls:
            self._track([r.id for r in other_polls], self.lifecycle.poll(other_polls))

    def _track(self, ids: list[int], coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        for rid in ids:
            self.inflight[rid] = task

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            for rid in ids:
                if self.inflight.get(rid) is t:
                    del self.inflight[rid]
            self._slot_freed.set()
            # Whatever the task left behind (a result to poll, a slip to check) falls due
            # result_poll_seconds from now: wake then rather than at the next poll interval.
            self._wake_later(self.issuer.result_poll_seconds)
            if not t.cancelled() and t.exception() is not None:
                log.error("request(s) %s: unexpected error", ids, exc_info=t.exception())

        task.add_done_callback(done)

    def _wake_later(self, delay: float) -> None:
        """Set ``wake`` in ``delay`` seconds (a little after, to be sure the row is due), with
        at most one timer per TIMER_SLOT: a busy worker finishes hundreds of tasks a second
        and one claim serves all the rows that fell due in a slot."""
        loop = asyncio.get_running_loop()
        slot = math.ceil((loop.time() + delay + TIMER_SLACK) / TIMER_SLOT)
        if slot not in self._timers:

            def fire() -> None:
                del self._timers[slot]
                self.wake.set()

            self._timers[slot] = loop.call_at(slot * TIMER_SLOT, fire)

    async def _wait(self) -> None:
        """Until NOTIFY or a due row's timer, the poll interval, or stop.

        When fewer than a quarter of the slots are free, wait for that many to free up first
        (or for the poll interval): one claim query then serves a batch of requests, instead of
        one query per freed slot (and a NOTIFY cannot spin the loop while there is no room).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.poll_interval
        batch = max(1, self.concurrency // 4)
        while not self.stopping.is_set() and self.concurrency - len(self.tasks) < batch:
            self._slot_freed.clear()
            if not await self._first(self._slot_freed.wait(), deadline - loop.time()):
                return
        await self._first(self.wake.wait(), deadline - loop.time())

    async def _first(self, what: Awaitable[bool], seconds: float) -> bool:
        """Wait for ``what`` or stop, up to ``seconds``; False on timeout or stop."""
        waits = [asyncio.ensure_future(what), asyncio.ensure_future(self.stopping.wait())]
        try:
            done, _ = await asyncio.wait(
                waits, timeout=max(seconds, 0.0), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waits:
                w.cancel()
        return bool(done) and not self.stopping.is_set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            ids = list(self.inflight)
            if ids:
                try:
                    await self.repo.renew_leases(ids, self.lease_seconds)
                except DatabaseUnavailable as exc:
                    log.warning("lease renewal failed: %s", exc)

    async def drain(self, grace_seconds: float) -> None:
        """Stop claiming; give in-flight work ``grace_seconds``; hand back what is left."""
        self.stopping.set()
        tasks = set(self.inflight.values())
        if tasks:
            log.info("draining %d request(s), up to %.0fs", len(self.inflight), grace_seconds)
            await asyncio.wait(tasks, timeout=grace_seconds)
        left = list(self.inflight)
        for task in set(self.inflight.values()):
            task.cancel()
        if left:
            log.warning("handing back %d unfinished request(s)", len(left))
            try:
                await self.repo.release_unclaimed(left)
            except DatabaseUnavailable as exc:
                log.warning("could not hand back requests (%s); their leases will expire", exc)
