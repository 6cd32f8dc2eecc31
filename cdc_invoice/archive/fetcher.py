"""The daemon's archiver: fetches recorded invoices' files into the archive, off the hot path.

Its own task in the daemon (runner.py), its own queue (cdc_invoice.invoice_file_fetch, filled by
a trigger when an invoice is recorded) and its own database connection, so issuing never waits
for it. A file that cannot be fetched, or is not what it claims (an HTML error page for a
PDF), is tried again after a backoff and listed as failed after ``max_attempts``; the invoice is
never touched. An XML that differs from the record is kept as fetched, with an alert (event
``archive.mismatch``, metric, view report_archive_mismatches) — never a silent overwrite.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import urllib.request
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl
from psycopg.types.json import Jsonb

from cdc_invoice.archive import check, keep
from cdc_invoice.daemon.backoff import retry_delay
from cdc_invoice.db.queries import q
from cdc_invoice.db.repository import SCHEMA_GONE, DatabaseUnavailable, Repository, schema_gone

log = logging.getLogger(__name__)

QUERIES = "archive_queries.sql"
# An invoice's files are kilobytes; a platform answering with more is not sending an invoice.
MAX_FILE_BYTES = 20 * 1024 * 1024


class FetchFailed(Exception):
    """The file could not be fetched this time (HTTP status, network, size)."""


@dataclass(slots=True)
class Stats:
    stored: int = 0
    mismatched: int = 0
    retried: int = 0
    failed: int = 0


class Archiver:
    def __init__(
        self,
        repo: Repository,
        *,
        directory: str = "",
        max_attempts: int = 12,
        retry_seconds: float = 5.0,
        max_backoff_seconds: float = 300.0,
        timeout: float = 30.0,
        verify: bool | str = True,
        batch: int = 8,
        idle_seconds: float = 1.0,
    ) -> None:
        self.repo = repo
        self.directory = directory
        self.max_attempts = max_attempts
        self.retry_seconds = retry_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.timeout = timeout
        self.verify = verify
        self.batch = batch
        self.idle_seconds = idle_seconds
        # A claim must outlive the download it protects (connect + read, plus the write).
        self.lease_seconds = 3 * timeout + 30
        self.stats = Stats()
        self._db = asyncio.Semaphore(1)  # one connection at a time (runner gives it a pool of 1)

    async def run_forever(self) -> None:
        """``run``, restarted after a bug: the archive must never stop the daemon issuing."""
        while True:
            try:
                await self.run()
            except Exception as exc:
                if schema_gone(exc):  # uninstalled under us: the worker stops the daemon
                    log.warning("archive: %s", SCHEMA_GONE)
                else:
                    log.exception("archive: the archiver failed; restarting it in 10 s")
                await asyncio.sleep(10)

    async def run(self) -> None:
        ssl_arg: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=self.verify)
            if isinstance(self.verify, str)
            else self.verify
        )
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=self.batch, ssl=ssl_arg),
            # not trust_env: it also sends ~/.netrc credentials; proxies are taken per URL below
            trust_env=False,
        ) as http:
            while True:
                try:
                    jobs = await self._claim()
                except DatabaseUnavailable as exc:
                    log.warning("archive: cannot claim file fetches: %s", exc)
                    jobs = []
                if not jobs:
                    await asyncio.sleep(self.idle_seconds)
                    continue
                await asyncio.gather(*(self._one(http, job) for job in jobs))

    async def _claim(self) -> list[dict[str, Any]]:
        async with self._db, self.repo.connection() as conn:
            cur = await conn.execute(
                q("archive_claim", QUERIES),
                {
                    "limit": self.batch,
                    "daemon_id": self.repo.daemon_id,
                    "lease_seconds": self.lease_seconds,
                    "max_attempts": self.max_attempts,
                },
            )
            cols = [c.name for c in cur.description or ()]
            return [dict(zip(cols, row, strict=True)) for row in await cur.fetchall()]

    async def _one(self, http: aiohttp.ClientSession, job: dict[str, Any]) -> None:
        try:
            body = await _download(http, job["source_url"])
            problems = check.check(job["kind"], body, _recorded(job))
            if self.directory:
                kept = await asyncio.to_thread(
                    keep.in_directory,
                    self.directory,
                    job["month"],
                    job["invoice_number"],
                    job["kind"],
                    body,
                )
            else:
                kept = keep.in_database(body)
        except (FetchFailed, check.BadFile, OSError) as exc:
            await self._later(job, f"{type(exc).__name__}: {exc}")
            return
        try:
            await self._store(job, kept, problems)
        except Superseded:
            # Our lease ran out and another archiver took the fetch over: it finishes it.
            log.info("archive: the %s of %s was taken over", job["kind"], job["invoice_number"])
        except DatabaseUnavailable as exc:
            # The lease runs out and the fetch comes back: nothing is lost, nothing doubled.
            log.warning(
                "archive: cannot store %s of %s: %s", job["kind"], job["invoice_number"], exc
            )

    async def _store(self, job: dict[str, Any], kept: keep.Kept, problems: list[str]) -> None:
        fence = {
            "invoice_id": job["invoice_id"],
            "kind": job["kind"],
            "daemon_id": self.repo.daemon_id,
            "attempts": job["attempts"],
        }
        async with self._db, self.repo.connection() as conn, conn.transaction():
            done = await (await conn.execute(q("archive_done", QUERIES), fence)).fetchone()
            if done is None:
                raise Superseded  # rolls back: nothing of ours is written
            row = await (
                await conn.execute(
                    q("archive_store", QUERIES),
                    {
                        **fence,
                        "bytes": kept.bytes,
                        "path": kept.path,
                        "size": kept.size,
                        "sha256": kept.sha256,
                        "source_url": job["source_url"],
                        "check_result": "mismatch" if problems else "ok",
                        "check_detail": "; ".join(problems) or None,
                    },
                )
            ).fetchone()
            event = "archive.mismatch" if problems else "archive.stored"
            await conn.execute(
                q("insert_event"),
                {
                    "actor": self.repo.daemon_id,
                    "request_id": None,
                    "invoice_id": job["invoice_id"],
                    "source": job["source"],
                    "order_ref": job["order_ref"],
                    "event": event if row is not None else "archive.already_kept",
                    "detail": Jsonb(
                        {
                            "kind": job["kind"],
                            "invoice_number": job["invoice_number"],
                            "sha256": kept.sha256,
                            "size": kept.size,
                            "path": kept.path,
                            "problems": problems,
                        }
                    ),
                },
            )
        if row is None:
            return
        self.stats.stored += 1
        if problems:
            self.stats.mismatched += 1
            log.error(
                "archive: the %s of invoice %s differs from the record: %s",
                job["kind"],
                job["invoice_number"],
                "; ".join(problems),
            )

    async def _later(self, job: dict[str, Any], error: str) -> None:
        delay = retry_delay(
            job["attempts"] - 1, base=self.retry_seconds, cap=self.max_backoff_seconds
        )
        params = {
            "invoice_id": job["invoice_id"],
            "kind": job["kind"],
            "daemon_id": self.repo.daemon_id,
            "attempts": job["attempts"],
            "max_attempts": self.max_attempts,
            "delay_seconds": delay,
            "error": error[:500],
        }
        try:
            async with self._db, self.repo.connection() as conn, conn.transaction():
                row = await (await conn.execute(q("archive_later", QUERIES), params)).fetchone()
                if row is not None and row[0] == "failed":
                    await conn.execute(
                        q("insert_event"),
                        {
                            "actor": self.repo.daemon_id,
                            "request_id": None,
                            "invoice_id": job["invoice_id"],
                            "source": job["source"],
                            "order_ref": job["order_ref"],
                            "event": "archive.failed",
                            "detail": Jsonb(
                                {"kind": job["kind"], "attempts": job["attempts"], "error": error}
                            ),
                        },
                    )
        except DatabaseUnavailable as exc:
            log.warning("archive: cannot reschedule a fetch: %s", exc)
            return
        if row is None:
            return
        if row[0] == "failed":
            self.stats.failed += 1
            log.warning(
                "archive: giving up on the %s of invoice %s after %d attempts: %s "
                "(listed in cdc_invoice.report_archive_open; `cdc-invoice archive retry`)",
                job["kind"],
                job["invoice_number"],
                job["attempts"],
                error,
            )
        else:
            self.stats.retried += 1
            log.info(
                "archive: the %s of invoice %s again in %.0f s: %s",
                job["kind"],
                job["invoice_number"],
                delay,
                error,
            )


class Superseded(Exception):
    """The fetch's claim is no longer ours (lease expired, taken over)."""


