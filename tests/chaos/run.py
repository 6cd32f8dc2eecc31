"""The chaos run: real processes, real faults, then an order-by-order comparison.

    own PostgreSQL (initdb/pg_ctl) ◀── shippers (the inventory app, several connections)
          ▲
          │ TCP proxy (cut / half-open)                 sandbox platform (5xx, timeouts,
          │                                              lost responses, garbage; restarted)
    daemon A, daemon B  (SIGKILLed at random, restarted) ─────────────▲

While orders complete at a steady rate the harness SIGKILLs the daemons, restarts PostgreSQL
(fast and immediate), terminates the LISTEN backends, cuts and half-opens the daemons' database
link, and restarts the sandbox. Then every fault stops, the daemons drain, and every completed
order is compared with the local tables and with the platform (through the protocol).

Pass: 0 duplicates at the platform, 0 locally, 0 completed orders without an invoice or an
explained ``failed`` request, and order, local and platform totals equal.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import json
import random
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg

from cdc_invoice import harness
from cdc_invoice.daemon.systemd import WATCHDOG_SECONDS
from cdc_invoice.db import schema
from cdc_invoice.db.queries import sql_file
from cdc_invoice.invoice.model import Seller
from cdc_invoice.providers.nuonuo.adapter import NuonuoProvider
from cdc_invoice.providers.nuonuo.client import Credentials
from cdc_invoice.providers.nuonuo.token import MemoryTokenStore

from .pg import PgCluster
from .proxy import TcpProxy
from .shop import Shipper

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "chaos-results.json"


@dataclass(frozen=True)
class Settings:
    orders: int
    rate: float  # orders completed per second
    connections: int  # shipper connections
    kills_per_daemon: int
    pg_restarts: int  # modes alternate fast / immediate
    listen_kills: int
    cuts: int
    half_opens: int
    sandbox_restarts: int
    drain_timeout: float
    seed: int = 20240601
    fault_5xx: float = 0.05
    fault_timeout: float = 0.02
    fault_lost_response: float = 0.02
    fault_garbage: float = 0.01
    # What the proxy does to connections stalled by a half-open episode when the link comes
    # back (see proxy.py): reset / resume / hold.
    half_open_restore: str = "reset"
    half_open_seconds: tuple[float, float] = (3.0, 8.0)
    cut_seconds: tuple[float, float] = (1.0, 5.0)
    # The daemon's knobs: the run compresses hours into minutes, so the backoff cap does too.
    daemon: tuple[tuple[str, Any], ...] = (
        ("concurrency", 16),
        ("poll_interval", 0.5),
        ("lease_seconds", 10.0),
        ("result_poll_seconds", 0.3),
        ("max_backoff_seconds", 5.0),
        ("shutdown_grace_seconds", 5.0),
    )


SHORT = Settings(
    orders=300,
    rate=15.0,
    connections=4,
    kills_per_daemon=4,
    pg_restarts=3,
    listen_kills=3,
    cuts=1,
    half_opens=1,
    sandbox_restarts=2,
    drain_timeout=100.0,
    half_open_seconds=(3.0, 5.0),
    cut_seconds=(1.0, 3.0),
)
FULL = Settings(
    orders=10_000,
    rate=25.0,
    connections=6,
    kills_per_daemon=30,
    pg_restarts=8,
    listen_kills=12,
    cuts=6,
    half_opens=6,
    sandbox_restarts=5,
    drain_timeout=600.0,
)


# --------------------------------------------------------------------------- processes


class DaemonSlot:
    """One of the two daemons, supervised the way the shipped systemd unit supervises it:
    Type=notify (READY=1 within TimeoutStartSec), WatchdogSec (WATCHDOG=1 pings, else it is
    killed) and Restart=always. The harness plays systemd: it owns $NOTIFY_SOCKET."""

    def __init__(
        self,
        name: str,
        config: Path,
        log: IO[str],
        notify_dir: Path,
        *,
        watchdog_seconds: float = WATCHDOG_SECONDS,
        start_timeout: float = 120.0,
        restart_seconds: float = 1.0,
    ) -> None:
        self.name = name
        self.config = config
        self.log = log
        self.watchdog_seconds = watchdog_seconds
        self.start_timeout = start_timeout
        self.restart_seconds = restart_seconds
        self.proc: harness.Proc | None = None
        self.down = False  # killed on purpose, restart pending
        self.kills = 0
        self.starts = 0
        self.watchdog_kills = 0
        self.start_timeouts = 0
        self.unexpected: list[dict[str, Any]] = []
        self.outputs: list[str] = []
        self.started_at = 0.0
        self.ready_at: float | None = None
        self.last_ping = 0.0
        self._restart_at: float | None = None
        self.notify_path = notify_dir / f"{name}.notify"
        with contextlib.suppress(FileNotFoundError):
            self.notify_path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.notify_path))
        self._sock.settimeout(0.5)
        self._closed = threading.Event()
        threading.Thread(target=self._listen, daemon=True, name=f"notify-{name}").start()

    def _listen(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(
                line.split("=", 1)
                for line in data.decode(errors="replace").splitlines()
                if "=" in line
            )
            now = time.monotonic()
            if fields.get("READY") == "1":
                self.ready_at = now
                self.last_ping = now
            if fields.get("WATCHDOG") == "1":
                self.last_ping = now

    def start(self) -> None:
        env = {
            "NOTIFY_SOCKET": str(self.notify_path),
            "WATCHDOG_USEC": str(int(self.watchdog_seconds * 1_000_000)),
        }
        self.ready_at = None
        self.started_at = time.monotonic()
        self.proc = harness.start_daemon(self.config, name=self.name, env=env, echo=self.log)
        self.starts += 1
        self.down = False
        self._restart_at = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self._keep_output()
        self.kills += 1
        self.down = True

    def supervise(self) -> str | None:
        """What systemd would do now: restart an exited daemon, kill a hung one."""
        if self.down or self.proc is None:
            return None
        now = time.monotonic()
        if self._restart_at is not None:
            if now >= self._restart_at:
                self.start()
                return "restarted"
            return None
        if self.proc.alive():
            if self.ready_at is None and now - self.started_at > self.start_timeout:
                self.start_timeouts += 1
                why = f"no READY=1 within {self.start_timeout:.0f}s"
            elif self.ready_at is not None and now - self.last_ping > self.watchdog_seconds:
                self.watchdog_kills += 1
                why = f"no WATCHDOG=1 for {self.watchdog_seconds:.0f}s"
            else:
                return None
            self.proc.kill()
            self.unexpected.append({"exit_code": "killed: " + why, "tail": self._tail()})
            self._keep_output()
            self._restart_at = now + self.restart_seconds
            return why
        rc = self.proc.popen.returncode
        self.unexpected.append({"exit_code": rc, "tail": self._tail()})
        self._keep_output()
        self._restart_at = now + self.restart_seconds
        return f"exited with {rc}"

    def _tail(self) -> str:
        assert self.proc is not None
        return "".join(self.proc.lines[-12:])

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        rc = self.proc.stop(timeout=30)
        self._keep_output()
        return rc

    def close(self) -> None:
        self._closed.set()
        self._sock.close()

    def _keep_output(self) -> None:
        if self.proc is not None:
            self.outputs.append(self.proc.output())
            self.proc.lines.clear()


class SandboxCtl:
    """The sandbox platform, restarted on the same port, secret and state file."""

    def __init__(self, workdir: Path, settings: Settings, log: IO[str]) -> None:
        self.workdir = workdir
        self.settings = settings
        self.log = log
        self.sb: harness.Sandbox | None = None
        self.port = 0
        self.restarts = 0
        self.faults: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._seed = itertools.count(settings.seed)

    def _flags(self) -> list[str]:
        s = self.settings
        return [
            "--fault-5xx",
            str(s.fault_5xx),
            "--fault-timeout",
            str(s.fault_timeout),
            "--fault-lost-response",
            str(s.fault_lost_response),
            "--fault-garbage",
            str(s.fault_garbage),
            "--seed",
            str(next(self._seed)),
        ]

    def start(self) -> harness.Sandbox:
        secret = self.sb.app_secret if self.sb else None
        for _ in range(50):
            try:
                self.sb = harness.start_sandbox(
                    self.workdir,
                    port=self.port,
                    issue_delay_ms=300,
                    extra=self._flags(),
                    echo=self.log,
                    secret=secret,
                )
                break
            except RuntimeError:
                if not self.port:
                    raise
                time.sleep(0.2)  # the old socket may linger a moment
        else:
            raise RuntimeError(f"the sandbox did not come back on port {self.port}")
        self.port = int(self.sb.url.rsplit(":", 1)[1])
        return self.sb

    def collect(self) -> None:
        """Add the running sandbox's counters (they live in its memory) to the totals."""
        assert self.sb is not None
        try:
            stats = httpx.get(f"{self.sb.url}/_sandbox/stats", timeout=10).json()
        except (httpx.HTTPError, ValueError):
            return
        self.faults.update(stats.get("faults", {}))
        for key in ("gateway_requests", "tokens_issued", "token_requests"):
            self.calls[key] += int(stats.get(key, 0))

    def restart(self, mode: str, down_seconds: float) -> None:
        assert self.sb is not None
        self.collect()
        if mode == "kill":
            self.sb.proc.kill()
        else:
            self.sb.proc.stop()
        time.sleep(down_seconds)
        self.start()
        self.restarts += 1

    def faults_off(self) -> None:
        assert self.sb is not None
        self.collect()  # counters up to here; the new ones will be 0 faults
        self.sb.configure(fault_5xx=0, fault_timeout=0, fault_lost_response=0, fault_garbage=0)
        self._baseline = httpx.get(f"{self.sb.url}/_sandbox/stats", timeout=10).json()

    def stop(self) -> None:
        if self.sb is not None:
            self.sb.proc.stop()


