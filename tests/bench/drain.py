"""End-to-end: the daemon and the peers drain the same orders through the same sandbox.

A cell: reset the rig, start the worker process(es), let them settle, then queue every order
in one transaction (the daemon: one UPDATE shipping all orders, so the capture trigger queues
them; a peer: one batch enqueue of the same documents), and time from that commit until the
last invoice row is recorded (max(recorded_at), the database's clock). CPU is the worker
processes' own (psutil), and the sandbox's separately.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from cdc_invoice import harness
from tests.bench import peers
from tests.bench.env import (
    ROOT,
    CpuMeter,
    Server,
    add_orders,
    log,
    peak_rss_mb,
    postgres_pids,
    shop_database,
    wait_until,
)
from tests.bench.job import PEER_SCHEMA

ISSUE_DELAY_MS = 200
RESULT_POLL_S = 0.2  # the daemon's result_poll_seconds and the peers' poll interval

# Earlier invoices, kept across cells (source 'hist'): a company at peak season has a full
# invoice table, and an empty one misleads the planner. After TRUNCATE + ANALYZE the tables
# are "empty" in the statistics, so the foreign-key checks of invoice lines (a cached plan
# per connection) scanned the whole growing invoice table for the rest of a drain: 60 µs per
# line in a 2,000-order drain, until autovacuum's next ANALYZE.
HISTORY = 20_000
HISTORY_SQL = """
INSERT INTO cdc_invoice.request (source, order_ref, kind, state, platform_order_no, done_at)
SELECT 'hist', g::text, 'issue', 'done', 'HIST' || lpad(g::text, 16, '0'), now()
  FROM generate_series(1, %(n)s) g;
INSERT INTO cdc_invoice.invoice (request_id, source, order_ref, seller_id, invoice_number, kind,
       platform_serial, platform_order_no, issued_at, buyer_name, total_excl_tax, total_tax,
       total_incl_tax)
SELECT r.id, 'hist', r.order_ref, 'main', '9' || lpad(r.order_ref, 19, '0'), 'blue',
       'S' || r.order_ref, r.platform_order_no, now() - interval '1 day', 'Buyer ' || r.order_ref,
       500.00, 65.00, 565.00
  FROM cdc_invoice.request r WHERE r.source = 'hist';
INSERT INTO cdc_invoice.invoice_line (invoice_id, line_no, item_ref, item_name, tax_code,
       quantity, unit_price, amount_excl_tax, tax_rate, tax, amount_incl_tax)
SELECT i.id, n, 'P-' || n, 'Item ' || n, '1090511030000000000', 2, 56.50, 100.00, 0.13, 13.00,
       113.00
  FROM cdc_invoice.invoice i CROSS JOIN generate_series(1, 5) n WHERE i.source = 'hist';
INSERT INTO peer.invoice OVERRIDING SYSTEM VALUE
SELECT * FROM cdc_invoice.invoice WHERE source = 'hist';
UPDATE peer.invoice SET request_id = -request_id;  -- the peers' request ids are their job ids
INSERT INTO peer.invoice_line SELECT l.* FROM cdc_invoice.invoice_line l
  JOIN cdc_invoice.invoice i ON i.id = l.invoice_id WHERE i.source = 'hist';
SELECT setval(pg_get_serial_sequence('peer.invoice', 'id'), (SELECT max(id) FROM peer.invoice));
"""
# Everything but the history.
# Records refuse DELETE and TRUNCATE (sql/records.sql): the rig, as superuser, turns the
# guard triggers off for its reset, which turns the ON DELETE CASCADE off too: lines first.
RESET_SQL = """
SET session_replication_role = replica;
DELETE FROM cdc_invoice.invoice_line l USING cdc_invoice.invoice i
 WHERE i.id = l.invoice_id AND i.source <> 'hist';
