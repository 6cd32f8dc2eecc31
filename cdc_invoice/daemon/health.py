"""Health: the daemon's own view (/healthz, cheap, from state it already has) and the active
check behind `cdc-invoice health` (connects, round-trips a NOTIFY, probes the platform).

A probe never fetches a platform token: the platform allows 50 per 30 days, and a health check
run every minute would use them up. It signs a query for a random order number with the token
the daemons share (if any); "not found" (E9500) proves the platform, the app key, the
signature and the token; "token invalid" (070301) still proves the platform answers.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from cdc_invoice.config import Config, read_secret_file
from cdc_invoice.db import schema
from cdc_invoice.db.queries import latest_version, q
from cdc_invoice.db.repository import KEEPALIVES
from cdc_invoice.db.token_store import QUOTA_PER_30_DAYS, fernet_for
from cdc_invoice.errors import CdcInvoiceError, ProviderError, SchemaError
from cdc_invoice.providers.pace import QuotaGuard

if TYPE_CHECKING:
    from cdc_invoice.daemon.metrics import DbSnapshot

OPS = "ops_queries.sql"
OK, WARN, FAIL = "ok", "warn", "fail"
_PLATFORM_CODE = re.compile(r"^E?[0-9]+$")


class LoopMonitor:
    """The worker's ``on_cycle`` hook: when the claim loop last went round, and how often."""

    def __init__(self) -> None:
        self.cycles = 0
        self.last = time.monotonic()
        self._waiters: list[asyncio.Future[None]] = []

    async def on_cycle(self) -> None:
        self.cycles += 1
        self.last = time.monotonic()
        waiters, self._waiters = self._waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    async def next_cycle(self) -> None:
        """Until the loop next completes a round."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        await fut

    def age(self) -> float:
        return time.monotonic() - self.last


def worst(statuses: list[str]) -> str:
    return FAIL if FAIL in statuses else WARN if WARN in statuses else OK


# --- /healthz ---------------------------------------------------------------------------------


class LiveHealth:
    """/healthz from what the daemon knows: 503 only when this process cannot do its job
    (database unreachable, wrong schema, claim loop stuck). A lost LISTEN connection (the poll
    takes over) or a failing platform (retried with backoff) is a warning: restarting the
    daemon would not help."""

    def __init__(
        self,
        *,
        snapshot: DbSnapshot,
        monitor: LoopMonitor,
        listener_connected: Callable[[], bool],
        last_platform_call: Callable[[], tuple[str, str, float] | None],
        poll_interval: Callable[[], float],
        daemon_id: str,
        quota: QuotaGuard | None = None,
    ) -> None:
        self.quota = quota
        self.snapshot = snapshot
        self.monitor = monitor
        self.listener_connected = listener_connected
        self.last_platform_call = last_platform_call
        self.poll_interval = poll_interval
        self.daemon_id = daemon_id

    async def check(self) -> dict[str, Any]:
        snap = await self.snapshot.get()
        checks: dict[str, dict[str, str]] = {}
        if snap.ok:
            checks["database"] = {"status": OK, "detail": "reachable"}
        else:
            checks["database"] = {"status": FAIL, "detail": snap.error}
        if snap.schema_version is None:
            checks["schema"] = {"status": FAIL, "detail": "version unknown"}
        elif snap.schema_version != latest_version():
            checks["schema"] = {
                "status": FAIL,
                "detail": f"installed {snap.schema_version}, needs {latest_version()}",
            }
        else:
            checks["schema"] = {"status": OK, "detail": f"version {snap.schema_version}"}
        checks["listen"] = (
            {"status": OK, "detail": "LISTEN connection up"}
            if self.listener_connected()
            else {"status": WARN, "detail": "LISTEN connection down; polling meanwhile"}
        )
        age = self.monitor.age()
        # The loop waits at most poll_interval between rounds; allow for a slow claim.
        limit = max(10.0, 3 * self.poll_interval())
        checks["claim_loop"] = (
            {"status": OK, "detail": f"went round {age:.1f} s ago"}
            if age < limit
            else {"status": FAIL, "detail": f"stuck: last round {age:.0f} s ago"}
        )
        last = self.last_platform_call()
        if last is None:
            checks["platform"] = {"status": OK, "detail": "no call yet"}
        else:
            method, code, at = last
            ago = time.time() - at
            # A platform code is the platform answering; an error class name means no answer.
            answered = _PLATFORM_CODE.match(code) is not None and not code.startswith("070")
            status = OK if answered else WARN
            checks["platform"] = {
                "status": status,
                "detail": f"last call {method.rsplit('.', 1)[-1]} {ago:.0f} s ago: {code}",
            }
        if self.quota is not None:
            checks["quota"] = quota_check(self.quota)
        return {
            "status": worst([c["status"] for c in checks.values()]),
            "daemon_id": self.daemon_id,
            "checks": checks,
        }


def quota_check(quota: QuotaGuard) -> dict[str, str]:
    """Sellers paused for quota are a warning: their orders wait, restarting would not help."""
    if not quota.paused:
        return {"status": OK, "detail": "no seller paused for quota"}
    detail = "; ".join(
        f"seller {seller} paused for quota since "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(p.since))} UTC ({p.reason}): "
        "its orders wait; raise the seller's 发票总额度 and it resumes by itself"
        for seller, p in sorted(quota.paused.items())
    )
    return {"status": WARN, "detail": detail}


# --- `cdc-invoice health` -------------------------------------------------------------------


@dataclass(slots=True)
class Check:
    name: str
    status: str
    detail: str
    seconds: float | None = None
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_checks(config: Config, listen_timeout: float = 5.0) -> list[Check]:
    """Every check, in order; later checks are skipped (failed) when the database is down."""
    dsn = config.database.dsn
    checks: list[Check] = []
    t0 = time.perf_counter()
    try:
        conn = psycopg.connect(dsn, autocommit=True, **KEEPALIVES)
    except psycopg.OperationalError as exc:
        checks.append(
            Check(
                "database",
                FAIL,
                _first_line(exc),
                time.perf_counter() - t0,
                "check database.dsn and that PostgreSQL runs and accepts this host",
            )
        )
        checks.append(Check("schema", FAIL, "not checked: no database"))
        checks.append(Check("listen", FAIL, "not checked: no database"))
        checks.extend(asyncio.run(_platform_checks(config, None, "no database")))
        return checks
    with conn:
        row = conn.execute(q("health_server", OPS)).fetchone()
        assert row is not None
        version, in_recovery, addr, port, db = row
        where = f"{addr or 'socket'}:{port}/{db}" if port else f"socket/{db}"
        checks.append(
            Check(
                "database",
                FAIL if in_recovery else OK,
                f"PostgreSQL {version} at {where}, {'standby' if in_recovery else 'primary'}",
                time.perf_counter() - t0,
                "the daemon writes: point database.dsn at the primary (with several hosts, "
                "add target_session_attrs=read-write)"
                if in_recovery
                else None,
            )
        )
        t0 = time.perf_counter()
        no_schema: str | None = None
        try:
            installed = schema.check_version(conn)
            checks.append(Check("schema", OK, f"version {installed}", time.perf_counter() - t0))
            checks.append(_clerk_check(conn))
        except SchemaError as exc:
            checks.append(Check("schema", FAIL, exc.message, time.perf_counter() - t0, exc.hint))
            no_schema = "the schema is not usable"
        if no_schema is None:
            checks.append(_installation(conn))
            checks.append(_sellers(conn, config))
        checks.append(_listen_round_trip(conn, dsn, listen_timeout))
        if no_schema is None:
            checks.append(_quota_waiting(conn))
    checks.extend(
        asyncio.run(_platform_checks(config, None if no_schema else dsn, no_schema or ""))
    )
    return checks


def _clerk_check(conn: psycopg.Connection[Any]) -> Check:
    """Every seller needs its issuing account's 开票员 name: there is no default (issue 14/15)."""
    missing = [str(r[0]) for r in conn.execute(q("sellers_without_clerk", OPS)).fetchall()]
    if not missing:
        return Check("seller clerk", OK, "every seller has a clerk (开票人)")
    return Check(
        "seller clerk",
        FAIL,
        f"seller {', '.join(missing)} has no clerk (开票人): its orders fail until it is set "
        "(the platform needs the issuing account's 开票员 name, at most 20 characters)",
        fix="UPDATE cdc_invoice.seller SET clerk = '<开票员姓名>' "
        f"WHERE seller_id = '{missing[0]}';",
    )