# --------------------------------------------------------------------------- the run


@dataclass
class Result:
    passed: bool
    problems: list[str]
    figures: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        f = self.figures
        lines = [
            f"chaos run: {'PASS' if self.passed else 'FAIL'}",
            f"  orders completed         {f['orders_completed']} "
            f"(shipped by the app: {f['shipper'].get('shipped', 0)}, "
            f"db errors seen by the app: {f['shipper'].get('db_errors', 0)})",
            f"  invoices                 local {f['local_invoices']}, "
            f"platform {f['platform_invoices']}",
            f"  daemon SIGKILLs          {f['kills']} ({f['kills_by_daemon']}), "
            f"restarts {f['daemon_restarts']}, unexpected exits {f['unexpected_exits']} "
            f"(watchdog kills {f['watchdog_kills']}, start timeouts {f['start_timeouts']})",
            f"  PostgreSQL restarts      {f['pg_restarts']}",
            f"  LISTEN terminated        {f['listen_terminated']} backends "
            f"in {f['listen_kills']} rounds",
            f"  link cut / half-open     {f['proxy_cuts']} / {f['proxy_half_opens']} "
            f"(restore: {f['half_open_restore']})",
            f"  sandbox restarts         {f['sandbox_restarts']}",
            f"  faults injected          {f['faults_injected']}",
            f"  adopted after unknown    {f['adopted_parts']} parts, retries {f['retry_events']}",
            f"  duplicates               platform {f['duplicates_platform']}, "
            f"local {f['duplicates_local']}",
            f"  lost                     {f['lost']}",
            f"  failed (explained)       {f['failed_explained']}",
            f"  totals                   orders {f['total_orders']}, "
            f"local {f['total_local']}, platform {f['total_platform']}",
            f"  time to drain            {f['drain_seconds']} s after the last fault",
            f"  wall time                {f['wall_seconds']} s",
        ]
        lines += [f"  problem: {p}" for p in self.problems[:50]]
        return "\n".join(lines)


