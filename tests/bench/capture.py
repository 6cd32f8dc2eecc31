"""Capture overhead: pgbench on the demo shop, each transaction completing one order.

The shop (sql/examples/demo_shop.sql) is our inventory-like schema: orders with five lines, a
document view joining orders, lines and products. Every pgbench transaction ships a fresh
order (`nextval` picks the next 'new' one), so with the plugin attached every transaction fires
the capture trigger: the worst case for the inventory. The same database is measured with the
source detached ("none") and attached ("plugin"), interleaved, at 1, 8 and 32 clients.

`profile()` then finds where the trigger's time goes: a procedure ships orders in a loop,
committing each one (no client round trips, no pgbench CPU), with variants of the generated
capture function that each remove or change one part. Its numbers are server CPU per commit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from tests.bench.env import Server, log, shop_database, summary

DB = "cdc_bench_capture"
SHIP = (
    "UPDATE shop.orders o SET status = 'shipped', shipped_at = now()\n"
    "  FROM (SELECT nextval('shop.bench_seq') AS id) n WHERE o.order_id = n.id;\n"
)
ISSUE_WHEN = "NEW.status = 'shipped' AND NEW.status IS DISTINCT FROM OLD.status"
ATTACH = (
    "SELECT cdc_invoice.attach('shop', 'shop.orders', 'order_id', %s, "
    "'invoicing.shop_document', 'main', $$NEW.status = 'returned' AND OLD.status = 'shipped'$$)"
)
LOOP_PROC = """
CREATE OR REPLACE PROCEDURE public.bench_ship(n int, INOUT us_per_commit float8 DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE v bigint; t0 timestamptz := clock_timestamp();
BEGIN
    FOR i IN 1..n LOOP
        v := nextval('shop.bench_seq');
        UPDATE shop.orders SET status = 'shipped', shipped_at = now() WHERE order_id = v;
        COMMIT;
    END LOOP;
    us_per_commit := extract(epoch FROM clock_timestamp() - t0) * 1e6 / n;
END $$;
"""

# Records refuse TRUNCATE (sql/records.sql): the rig, as superuser, turns the guard triggers
# off for its own reset (as drain.py does).
RESET_QUEUE = (
    "SET session_replication_role = replica; "
    "TRUNCATE cdc_invoice.request, cdc_invoice.event CASCADE; "
    "RESET session_replication_role"
)


# The realistic shipping transaction (issue 17): what an inventory system does when it ships an
# order of five lines: the status update, one stock decrement per line over a catalogue of
# REALISTIC_SKUS stock keeping units, one stock-movement row per line. Each order line is bound
# to a random SKU of the catalogue (shop.order_lines.stock_sku, bench database only), so the
# decrements spread over the catalogue as a real warehouse's do.
REALISTIC_SKUS = 20_000
REALISTIC_SETUP = (
    "CREATE TABLE shop.stock (sku text PRIMARY KEY, on_hand integer NOT NULL, "
    "updated_at timestamptz NOT NULL DEFAULT now())",
    f"INSERT INTO shop.stock (sku, on_hand) SELECT 'SKU-' || lpad(g::text, 6, '0'), 1000000 "
    f"FROM generate_series(1, {REALISTIC_SKUS}) g",
    "CREATE TABLE shop.stock_movement (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "sku text NOT NULL REFERENCES shop.stock, order_id bigint NOT NULL, quantity numeric NOT NULL, "
    "moved_at timestamptz NOT NULL DEFAULT now())",
    "CREATE INDEX stock_movement_sku_idx ON shop.stock_movement (sku, moved_at)",
    "ALTER TABLE shop.order_lines ADD COLUMN stock_sku text",
    f"UPDATE shop.order_lines SET stock_sku = 'SKU-' || lpad((1 + floor(random() * "
    f"{REALISTIC_SKUS}))::int::text, 6, '0')",
    "VACUUM ANALYZE shop.order_lines, shop.stock",
)
REALISTIC_SHIP = (
    "BEGIN;\n"
    "UPDATE shop.orders o SET status = 'shipped', shipped_at = now()\n"
    "  FROM (SELECT nextval('shop.bench_seq') AS id) n WHERE o.order_id = n.id\n"
    "  RETURNING o.order_id AS oid \\gset\n"
    + "".join(
        "UPDATE shop.stock s SET on_hand = s.on_hand - l.quantity, updated_at = now()\n"
        f"  FROM shop.order_lines l WHERE l.order_id = :oid AND l.line_no = {n} "
        "AND s.sku = l.stock_sku;\n"
        "INSERT INTO shop.stock_movement (sku, order_id, quantity)\n"
        f"  SELECT stock_sku, order_id, -quantity FROM shop.order_lines "
        f"WHERE order_id = :oid AND line_no = {n};\n"
        for n in range(1, 6)
    )
    + "END;\n"
)


class Capture:
    def __init__(self, server: Server, pool: int) -> None:
        self.server = server
        self.pool = pool
        log(f"capture: creating {DB} with {pool} orders of {5} lines")
        self.dsn = shop_database(server, DB, pool)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("CREATE SEQUENCE shop.bench_seq")
            conn.execute(LOOP_PROC)
            row = conn.execute(
                "SELECT capture_fn FROM cdc_invoice.source WHERE source = 'shop'"
            ).fetchone()
            assert row is not None
            self.capture_fn = str(row[0])
            self.original_body = self._body(conn)
        self.attached = True
        self.table = "cdc_invoice.request"  # where the capture function writes
        self.script = Path(tempfile.mkdtemp(prefix="cdcbench-")) / "ship.sql"
        self.script.write_text(SHIP, encoding="utf-8")
        self.realistic_script = self.script.parent / "ship-realistic.sql"
        self.realistic_ready = False

    def prepare_realistic(self) -> None:
        """The stock catalogue and movement table of the realistic transaction (once)."""
        if self.realistic_ready:
            return
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for stmt in REALISTIC_SETUP:
                conn.execute(stmt)
        self.realistic_script.write_text(REALISTIC_SHIP, encoding="utf-8")
        self.realistic_ready = True

    def _body(self, conn: psycopg.Connection[Any]) -> str:
        row = conn.execute(
            "SELECT pg_get_functiondef(%s::regprocedure)", (f"cdc_invoice.{self.capture_fn}()",)
        ).fetchone()
        assert row is not None
        return str(row[0])

    # ----------------------------------------------------------------------- state

    def reset(self) -> None:
        """Every order 'new' again, the queue empty, a checkpoint: each run starts alike."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE shop.orders SET status = 'new', shipped_at = NULL WHERE status <> 'new'"
            )
            conn.execute(RESET_QUEUE)
            if conn.execute("SELECT to_regclass('cdc_invoice.inbox')").fetchone() != (None,):
                conn.execute("TRUNCATE cdc_invoice.inbox")
            conn.execute("SELECT setval('shop.bench_seq', 1, false)")
            if self.realistic_ready:
                conn.execute("TRUNCATE shop.stock_movement")
                conn.execute("UPDATE shop.stock SET on_hand = 1000000 WHERE on_hand <> 1000000")
                conn.execute("VACUUM shop.stock")
            conn.execute("VACUUM shop.orders")
            conn.execute("CHECKPOINT")

    def set_plugin(self, on: bool) -> None:
        if on == self.attached:
            return
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            if on:
                conn.execute(ATTACH, (ISSUE_WHEN,))
            else:
                conn.execute("SELECT cdc_invoice.detach('shop')")
        self.attached = on

    def set_sync_commit(self, on: bool) -> None:
        with psycopg.connect(self.server.admin_dsn, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {DB} SET synchronous_commit = {'on' if on else 'off'}")

    def used(self) -> int:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM shop.orders WHERE status = 'shipped'"
            ).fetchone()
            return int(row[0]) if row else 0

    # ----------------------------------------------------------------------- pgbench

    def pgbench(self, clients: int, seconds: float, *, realistic: bool = False) -> float:
        self.reset()
        script = self.realistic_script if realistic else self.script
        exe = str(Path(self.server.bindir) / "pgbench")
        info = psycopg.conninfo.conninfo_to_dict(self.dsn)
        args = [
            exe,
            "-n",
            "-M",
            "prepared",
            "-f",
            str(script),
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(int(seconds)),
            "-h",
            str(info.get("host", "127.0.0.1")),
            "-p",
            str(info.get("port", 5432)),
            "-U",
            str(info.get("user", "postgres")),
            str(info["dbname"]),
        ]
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
        if not m:
            raise RuntimeError(f"pgbench output not understood:\n{out}")
        used = self.used()
        if used >= self.pool:
            raise RuntimeError(f"pgbench ran out of orders ({used}/{self.pool}): raise the pool")
        with psycopg.connect(self.dsn) as conn:
            if self.attached:
                row = conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()
                if row is None or int(row[0]) != used:
                    raise RuntimeError(f"captured {row} requests for {used} shipped orders")
            if realistic:  # the transaction really did its stock work: 5 movements per order
                row = conn.execute("SELECT count(*) FROM shop.stock_movement").fetchone()
                if row is None or int(row[0]) != 5 * used:
                    raise RuntimeError(f"{row} stock movements for {used} shipped orders")
        return float(m.group(1))

    # ----------------------------------------------------------------------- profile

    def loop_us(self, n: int) -> float:
        """Server time per committed order shipment (one session, no client)."""
        self.reset()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            # CPU, not the disk: no fsync wait at each of the n commits.
            conn.execute("SET synchronous_commit = off")
            row = conn.execute("CALL public.bench_ship(%s)", (n,)).fetchone()
            assert row is not None
            return float(row[0])

    def apply_variant(self, name: str) -> None:
        """Replace the generated capture function by a variant (on this scratch database)."""
        self.set_plugin(True)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(RESET_QUEUE)
            for stmt in VARIANTS[name].setup:
                conn.execute(stmt)
            if name == "generated":
                conn.execute(self.original_body)
            else:
                conn.execute(capture_function(self.capture_fn, VARIANTS[name]))
        self.table = VARIANTS[name].table

    def restore(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(RESET_QUEUE)
            for stmt in RESTORE:
                conn.execute(stmt)
            conn.execute(self.original_body)
        self.table = "cdc_invoice.request"

    def close(self) -> None:
        self.server.drop_db(DB)
        shutil.rmtree(self.script.parent, ignore_errors=True)


# --------------------------------------------------------------------------- variants

SNAP_JSONB = (
    "coalesce((SELECT jsonb_agg(to_jsonb(d)) FROM invoicing.shop_document d "
    "WHERE d.order_ref = NEW.order_id), '[]'::jsonb)"
)
SNAP_JSON = (
    "coalesce((SELECT json_agg(d) FROM invoicing.shop_document d "
    "WHERE d.order_ref = NEW.order_id), '[]'::json)"
)
SNAP_QUALIFIED_JSON = (
    "coalesce((SELECT pg_catalog.json_agg(d) FROM invoicing.shop_document d "
    "WHERE d.order_ref OPERATOR(pg_catalog.=) NEW.order_id), '[]'::pg_catalog.json)"
)
NOTIFY = (
    "IF pg_try_advisory_xact_lock(1128547145, 1) THEN\n"
    "    PERFORM pg_notify('cdc_invoice', '');\n"
    "END IF;"
)
NOTIFY_QUALIFIED = (
    "IF pg_catalog.pg_try_advisory_xact_lock(1128547145, 1) THEN\n"
    "    PERFORM pg_catalog.pg_notify('cdc_invoice', '');\n"
    "END IF;"
)
PINNED = "SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
JSON_COLUMN = "ALTER TABLE cdc_invoice.request ALTER COLUMN document TYPE json USING document::json"
JSONB_COLUMN = (
    "ALTER TABLE cdc_invoice.request ALTER COLUMN document TYPE jsonb USING document::jsonb"
)
RESTORE = [JSON_COLUMN]


INBOX = (
    "CREATE TABLE IF NOT EXISTS cdc_invoice.inbox (id bigint GENERATED ALWAYS AS IDENTITY "
    "PRIMARY KEY, source text NOT NULL, order_ref text NOT NULL, kind text NOT NULL, "
    "document json, params jsonb, created_at timestamptz NOT NULL DEFAULT now())"
)


class Variant:
    def __init__(
        self,
        doc: str,
        *,
        table: str = "cdc_invoice.request",
        snapshot: str = SNAP_JSON,
        notify: str = NOTIFY,
        config: str = PINNED,
        conflict: str = "ON CONFLICT (source, order_ref, kind, seq) DO NOTHING",
        setup: tuple[str, ...] = (JSON_COLUMN,),
        qualified: bool = False,
    ) -> None:
        self.doc = doc
        self.table = table
        self.snapshot = snapshot
        self.notify = notify
        self.config = config
        self.conflict = conflict
        self.setup = setup
        self.qualified = qualified


def capture_function(fn: str, v: Variant) -> str:
    """The body attach() generates for the shop (issue branch), with the variant's changes."""
    key = "NEW.order_id::pg_catalog.text" if v.qualified else "NEW.order_id::text"
    eq = "OPERATOR(pg_catalog.=)" if v.qualified else "="
    build = "pg_catalog.jsonb_build_object" if v.qualified else "jsonb_build_object"
    return f"""
CREATE OR REPLACE FUNCTION cdc_invoice.{fn}() RETURNS trigger
LANGUAGE plpgsql {v.config} AS $body$
BEGIN
    IF TG_ARGV[0] {eq} 'issue' THEN
        INSERT INTO {v.table} (source, order_ref, kind, document)
        VALUES ('shop', {key}, 'issue', {v.snapshot})
        {v.conflict};
    ELSE
        INSERT INTO {v.table} (source, order_ref, kind, params)
        VALUES ('shop', {key}, 'reverse',
                {build}('reason', 'sales_return', 'full', true, 'trigger', true))
        {v.conflict};
    END IF;
    {v.notify}
    RETURN NULL;
END
$body$"""


VARIANTS: dict[str, Variant] = {
    "generated": Variant(
        "the function attach() generates, as it is (the reads inside an exception block, so "
        "that a failing snapshot never fails the inventory's COMMIT)"
    ),
    "current": Variant(
        "the generated function without the exception block: the base of the variants below"
    ),
    "jsonb_snapshot": Variant(
        "document column jsonb, snapshot jsonb_agg(to_jsonb(d)): schema version 2's capture, "
        "which 0003_document_json.sql replaced",
        snapshot=SNAP_JSONB,
        setup=(JSONB_COLUMN,),
    ),
    "no_snapshot": Variant("document NULL (what the snapshot costs)", snapshot="NULL"),
    "no_notify": Variant("without the advisory lock + NOTIFY", notify=""),
    "snapshot_not_stored": Variant(
        "snapshot computed (PERFORM) but document NULL: computing vs storing it",
        snapshot="NULL",
        notify="PERFORM " + SNAP_JSON + ";\n" + NOTIFY,
    ),
    "no_set_search_path": Variant(
        "SECURITY DEFINER without SET search_path (unsafe as is: cost only)",
        config="SECURITY DEFINER",
    ),
    "invoker": Variant("neither SECURITY DEFINER nor SET (cost only)", config=""),
    "no_on_conflict": Variant("plain INSERT (cost only)", conflict=""),
    "proposed": Variant(
        "schema-qualified body without SET search_path (what a pinned search_path costs)",
        snapshot=SNAP_QUALIFIED_JSON,
        notify=NOTIFY_QUALIFIED,
        config="SECURITY DEFINER",
        qualified=True,
    ),
    "inbox": Variant(
        "proposed + capture into a lean inbox table (PK only, no ON CONFLICT); the daemon "
        "would move rows into request in batches",
        table="cdc_invoice.inbox",
        snapshot=SNAP_QUALIFIED_JSON,
        notify=NOTIFY_QUALIFIED,
        config="SECURITY DEFINER",
        conflict="",
        setup=(JSON_COLUMN, INBOX, "TRUNCATE cdc_invoice.inbox"),
        qualified=True,
    ),
}


# --------------------------------------------------------------------------- entry


def run(server: Server, *, quick: bool) -> dict[str, Any]:
    reps = 1 if quick else 3
    seconds = 2 if quick else 4
    clients = (1, 8, 32)
    # enough orders for 40k TPS over a whole run (the detached source at sync_commit=off)
    cap = Capture(server, 100_000 if quick else 200_000)
    out: dict[str, Any] = {"db": DB, "seconds_per_run": seconds, "repetitions": reps}
    try:
        tps: dict[str, dict[int, list[float]]] = {"none": {}, "plugin": {}}
        sync_off: dict[str, list[float]] = {"none": [], "plugin": []}
        for rep in range(reps):
            order = ("none", "plugin") if rep % 2 == 0 else ("plugin", "none")
            for c in clients:
                for mode in order:
                    cap.set_plugin(mode == "plugin")
                    v = cap.pgbench(c, seconds)
                    tps[mode].setdefault(c, []).append(v)
                    log(f"capture rep {rep + 1} {c:>2} clients {mode:<6}: {v:8.0f} TPS")
        # The same at 32 clients with synchronous_commit off: no fsync wait, CPU only.
        cap.set_sync_commit(False)
        try:
            for rep in range(reps):
                for mode in ("none", "plugin") if rep % 2 == 0 else ("plugin", "none"):
                    cap.set_plugin(mode == "plugin")
                    v = cap.pgbench(32, seconds)
                    sync_off[mode].append(v)
                    log(f"capture rep {rep + 1} 32 clients {mode:<6} sync_commit=off: {v:.0f}")
        finally:
            cap.set_sync_commit(True)
        out["tps"] = {
            mode: {str(c): summary(v, 1) for c, v in by_c.items()} for mode, by_c in tps.items()
        }
        out["ratio_by_clients"] = {
            str(c): summary(
                [n / p for n, p in zip(tps["none"][c], tps["plugin"][c], strict=True)], 3
            )
            for c in clients
        }
        out["tps_32_sync_commit_off"] = {m: summary(v, 1) for m, v in sync_off.items()}
        out["ratio_32_sync_commit_off"] = summary(
            [n / p for n, p in zip(sync_off["none"], sync_off["plugin"], strict=True)], 3
        )
        if not quick:
            out["profile"] = profile(cap, quick=quick, rounds=3, n=6000)
        # The proposed capture functions under pgbench, interleaved with none and the current.
        names = ("none", "generated", "jsonb_snapshot", "proposed", "inbox")
        proposed = interleaved_32(cap, names, reps, seconds, "capture")
        out["realistic"] = realistic(cap, reps=reps, seconds=seconds, clients=clients)
        out["proposed_32"] = {
            "tps": {k: summary(v, 1) for k, v in proposed.items()},
            **{
                f"ratio_{k}": summary(
                    [n / p for n, p in zip(proposed["none"], proposed[k], strict=True)], 3
                )
                for k in names[1:]
            },
        }
    finally:
        cap.close()
    return out


def interleaved_32(
    cap: Capture, names: tuple[str, ...], reps: int, seconds: float, label: str
) -> dict[str, list[float]]:
    """TPS at 32 clients of each capture variant (``none``: no plugin), in alternating order
    per repetition so that drift hits every variant alike; the plugin is restored after."""
    got: dict[str, list[float]] = {k: [] for k in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else tuple(reversed(names)):
            if name == "none":
                cap.restore()
                cap.set_plugin(False)
            else:
                cap.apply_variant(name)
            got[name].append(cap.pgbench(32, seconds))
            log(f"{label} rep {rep + 1} 32 clients {name}: {got[name][-1]:.0f} TPS")
    cap.restore()
    cap.set_plugin(True)
    return got


def realistic(
    cap: Capture, *, reps: int, seconds: float, clients: tuple[int, ...]
) -> dict[str, Any]:
    """The realistic shipping transaction, source detached ("none"), attached ("plugin") and
    with the minimal inbox trigger in place of the generated one ("inbox": what the capture
    would cost if it wrote a lean row that the daemon moves into ``request``), interleaved
    (the order flipped every repetition), at each client count."""
    cap.prepare_realistic()
    modes = ("none", "plugin", "inbox")
    tps: dict[str, dict[int, list[float]]] = {m: {} for m in modes}
    for rep in range(reps):
        for c in clients:
            for mode in modes if rep % 2 == 0 else tuple(reversed(modes)):
                if mode == "inbox":
                    cap.apply_variant("inbox")
                else:
                    if cap.table != "cdc_invoice.request":  # the inbox variant is in place
                        cap.restore()
                    cap.set_plugin(mode == "plugin")
                v = cap.pgbench(c, seconds, realistic=True)
                tps[mode].setdefault(c, []).append(v)
                log(f"capture realistic rep {rep + 1} {c:>2} clients {mode:<6}: {v:8.0f} TPS")
    if cap.table != "cdc_invoice.request":
        cap.restore()
    cap.set_plugin(True)

    def ratios(mode: str) -> dict[str, Any]:
        return {
            str(c): summary([n / p for n, p in zip(tps["none"][c], tps[mode][c], strict=True)], 3)
            for c in clients
        }

    return {
        "method": f"pgbench -M prepared, one transaction = status UPDATE + per line (5) one "
        f"stock decrement over {REALISTIC_SKUS} SKUs and one stock_movement INSERT",
        "skus": REALISTIC_SKUS,
        "tps": {m: {str(c): summary(v, 1) for c, v in by_c.items()} for m, by_c in tps.items()},
        "ratio_by_clients": ratios("plugin"),
        "ratio_inbox_by_clients": ratios("inbox"),
    }


def profile(cap: Capture, *, quick: bool, rounds: int = 2, n: int = 5000) -> dict[str, Any]:
    """Server µs per committed shipment for each variant (synchronous_commit off: CPU, not
    fsync), in interleaved rounds (the order reversed every other round); 'none' is the source
    detached. Other work on the machine only ever adds time, so the minimum is the best
    estimate of a variant's own cost; the median is given too."""
    if quick:
        rounds, n = 2, 3000
    names = ["none", *VARIANTS]
    res: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else list(reversed(names)):
            if name == "none":
                cap.restore()
                cap.set_plugin(False)
            else:
                cap.apply_variant(name)
            res[name].append(cap.loop_us(n))
        log(
            f"capture profile round {r + 1}: "
            + ", ".join(f"{k} {v[-1]:.0f}" for k, v in res.items())
        )
    cap.restore()
    cap.set_plugin(True)
    base_min = min(res["none"])
    base_med = float(summary(res["none"])["median"])
    return {
        "method": f"CALL bench_ship({n}) x {rounds} rounds: one session, UPDATE + COMMIT per "
        "order, synchronous_commit off, server time per commit",
        "us_per_commit": {k: summary(v, 1) for k, v in res.items()},
        "trigger_us_min": {k: round(min(v) - base_min, 1) for k, v in res.items() if k != "none"},
        "trigger_us_median": {
            k: round(float(summary(v)["median"]) - base_med, 1)
            for k, v in res.items()
            if k != "none"
        },
        "variants": {k: v.doc for k, v in VARIANTS.items()},
    }


def run_realistic(
    server: Server, *, quick: bool, reps: int | None = None, seconds: float | None = None
) -> dict[str, Any]:
    """Only the realistic transaction and the worst case's generated-vs-inbox ratio
    (`--only capture-realistic`): the part of `capture` issue 17 added, on its own; more
    repetitions (``--reps``) narrow the median on a noisy machine."""
    reps = reps or (1 if quick else 3)
    seconds = seconds or (2 if quick else 4)
    cap = Capture(server, 100_000 if quick else 200_000)
    out: dict[str, Any] = {"db": DB, "seconds_per_run": seconds, "repetitions": reps}
    try:
        out["realistic"] = realistic(cap, reps=reps, seconds=seconds, clients=(1, 8, 32))
        names = ("none", "generated", "inbox")
        got = interleaved_32(cap, names, reps, seconds, "capture worst case")
        out["proposed_32"] = {
            "tps": {k: summary(v, 1) for k, v in got.items()},
            **{
                f"ratio_{k}": summary([n / p for n, p in zip(got["none"], got[k], strict=True)], 3)
                for k in names[1:]
            },
        }
    finally:
        cap.close()
    return out


def run_profile(server: Server, *, rounds: int, n: int) -> dict[str, Any]:
    """Only the ablation profile (`--only capture-profile`), with more rounds."""
    cap = Capture(server, max(60_000, n + 1000))
    try:
        return profile(cap, quick=False, rounds=rounds, n=n)
    finally:
        cap.close()