def _installation(conn: psycopg.Connection[Any]) -> Check:
    """The daemon refuses to start on a copy of the database (its tag is the original's)."""
    try:
        tag = schema.check_installation(conn)
    except SchemaError as exc:
        return Check("installation", FAIL, exc.message, fix=exc.hint)
    return Check("installation", OK, f"tag {tag}, bound to this database")


def _sellers(conn: psycopg.Connection[Any], config: Config) -> Check:
    """Every seller with attached sources needs credentials: a daemon takes only the work of
    sellers it can sign for, so the others' orders would wait."""
    rows = conn.execute(q("health_source_sellers", OPS)).fetchall()
    missing = [(str(r[0]), list(r[1])) for r in rows if r[0] not in config.provider.credentials]
    if not missing:
        return Check(
            "sellers",
            OK,
            f"credentials for every seller with attached sources ({len(rows)})",
        )
    named = "; ".join(f"seller {s!r} (sources: {', '.join(src)})" for s, src in missing)
    return Check(
        "sellers",
        FAIL,
        f"no credentials in this config for {named}: a daemon with this config leaves "
        "their orders waiting",
        fix="add [provider.credentials."
        + missing[0][0]
        + "] with app_key and app_secret_file (one per seller), or run a daemon that has them",
    )


def _quota_waiting(conn: psycopg.Connection[Any]) -> Check:
    """Requests waiting because a seller's monthly quota is exhausted (issue 17): a warning,
    they resume by themselves once it is raised."""
    t0 = time.perf_counter()
    rows = conn.execute(q("status_waiting", OPS)).fetchall()
    paused = [(str(r[0]), int(r[2])) for r in rows if r[1] == "QUOTA_PAUSED"]
    if not paused:
        return Check("quota", OK, "no orders waiting for a quota", time.perf_counter() - t0)
    return Check(
        "quota",
        WARN,
        "orders waiting because the seller's monthly quota is exhausted: "
        + ", ".join(f"source {s}: {n}" for s, n in paused),
        time.perf_counter() - t0,
        "have the seller's 发票总额度 raised; the daemon resumes by itself (operator guide 6.5)",
    )


