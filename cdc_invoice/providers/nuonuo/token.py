"""Access tokens: one per app, shared by every daemon, fetched as rarely as possible.

The platform allows only 50 token requests per app per 30 days (070306 after that), so a token is
fetched lazily, kept until shortly before it expires, and replaced only when the platform says it
is invalid. A ``TokenStore`` shares tokens across processes (the daemon's is PostgreSQL-backed,
so all daemons use one token); ``MemoryTokenStore`` serves tests and single processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

# Refresh this long before the platform's expiry, so that a token never expires in flight.
REFRESH_MARGIN_SECONDS: Final = 300.0

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class CachedToken:
    """An access token and when it expires.

    ``expires_at`` is unix seconds by the wall clock, because stores share it across hosts.
    """

    access_token: str = field(repr=False)
    expires_at: float

    def usable(self, now: float, margin: float = REFRESH_MARGIN_SECONDS) -> bool:
        return now < self.expires_at - margin

    def __repr__(self) -> str:  # the token is a credential: never print it
        return f"CachedToken(access_token=<hidden>, expires_at={self.expires_at!r})"


class TokenStore(Protocol):
    """Where tokens live between calls and processes."""

    async def get(self, app_key: str) -> CachedToken | None:
        """The stored token for ``app_key``, fresh or not, or None."""
        ...

    async def fetch_and_store(
        self,
        app_key: str,
        fetch: Callable[[], Awaitable[CachedToken]],
        *,
        stale_token: str | None,
    ) -> CachedToken:
        """Return a usable token, calling ``fetch`` only if nobody else has a usable one.

        Implementations serialise this per ``app_key`` (across processes for a shared store) and,
        while holding that lock, return the stored token without fetching if it is usable and is
        not ``stale_token`` (the one the caller saw rejected) — another process got there first.
        Otherwise they call ``fetch()``, store its result and return it. ``fetch`` raises
        ``ProviderError`` subclasses; the store lets them propagate and keeps the old row.
        """
        ...


class MemoryTokenStore:
    """A process-local TokenStore (tests, single daemon)."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self._clock = clock
        self._tokens: dict[str, CachedToken] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0  # how many times ``fetch`` ran: tests assert on the token quota

    async def get(self, app_key: str) -> CachedToken | None:
        return self._tokens.get(app_key)

    async def fetch_and_store(
        self,
        app_key: str,
        fetch: Callable[[], Awaitable[CachedToken]],
        *,
        stale_token: str | None,
    ) -> CachedToken:
        async with self._locks.setdefault(app_key, asyncio.Lock()):
            current = self._tokens.get(app_key)
            if (
                current is not None
                and current.access_token != stale_token
                and current.usable(self._clock())
            ):
                return current
            self.fetches += 1
            token = await fetch()
            self._tokens[app_key] = token
            return token


class TokenCache:
    """The adapter's view of tokens: a process-local memo in front of the shared store.

    The memo keeps the hot path free of store round-trips (the store may be a database); the
    per-app asyncio lock makes the many coroutines of one process wait for a single fetch instead
    of queueing on the store's lock one by one.
    """

    def __init__(self, store: TokenStore, *, clock: Clock = time.time) -> None:
        self._store = store
        self._clock = clock
        self._memo: dict[str, CachedToken] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, app_key: str, fetch: Callable[[], Awaitable[CachedToken]]) -> CachedToken:
        token = self._memo.get(app_key)
        if token is not None and token.usable(self._clock()):
            return token
        async with self._locks.setdefault(app_key, asyncio.Lock()):
            token = self._memo.get(app_key)
            if token is not None and token.usable(self._clock()):
                return token  # another coroutine refreshed it while we waited
            stored = await self._store.get(app_key)
            if stored is not None and stored.usable(self._clock()):
                token = stored
            else:
                stale = stored.access_token if stored is not None else None
                token = await self._store.fetch_and_store(app_key, fetch, stale_token=stale)
            self._memo[app_key] = token
            return token

    async def replace(
        self, app_key: str, rejected: str, fetch: Callable[[], Awaitable[CachedToken]]
    ) -> CachedToken:
        """The platform rejected ``rejected``: get a different token (fetching at most once)."""
        async with self._locks.setdefault(app_key, asyncio.Lock()):
            token = self._memo.get(app_key)
            if token is not None and token.access_token != rejected and token.usable(self._clock()):
                return token  # a concurrent call already replaced it
            token = await self._store.fetch_and_store(app_key, fetch, stale_token=rejected)
            self._memo[app_key] = token
            return token