def _recorded(job: dict[str, Any]) -> check.Recorded:
    return check.Recorded(
        invoice_number=job["invoice_number"],
        issue_date=job["issue_date"],
        seller_tax_number=job["seller_tax_number"],
        buyer_tax_number=job["buyer_tax_number"],
        total_excl_tax=job["total_excl_tax"],
        total_tax=job["total_tax"],
        total_incl_tax=job["total_incl_tax"],
        kind=job["invoice_kind"],
        original_invoice_number=job["original_invoice_number"],
    )


async def _download(http: aiohttp.ClientSession, url: str) -> bytes:
    try:
        async with http.get(url, proxy=_env_proxy(url)) as resp:
            if resp.status != 200:
                raise FetchFailed(f"HTTP {resp.status} from {url}")
            if (resp.content_length or 0) > MAX_FILE_BYTES:
                raise FetchFailed(f"{url} is {resp.content_length} bytes, over {MAX_FILE_BYTES}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                body += chunk
                if len(body) > MAX_FILE_BYTES:
                    raise FetchFailed(f"{url} is over {MAX_FILE_BYTES} bytes")
            return bytes(body)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise FetchFailed(f"{type(exc).__name__} fetching {url}: {exc}") from exc


def _env_proxy(url: str) -> str | None:
    """HTTP(S)_PROXY / ALL_PROXY for ``url`` unless NO_PROXY names its host, as the provider's
    transport reads them."""
    env = urllib.request.getproxies_environment()
    parsed = yarl.URL(url)
    proxy = env.get(parsed.scheme) or env.get("all")
    if proxy and parsed.host and urllib.request.proxy_bypass(parsed.host):
        return None
    return proxy