def _listen_round_trip(conn: psycopg.Connection[Any], dsn: str, timeout: float) -> Check:
    """NOTIFY a unique payload on a private channel and wait for it on another connection,
    as the daemon's wake-ups travel (a pooler in transaction mode would lose it)."""
    channel = f"cdc_invoice_health_{uuid.uuid4().hex[:12]}"
    payload = uuid.uuid4().hex
    t0 = time.perf_counter()
    try:
        with psycopg.connect(dsn, autocommit=True, **KEEPALIVES) as listener:
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            t0 = time.perf_counter()
            conn.execute(q("health_notify", OPS), {"channel": channel, "payload": payload})
            for note in listener.notifies(timeout=timeout):
                if note.payload == payload:
                    return Check(
                        "listen",
                        OK,
                        "NOTIFY round trip on a private channel",
                        time.perf_counter() - t0,
                    )
    except psycopg.Error as exc:  # e.g. "cannot execute LISTEN during recovery" on a standby
        return Check("listen", FAIL, _first_line(exc), time.perf_counter() - t0)
    return Check(
        "listen",
        FAIL,
        f"NOTIFY not received within {timeout:g} s",
        time.perf_counter() - t0,
        "LISTEN/NOTIFY needs a direct connection (not PgBouncer in transaction mode)",
    )