DELETE FROM cdc_invoice.invoice WHERE source <> 'hist';
DELETE FROM cdc_invoice.request WHERE source <> 'hist';
TRUNCATE cdc_invoice.event;
DELETE FROM peer.invoice WHERE source <> 'hist';
RESET session_replication_role;
"""


@dataclass
class Cell:
    who: str
    n: int
    seconds: float
    cpu_s: float
    sandbox_cpu_s: float
    rss_mb: float = 0.0
    failed: int = 0
    first_s: float = 0.0  # commit -> the first invoice recorded
    pg_cpu_s: float = 0.0  # the PostgreSQL server's processes (machine cluster only)

    @property
    def pg_ms_per_invoice(self) -> float:
        return self.pg_cpu_s * 1000 / self.n

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    @property
    def cpu_ms_per_invoice(self) -> float:
        return self.cpu_s * 1000 / self.n

    @property
    def sandbox_ms_per_invoice(self) -> float:
        return self.sandbox_cpu_s * 1000 / self.n


class Rig:
    """One database (shop + peer tables + both peers' schemas) and one sandbox."""

    def __init__(self, server: Server, name: str, orders: int, workdir: Path) -> None:
        self.server = server
        self.name = name
        self.orders = orders
        self.workdir = workdir
        log(f"{name}: database with {orders} orders, sandbox (issue delay {ISSUE_DELAY_MS} ms)")
        self.dsn = shop_database(server, name, orders)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(PEER_SCHEMA)
            for stmt in filter(str.strip, HISTORY_SQL.split(";\n")):
                conn.execute(stmt, {"n": HISTORY} if "%(n)s" in stmt else None)
        self.installed: set[str] = set()
        self.sandbox = harness.start_sandbox(workdir / "sandbox", issue_delay_ms=ISSUE_DELAY_MS)
        self._documents: list[tuple[int, str, str]] | None = None
        self.runs = 0

    def close(self) -> None:
        self.sandbox.proc.stop()
        self.server.drop_db(self.name)

    def grow(self, orders: int) -> None:
        if orders > self.orders:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                add_orders(conn, orders - self.orders)
            self.orders = orders
            self._documents = None

    def configure(self, latency_ms: float) -> None:
        self.sandbox.configure(latency_ms=latency_ms, issue_delay_ms=ISSUE_DELAY_MS)

    def reset(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE shop.orders SET status = 'new', shipped_at = NULL WHERE status <> 'new'"
            )
            conn.execute(RESET_SQL)
            for peer in self.installed:
                conn.execute(peers.RESET_SQL[peer])
            conn.execute("DELETE FROM cdc_invoice.daemon")
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")

    def documents(self, n: int) -> list[tuple[int, str, str]]:
        """(job id, order_ref, document JSON) of the first n orders, as the trigger takes it."""
        if self._documents is None or len(self._documents) < n:
            with psycopg.connect(self.dsn) as conn:
                rows = conn.execute(
                    "SELECT o.order_id, o.order_id::text, coalesce((SELECT jsonb_agg(to_jsonb(d))"
                    " FROM invoicing.shop_document d WHERE d.order_ref = o.order_id),"
                    " '[]')::text FROM shop.orders o ORDER BY o.order_id LIMIT %s",
                    (self.orders,),
                ).fetchall()
            self._documents = [(int(a), str(b), str(c)) for a, b, c in rows]
        return self._documents[:n]

    def ship(self, n: int) -> float:
        """Complete n orders in one transaction (the trigger queues them); the commit time."""
        with psycopg.connect(self.dsn) as conn:
            conn.execute(
                "UPDATE shop.orders SET status = 'shipped', shipped_at = now() "
                "WHERE order_id IN (SELECT order_id FROM shop.orders WHERE status = 'new' "
                "ORDER BY order_id LIMIT %s)",
                (n,),
            )
            conn.commit()
            return time.time()

    def count(self, table: str) -> tuple[int, float | None, int, int, float | None]:
        """(invoices, epoch of the last recorded_at, failed requests, progress, first)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*), extract(epoch FROM max(recorded_at)),"
                f" extract(epoch FROM min(recorded_at)) FROM {table} WHERE source <> 'hist'"
            ).fetchone()
            other = conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'failed'),"
                " count(*) FILTER (WHERE state <> 'pending') + count(*) FILTER (WHERE state"
                " = 'submitted') FROM cdc_invoice.request WHERE source <> 'hist'"
            ).fetchone()
        assert row is not None and other is not None
        last = float(row[1]) if row[1] is not None else None
        first = float(row[2]) if row[2] is not None else None
        return int(row[0]), last, int(other[0]), int(row[0]) + int(other[1]), first

    def wait_invoices(
        self, table: str, n: int, t0: float, procs: list[harness.Proc], stall: float = 45.0
    ) -> tuple[float, int, float]:
        """Until n invoices (or failures); gives up when nothing moves for ``stall`` seconds
        or a worker died. (seconds from t0 to the last recorded_at, failed requests,
        seconds from t0 to the first recorded_at)"""
        seen = (-1, time.monotonic())
        while True:
            got, last, failed, progress, first = self.count(table)
            if got + failed >= n:
                assert last is not None and first is not None
                return last - t0, failed, first - t0
            if progress != seen[0]:
                seen = (progress, time.monotonic())
            dead = [p for p in procs if not p.alive()]
            if dead or time.monotonic() - seen[1] > stall:
                why = f"{dead[0].name} exited" if dead else f"no progress for {stall:.0f}s"
                tail = "\n".join(p.output()[-3000:] for p in procs)
                raise RuntimeError(f"{table}: {got}/{n} invoices, {why}:\n{tail}")
            time.sleep(0.1)

    # ------------------------------------------------------------------------- daemon

    def start_daemons(
        self, count: int, concurrency: int, env: dict[str, str] | None = None
    ) -> list[harness.Proc]:
        self.runs += 1
        procs = []
        for i in range(count):
            cfg = harness.write_config(
                self.workdir / f"daemon{i}.toml",
                dsn=self.dsn,
                sandbox=self.sandbox,
                daemon={
                    "concurrency": concurrency,
                    "daemon_id": f"bench-{self.runs}-{i}",
                    "result_poll_seconds": RESULT_POLL_S,
                    "lease_seconds": 30.0,
                    # The bench measures issuing; RESET_SQL deletes invoices, which archived
                    # files (append-only) would refuse.
                    "archive_files": False,
                },
                timeout_seconds=10.0,
            )
            procs.append(harness.start_daemon(cfg, name=f"daemon{i}", env=env))
        for p in procs:
            if not wait_until(lambda p=p: "ready:" in p.output() or not p.alive(), 20, 0.05):
                log("daemon did not log 'ready:' in 20 s; going on")
            if not p.alive():
                raise RuntimeError(f"daemon exited:\n{p.output()}")
        time.sleep(0.5)
        return procs

    def daemon_drain(
        self,
        n: int,
        latency_ms: float,
        *,
        concurrency: int,
        daemons: int = 1,
        env: dict[str, str] | None = None,
    ) -> Cell:
        self.grow(n)
        self.reset()
        self.configure(latency_ms)
        procs = self.start_daemons(daemons, concurrency, env)
        try:
            cpu = CpuMeter([p.popen.pid for p in procs]).start()
            sb = CpuMeter([self.sandbox.proc.popen.pid]).start()
            pg = CpuMeter(postgres_pids()).start()
            t0 = self.ship(n)
            seconds, failed, first = self.wait_invoices("cdc_invoice.invoice", n, t0, procs)
            cpu_s, _ = cpu.stop()
            sb_s, _ = sb.stop()
            pg_s, _ = pg.stop()
            rss = max(peak_rss_mb(p.popen.pid) for p in procs)
        finally:
            for p in procs:
                p.stop()
        return Cell(f"daemon x{daemons}", n, seconds, cpu_s, sb_s, rss, failed, first, pg_s)

    # ------------------------------------------------------------------------- peers

    def peer_drain(self, peer: str, n: int, latency_ms: float, *, concurrency: int) -> Cell:
        self.grow(n)
        if peer not in self.installed:
            asyncio.run(peers.install(peer, self.dsn))
            self.installed.add(peer)
        self.reset()
        self.configure(latency_ms)
        jobs = self.documents(n)
        tag = secrets.token_hex(2).upper()
        args = [
            sys.executable,
            "-m",
            "tests.bench.peers",
            peer,
            "--dsn",
            self.dsn,
            "--base-url",
            self.sandbox.url,
            "--app-key",
            self.sandbox.app_key,
            "--secret-file",
            str(self.sandbox.secret_file),
            "--tag",
            tag,
            "--concurrency",
            str(concurrency),
            "--poll",
            str(RESULT_POLL_S),
        ]
        env = {"PYTHONPATH": os.environ.get("PYTHONPATH", "") + os.pathsep + str(ROOT)}
        proc = harness.spawn(args, peer, env=env)
        try:
            if not wait_until(lambda: "READY" in proc.output() or not proc.alive(), 30, 0.05):
                raise RuntimeError(f"{peer} did not start:\n{proc.output()}")
            if not proc.alive():
                raise RuntimeError(f"{peer} exited:\n{proc.output()}")
            time.sleep(1.0)  # let it LISTEN and settle, as the daemon does
            cpu = CpuMeter([proc.popen.pid]).start()
            sb = CpuMeter([self.sandbox.proc.popen.pid]).start()
            asyncio.run(peers.enqueue(peer, self.dsn, jobs))
            t0 = time.time()
            pg = CpuMeter(postgres_pids()).start()
            seconds, _, first = self.wait_invoices("peer.invoice", n, t0, [proc])
            cpu_s, _ = cpu.stop()
            sb_s, _ = sb.stop()
            pg_s, _ = pg.stop()
            rss = peak_rss_mb(proc.popen.pid)
        finally:
            proc.stop(10)
        return Cell(f"{peer} c={concurrency}", n, seconds, cpu_s, sb_s, rss, 0, first, pg_s)

    # ------------------------------------------------------------------------- latency

    def latency(
        self, rate: float, seconds: float, latency_ms: float, *, concurrency: int
    ) -> dict[str, Any]:
        """Ship orders one per transaction at a steady rate; commit -> invoice recorded."""
        n = int(rate * seconds)
        self.grow(n)
        self.reset()
        self.configure(latency_ms)
        procs = self.start_daemons(1, concurrency)
        committed: dict[str, float] = {}
        try:
            with psycopg.connect(self.dsn) as conn:
                ids = [
                    int(r[0])
                    for r in conn.execute(
                        "SELECT order_id FROM shop.orders WHERE status = 'new' "
                        "ORDER BY order_id LIMIT %s",
                        (n,),
                    ).fetchall()
                ]
                conn.commit()
                start = time.monotonic()
                behind = 0
                for i, oid in enumerate(ids):
                    due = start + i / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    elif delay < -0.05:
                        behind += 1
                    conn.execute(
                        "UPDATE shop.orders SET status = 'shipped', shipped_at = now() "
                        "WHERE order_id = %s",
                        (oid,),
                    )
                    conn.commit()
                    committed[str(oid)] = time.time()
                achieved = n / (time.monotonic() - start)
            self.wait_invoices("cdc_invoice.invoice", n, time.time(), procs)
            with psycopg.connect(self.dsn) as conn:
                rows = conn.execute(
                    "SELECT order_ref, extract(epoch FROM min(recorded_at)) "
                    "FROM cdc_invoice.invoice WHERE source <> 'hist' GROUP BY order_ref"
                ).fetchall()
        finally:
            for p in procs:
                p.stop()
        lat = sorted((float(r[1]) - committed[str(r[0])]) * 1000 for r in rows)
        return {"n": n, "achieved_rate": achieved, "late_commits": behind, "latencies_ms": lat}

    # ------------------------------------------------------------------------- the sandbox alone

    def sandbox_alone(self, n: int, concurrency: int, latency_ms: float = 0) -> dict[str, Any]:
        """The platform's capacity without PostgreSQL or a daemon: two load-generator
        processes issue and query invoices straight at the sandbox."""
        self.configure(latency_ms)
        args = [
            sys.executable,
            "-m",
            "tests.bench.loadgen",
            "--base-url",
            self.sandbox.url,
            "--app-key",
            self.sandbox.app_key,
            "--secret-file",
            str(self.sandbox.secret_file),
            "--n",
            str(n // 2),
            "--concurrency",
            str(concurrency),
        ]
        env = {"PYTHONPATH": os.environ.get("PYTHONPATH", "") + os.pathsep + str(ROOT)}
        # warm the token once (stored in the sandbox; each generator fetches its own)
        httpx.get(f"{self.sandbox.url}/_sandbox/health", timeout=5).raise_for_status()
        sb = CpuMeter([self.sandbox.proc.popen.pid]).start()
        gens = [
            harness.spawn([*args, "--tag", secrets.token_hex(2).upper()], f"gen{i}", env=env)
            for i in range(2)
        ]
        for g in gens:
            g.popen.wait(300)
        sb_s, wall = sb.stop()
        outs = [g.output() for g in gens]
        issued = 0
        for o in outs:
            for line in o.splitlines():
                if line.startswith("DONE "):
                    issued += int(line.split()[1])
        if issued < n // 2 * 2:
            raise RuntimeError("load generator failed:\n" + "\n".join(o[-2000:] for o in outs))
        return {
            "invoices": issued,
            "seconds": wall,
            "invoices_per_s": issued / wall,
            "sandbox_cpu_ms_per_invoice": sb_s * 1000 / issued,
            "sandbox_cpu_util": sb_s / wall,
            "capacity_estimate_per_s": issued / sb_s if sb_s else None,
        }