class ChaosRun:
    def __init__(self, settings: Settings, workdir: Path, *, echo: bool = False) -> None:
        self.s = settings
        self.workdir = workdir
        self.rng = random.Random(settings.seed)
        self.echo = echo
        self.events: list[tuple[float, int, str, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.counts: Counter[str] = Counter()
        self.timeline: list[tuple[float, str]] = []
        self.t0 = 0.0
        self.last_fault = 0.0
        self.keep_pg = False
        # A test of the checker itself may tamper with the results here (see test_chaos_short).
        self.before_verify: Callable[[ChaosRun], None] | None = None

    # -- scheduling --------------------------------------------------------------------------
    def at(self, t: float, name: str, action: Callable[[], None]) -> None:
        heapq.heappush(self.events, (t, next(self._seq), name, action))

    def _spread(self, n: int, start: float, end: float) -> list[float]:
        """n random moments, one in each of n equal slots of [start, end]."""
        if n <= 0:
            return []
        slot = (end - start) / n
        return [start + i * slot + self.rng.uniform(0.1, 0.9) * slot for i in range(n)]

    def plan(self, load_seconds: float) -> None:
        start, end = 2.0, max(load_seconds, 4.0)
        for slot in self.daemons:
            for t in self._spread(self.s.kills_per_daemon, start, end):
                self.at(t, f"kill {slot.name}", functools.partial(self._kill, slot))
        pg_modes = itertools.cycle(["fast", "immediate"])
        for t in self._spread(self.s.pg_restarts, start, end):
            mode = next(pg_modes)
            self.at(t, "pg restart", functools.partial(self._pg_restart, mode))
        for t in self._spread(self.s.listen_kills, start, end):
            self.at(t, "terminate LISTEN", self._terminate_listen)
        episodes = ["cut"] * self.s.cuts + ["half_open"] * self.s.half_opens
        self.rng.shuffle(episodes)
        for t, kind in zip(self._spread(len(episodes), start, end), episodes, strict=True):
            self.at(t, kind, functools.partial(self._link_episode, kind))
        sb_modes = itertools.cycle(["term", "kill"])
        for t in self._spread(self.s.sandbox_restarts, start, end):
            mode = next(sb_modes)
            self.at(t, "sandbox restart", functools.partial(self._sandbox_restart, mode))

    # -- faults ------------------------------------------------------------------------------
    def _fault(self, what: str) -> None:
        now = time.monotonic() - self.t0
        self.timeline.append((round(now, 2), what))
        self.last_fault = time.monotonic()
        if self.echo:
            print(f"[chaos {now:7.2f}s] {what}", flush=True)

    def _kill(self, slot: DaemonSlot, tries: int = 30) -> None:
        now = time.monotonic() - self.t0
        if slot.down or slot.proc is None or not slot.proc.alive():
            if tries > 0:  # not up yet: a moment later
                self.at(now + 1.0, f"kill {slot.name}", lambda: self._kill(slot, tries - 1))
            return
        slot.kill()
        self._fault(f"SIGKILL {slot.name}")
        self.at(
            time.monotonic() - self.t0 + self.rng.uniform(0.2, 2.0),
            f"start {slot.name}",
            slot.start,
        )

    def _pg_restart(self, mode: str) -> None:
        self._fault(f"PostgreSQL stop -m {mode}")
        self.pg.restart(mode, down_seconds=self.rng.uniform(0.5, 2.0))
        self._fault("PostgreSQL started")

    def _terminate_listen(self, tries: int = 10) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                rows = conn.execute(
                    "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend' "
                    "AND (query LIKE 'LISTEN%%' OR query = 'SELECT 1')"
                ).fetchall()
        except psycopg.OperationalError:
            rows = []  # the server is restarting
        if not any(ok for _, ok in rows) and tries > 0:
            # No listener right now (reconnecting after an earlier fault): try again shortly.
            now = time.monotonic() - self.t0
            self.at(now + 1.0, "terminate LISTEN", lambda: self._terminate_listen(tries - 1))
            return
        self.counts["listen_kills"] += 1
        self.counts["listen_terminated"] += sum(1 for _, ok in rows if ok)
        self._fault(f"pg_terminate_backend on {len(rows)} LISTEN connection(s)")

    def _link_episode(self, kind: str) -> None:
        if kind == "cut":
            self.proxy.cut()
            self.counts["proxy_cuts"] += 1
            duration = self.rng.uniform(*self.s.cut_seconds)
        else:
            self.proxy.half_open()
            self.counts["proxy_half_opens"] += 1
            duration = self.rng.uniform(*self.s.half_open_seconds)
        self._fault(f"link {kind} for {duration:.1f}s")
        self.at(time.monotonic() - self.t0 + duration, "link restored", self._restore_link)

    def _restore_link(self) -> None:
        self.proxy.forward(on_restore=self.s.half_open_restore)  # type: ignore[arg-type]
        self._fault("link restored")

    def _sandbox_restart(self, mode: str) -> None:
        self._fault(f"sandbox {'SIGKILL' if mode == 'kill' else 'SIGTERM'}")
        self.sandbox.restart(mode, down_seconds=self.rng.uniform(0.3, 1.5))
        self._fault("sandbox started")

    # -- the run -----------------------------------------------------------------------------
    def execute(self) -> Result:
        wall0 = time.monotonic()
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        # Not under workdir: that may be a private (0700) pytest directory the server's OS user
        # cannot enter. PgCluster makes its own temporary directory.
        self.pg = PgCluster()
        self.pg.init()
        self.pg.start()
        self.dsn = self.pg.create_database("chaos")
        schema.install(self.dsn)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql_file("examples/demo_shop.sql"))
        self.proxy = TcpProxy("127.0.0.1", self.pg.port)
        proxy_port = self.proxy.start()
        daemon_dsn = self.pg.dsn("chaos", port=proxy_port)
        sandbox_log = (logs / "sandbox.log").open("a", encoding="utf-8")
        self.sandbox = SandboxCtl(self.workdir / "sandbox", self.s, sandbox_log)
        sb = self.sandbox.start()
        self.daemons = []
        for name in ("daemon-a", "daemon-b"):
            config = harness.write_config(
                self.workdir / f"{name}.toml",
                dsn=daemon_dsn,
                sandbox=sb,
                daemon=dict(self.s.daemon),
                timeout_seconds=2.0,
            )
            log = (logs / f"{name}.log").open("a", encoding="utf-8")
            self.daemons.append(DaemonSlot(name, config, log, self.workdir))
        try:
            for slot in self.daemons:
                slot.start()
            shipper = Shipper(self.dsn, self.s.orders, self.s.rate, self.s.connections, self.s.seed)
            load_seconds = self.s.orders / self.s.rate
            self.plan(load_seconds)
            self.t0 = time.monotonic()
            shipper.start()
            self._chaos_loop(shipper)
            # Every fault stops here: the link is up, the daemons run, the platform is healthy.
            self.proxy.forward(on_restore="reset")
            for slot in self.daemons:
                if slot.down:
                    slot.start()
            self.sandbox.faults_off()
            self._fault("faults off")
            drained_at = self._drain()
            drain_seconds = None if drained_at is None else round(drained_at - self.last_fault, 1)
            exit_codes = {slot.name: slot.stop() for slot in self.daemons}
            if self.before_verify is not None:
                self.before_verify(self)
            figures, problems = self._verify()
            self.sandbox.collect()
        finally:
            for slot in self.daemons:
                with contextlib.suppress(Exception):
                    slot.stop()
                slot.close()
            self.sandbox.stop()
            self.proxy.close()
            with contextlib.suppress(Exception):
                self.pg.stop("fast")
            if self.keep_pg:
                self.timeline.append((0.0, f"PostgreSQL data kept in {self.pg.root}"))
            else:
                self.pg.destroy()
        problems += [
            f"{name} exited {rc} on SIGTERM after the run"
            for name, rc in exit_codes.items()
            if rc != 0
        ]
        if drain_seconds is None:
            problems.append(f"not drained within {self.s.drain_timeout:.0f}s after the last fault")
        figures.update(
            shipper=dict(shipper.stats),
            kills=sum(s.kills for s in self.daemons),
            kills_by_daemon={s.name: s.kills for s in self.daemons},
            daemon_restarts=sum(s.starts - 1 for s in self.daemons),
            unexpected_exits=sum(len(s.unexpected) for s in self.daemons),
            watchdog_kills=sum(s.watchdog_kills for s in self.daemons),
            start_timeouts=sum(s.start_timeouts for s in self.daemons),
            unexpected_exit_details=[u for s in self.daemons for u in s.unexpected][:10],
            pg_restarts=dict(self.pg.restarts),
            listen_kills=self.counts["listen_kills"],
            listen_terminated=self.counts["listen_terminated"],
            proxy_cuts=self.counts["proxy_cuts"],
            proxy_half_opens=self.counts["proxy_half_opens"],
            proxy=dict(self.proxy.counts),
            half_open_restore=self.s.half_open_restore,
            sandbox_restarts=self.sandbox.restarts,
            faults_injected=dict(self.sandbox.faults),
            platform_calls=dict(self.sandbox.calls),
            drain_seconds=drain_seconds,
            wall_seconds=round(time.monotonic() - wall0, 1),
            daemon_exit_codes=exit_codes,
            daemon_log_errors=self._log_errors(),
            timeline=self.timeline,
        )
        return Result(not problems, problems, figures, _settings_json(self.s))

    def _chaos_loop(self, shipper: Shipper) -> None:
        while self.events or shipper.alive():
            now = time.monotonic() - self.t0
            while self.events and self.events[0][0] <= now:
                _, _, _name, action = heapq.heappop(self.events)
                action()
            for slot in self.daemons:
                what = slot.supervise()
                if what is not None:
                    self._fault(f"{slot.name}: {what}")
            time.sleep(0.05)

    def _drain(self) -> float | None:
        deadline = time.monotonic() + self.s.drain_timeout
        while time.monotonic() < deadline:
            for slot in self.daemons:
                slot.supervise()
            try:
                with psycopg.connect(self.dsn, connect_timeout=5) as conn:
                    row = conn.execute(
                        "SELECT (SELECT count(*) FROM cdc_invoice.request WHERE state IN "
                        "('pending', 'claimed', 'submitted')),"
                        " (SELECT count(*) FROM shop.orders o WHERE o.status = 'shipped' AND NOT "
                        "  EXISTS (SELECT 1 FROM cdc_invoice.request r WHERE r.kind = 'issue' "
                        "  AND r.order_ref = o.order_id::text))"
                    ).fetchone()
            except psycopg.OperationalError:
                row = None
            if row is not None and row[0] == 0:
                return time.monotonic()
            if row is not None and row[1]:
                pass  # orders without a request never drain: _verify reports them
            time.sleep(0.25)
        return None

    # -- comparison --------------------------------------------------------------------------
    def _verify(self) -> tuple[dict[str, Any], list[str]]:
        problems: list[str] = []
        with psycopg.connect(self.dsn) as conn:
            completed = {
                str(r[0]): Decimal(r[1])
                for r in conn.execute(
                    "SELECT o.order_id, coalesce(sum(round(l.quantity * l.unit_price, 2) "
                    "- l.discount), 0) FROM shop.orders o LEFT JOIN shop.order_lines l "
                    "USING (order_id) WHERE o.status = 'shipped' GROUP BY o.order_id"
                )
            }
            requests = {
                r[1]: r
                for r in conn.execute(
                    "SELECT id, order_ref, state, platform_order_no, last_error, error_code "
                    "FROM cdc_invoice.request WHERE kind = 'issue' AND source = 'shop'"
                )
            }
            request_count = Counter(
                r[0]
                for r in conn.execute(
                    "SELECT order_ref FROM cdc_invoice.request WHERE kind = 'issue'"
                )
            )
            local: dict[str, list[tuple[str, str, Decimal]]] = defaultdict(list)
            for order_ref, order_no, number, total in conn.execute(
                "SELECT order_ref, platform_order_no, invoice_number, total_incl_tax "
                "FROM cdc_invoice.invoice WHERE kind = 'blue'"
            ):
                local[order_ref].append((order_no, number, total))
            events = conn.execute(
                "SELECT count(*) FILTER (WHERE event = 'request.retry'),"
                " count(*) FILTER (WHERE event = 'request.retry' AND "
                "  detail->>'unknown_outcome' = 'true'),"
                " (SELECT count(*) FROM cdc_invoice.event e, "
                "  jsonb_array_elements(e.detail->'parts') p WHERE e.event = "
                "  'platform.submitted' AND (p->>'adopted')::boolean)"
                " FROM cdc_invoice.event"
            ).fetchone()
            max_attempt = conn.execute("SELECT max(attempt) FROM cdc_invoice.request").fetchone()
        assert events is not None and max_attempt is not None

        # The platform, as a test helper lists it (to find invoices under numbers we never sent).
        listing = self.sandbox.sb.invoices() if self.sandbox.sb else []
        base_of = {r[3]: r[1] for r in requests.values() if r[3]}
        at_platform: dict[str, list[dict[str, Any]]] = defaultdict(list)
        foreign = []
        for inv in listing:
            if inv.get("kind", "blue") != "blue":
                continue
            order_ref = base_of.get(str(inv["orderNo"])[:-2])
            if order_ref is None:
                foreign.append(inv["orderNo"])
            else:
                at_platform[order_ref].append(inv)
        # ... and through the protocol, by our order numbers, as the daemon would ask.
        wanted = sorted(
            {no for invs in local.values() for no, _, _ in invs}
            | {r[3] + "01" for r in requests.values() if r[3]}
        )
        queried = asyncio.run(_query_platform(self.sandbox.sb, wanted))

        dup_platform = dup_local = lost = failed_explained = 0
        total_orders = total_local = total_platform = Decimal(0)
        for order_ref, expected in completed.items():
            req = requests.get(order_ref)
            mine = local.get(order_ref, [])
            theirs = at_platform.get(order_ref, [])
            if request_count[order_ref] > 1:
                dup_local += request_count[order_ref] - 1
                problems.append(f"order {order_ref}: {request_count[order_ref]} issue requests")
            if len(mine) > 1:
                dup_local += len(mine) - 1
                problems.append(f"order {order_ref}: {len(mine)} local invoices")
            live = [i for i in theirs if i["status"] != "22"]  # 22: the platform failed it
            if len(live) > max(1, len(mine)):
                dup_platform += len(live) - max(1, len(mine))
                problems.append(
                    f"order {order_ref}: {len(live)} invoices at the platform "
                    f"({', '.join(str(i['orderNo']) for i in live)})"
                )
            if req is None:
                lost += 1
                problems.append(f"order {order_ref}: completed but never captured (no request)")
                continue
            state, last_error = req[2], req[4]
            if state == "failed" and last_error:
                failed_explained += 1
                if live:
                    problems.append(f"order {order_ref}: failed locally but issued at the platform")
                continue
            if state != "done" or not mine:
                lost += 1
                problems.append(
                    f"order {order_ref}: request {req[0]} is {state} with "
                    f"{len(mine)} invoice(s) ({last_error or 'no error'})"
                )
                continue
            local_total = sum((t for _, _, t in mine), Decimal(0))
            platform_total = Decimal(0)
            for order_no, number, total in mine:
                found = queried.get(order_no)
                if found is None or found.status != "issued":
                    lost += 1
                    problems.append(
                        f"order {order_ref}: invoice {number} ({order_no}) is "
                        f"{'missing' if found is None else found.status} at the platform"
                    )
                    continue
                if found.number != number or found.total_incl_tax != total:
                    problems.append(
                        f"order {order_ref}: local {number} {total} vs platform "
                        f"{found.number} {found.total_incl_tax}"
                    )
                platform_total += found.total_incl_tax or 0
            if local_total != expected:
                problems.append(
                    f"order {order_ref}: invoiced {local_total}, order total {expected}"
                )
            total_orders += expected
            total_local += local_total
            total_platform += platform_total
        for ref in set(local) - set(completed):
            problems.append(f"invoice for order {ref}, which is not completed")
        if foreign:
            dup_platform += len(foreign)
            problems.append(f"{len(foreign)} platform invoices under unknown order numbers")
        if not total_orders == total_local == total_platform:
            problems.append(
                f"totals differ: orders {total_orders}, local {total_local}, "
                f"platform {total_platform}"
            )
        failed = [
            f"order {r[1]}: {r[5]} {r[4]}"
            for r in requests.values()
            if r[2] == "failed" and r[1] in completed
        ]
        figures = {
            "orders_completed": len(completed),
            "requests": len(requests),
            "local_invoices": sum(len(v) for v in local.values()),
            "platform_invoices": sum(len(v) for v in at_platform.values()) + len(foreign),
            "duplicates_platform": dup_platform,
            "duplicates_local": dup_local,
            "lost": lost,
            "failed_explained": failed_explained,
            "failed_reasons": failed[:20],
            "total_orders": str(total_orders),
            "total_local": str(total_local),
            "total_platform": str(total_platform),
            "retry_events": int(events[0]),
            "unknown_outcome_retries": int(events[1]),
            "adopted_parts": int(events[2]),
            "max_attempt": max_attempt[0],
        }
        return figures, problems

    def _log_errors(self) -> list[str]:
        out = []
        for slot in self.daemons:
            for text in slot.outputs:
                for line in text.splitlines():
                    if " ERROR " in line or "Traceback" in line or "CRITICAL" in line:
                        out.append(f"{slot.name}: {line.strip()}"[:300])
        return out[:40]


async def _query_platform(sb: harness.Sandbox | None, order_nos: list[str]) -> dict[str, Any]:
    assert sb is not None
    seller = Seller(seller_id="main", tax_number=harness.SELLER_TAX_NUMBER, name="x", clerk="张三")
    provider = NuonuoProvider(
        base_url=sb.url,
        token_url=sb.token_url,
        token_store=MemoryTokenStore(),
        credentials={"main": Credentials(app_key=sb.app_key, app_secret=sb.app_secret)},
        timeout=30,
    )
    found: dict[str, Any] = {}
    try:
        for i in range(0, len(order_nos), provider.max_query_batch):
            for inv in await provider.query_by_order_nos(
                seller, order_nos[i : i + provider.max_query_batch]
            ):
                found[inv.order_no] = inv
    finally:
        await provider.aclose()
    return found


def _settings_json(s: Settings) -> dict[str, Any]:
    out = asdict(s)
    out["daemon"] = dict(s.daemon)
    return out


def run(
    settings: Settings,
    *,
    workdir: Path | None = None,
    keep: bool = False,
    echo: bool = False,
    results: Path | None = RESULTS,
    before_verify: Callable[[ChaosRun], None] | None = None,
) -> Result:
    """One chaos run; writes ``results`` (JSON) and returns the result."""
    root = workdir or Path(tempfile.mkdtemp(prefix="cdc-chaos-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    chaos = ChaosRun(settings, root, echo=echo)
    chaos.keep_pg = keep  # the database's data directory, for a look with psql afterwards
    chaos.before_verify = before_verify
    keep = keep or workdir is not None  # logs
    try:
        result = chaos.execute()
    except BaseException:
        print(f"chaos run aborted; logs kept in {root / 'logs'}", flush=True)
        raise
    result.figures["workdir"] = str(root) if keep or not result.passed else None
    if results is not None:
        results.write_text(
            json.dumps(
                {
                    "passed": result.passed,
                    "problems": result.problems,
                    "figures": result.figures,
                    "settings": result.settings,
                },
                indent=2,
                ensure_ascii=False,
                default=str,
            )
            + "\n",
            encoding="utf-8",
        )
    if result.passed and not keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


def short_settings(**changes: Any) -> Settings:
    return replace(SHORT, **changes)