async def _platform_checks(config: Config, dsn: str | None, no_db: str) -> list[Check]:
    """One probe per configured seller; ``dsn`` None (because of ``no_db``) skips the seller's
    tax number and the shared token, which live in the database."""
    from cdc_invoice.providers.nuonuo import codes, payload
    from cdc_invoice.providers.nuonuo.adapter import QUERY
    from cdc_invoice.providers.nuonuo.client import Credentials, NuonuoClient, dumps

    p = config.provider
    if not p.credentials:
        return [
            Check(
                "platform",
                FAIL,
                "no [provider.credentials.<seller_id>] in the config",
                fix="add one per row of cdc_invoice.seller, with app_key and app_secret_file",
            )
        ]
    out: list[Check] = []
    client = NuonuoClient(
        base_url=p.base_url,
        token_url=p.token_url or None,
        timeout=p.timeout_seconds,
        verify=p.ca_file or True,
    )
    try:
        for seller_id, cred in sorted(p.credentials.items()):
            name = f"platform {seller_id}"
            try:
                secret = cred.load_secret(seller_id)
                token_key = (
                    read_secret_file(p.token_key_file, "provider.token_key_file")
                    if p.token_key_file
                    else secret
                )
            except CdcInvoiceError as exc:
                out.append(Check(name, FAIL, exc.message, fix=exc.hint))
                continue
            tax_number, token, token_check = _seller_and_token(
                dsn, seller_id, cred.app_key, token_key
            )
            if token_check is not None:
                out.append(token_check)
            if tax_number is None:
                out.append(
                    Check(
                        name,
                        FAIL,
                        f"seller {seller_id!r} is in the config but not in cdc_invoice.seller"
                        if dsn
                        else f"not checked: {no_db} (the seller's tax number is in it)",
                        fix=f"INSERT INTO cdc_invoice.seller (seller_id, tax_number, name) "
                        f"VALUES ('{seller_id}', …)"
                        if dsn
                        else None,
                    )
                )
                continue
            t0 = time.perf_counter()
            try:
                answer = await client.call(
                    method=QUERY,
                    content=dumps(payload.query_content(order_nos=[_probe_order_no()])),
                    credentials=Credentials(app_key=cred.app_key, app_secret=secret),
                    access_token=token or "",
                    user_tax=tax_number,
                    mutating=False,
                )
            except ProviderError as exc:
                out.append(Check(name, FAIL, exc.message, time.perf_counter() - t0, exc.hint))
                continue
            took = time.perf_counter() - t0
            if answer.code == codes.SUCCESS or answer.code in codes.NOT_FOUND:
                out.append(
                    Check(
                        name, OK, f"{p.base_url}: query answered {answer.code} (token valid)", took
                    )
                )
            elif answer.code in codes.TOKEN_INVALID:
                out.append(
                    Check(
                        name,
                        OK,
                        f"{p.base_url}: reachable, answered {answer.code} (no valid shared token "
                        "yet; the daemon fetches one when it needs it)",
                        took,
                    )
                )
            elif codes.is_auth_code(answer.code) or answer.code in codes.SIGNATURE_INVALID:
                out.append(
                    Check(
                        name,
                        FAIL,
                        f"{p.base_url}: {answer.code} {answer.describe}".rstrip(),
                        took,
                        codes.HINTS.get(answer.code, "check app_key and the app secret"),
                    )
                )
            else:
                out.append(
                    Check(name, OK, f"{p.base_url}: reachable, answered {answer.code}", took)
                )
    finally:
        await client.aclose()
    return out


def _seller_and_token(
    dsn: str | None, seller_id: str, app_key: str, key_material: str
) -> tuple[str | None, str | None, Check | None]:
    """(seller tax number, usable shared token, a check on the token quota)."""
    if dsn is None:
        return None, None, None
    from cryptography.fernet import InvalidToken

    with psycopg.connect(dsn, autocommit=True, **KEEPALIVES) as conn:
        row = conn.execute(q("health_seller", OPS), {"seller_id": seller_id}).fetchone()
        tax_number = str(row[0]) if row else None
        tok = conn.execute(q("health_token", OPS), {"app_key": app_key}).fetchone()
        quota = conn.execute(q("status_tokens", OPS)).fetchall()
    fetched = next((int(r[4]) for r in quota if r[0] == app_key), 0)
    token: str | None = None
    expiry = "no shared token yet"
    if tok is not None:
        expires_at: datetime = tok[1]
        if expires_at > datetime.now(UTC):
            try:
                token = fernet_for(key_material).decrypt(bytes(tok[0])).decode()
                expiry = f"token valid until {expires_at:%Y-%m-%d %H:%M %Z}"
            except InvalidToken:
                expiry = "the shared token was encrypted with another key"
        else:
            expiry = f"token expired {expires_at:%Y-%m-%d %H:%M %Z}"
    left = QUOTA_PER_30_DAYS - fetched
    status = FAIL if left <= 0 else WARN if left <= 5 else OK
    check = Check(
        f"token {seller_id}",
        status,
        f"{fetched}/{QUOTA_PER_30_DAYS} token fetches in 30 days; {expiry}",
        fix=None
        if status == OK
        else "the platform refuses more fetches (070306): see the operator guide's runbook "
        "'token quota exhausted'",
    )
    return tax_number, token, check


def _probe_order_no() -> str:
    # Our own prefix plus randomness: never one of the daemon's order numbers (CI + tag + id).
    return "HEALTH" + secrets.token_hex(7).upper()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
