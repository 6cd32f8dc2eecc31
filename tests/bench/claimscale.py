"""A 100,000-request backlog drains with flat claim cost.

The daemon's own queries (sql/queries.sql) on a real backlog, without the platform in the way:
claim_requests (LIMIT 200, the daemon's largest batch), then every claimed row goes the way a
request goes in the daemon -- mark_submitted (poll_after 0), claimed again as a poll, mark_done
-- in batched statements. The time of each claim batch is recorded; the first and the last
tenth of the drain are compared. Dead index entries left by finished rows are what would make
late claims slower; autovacuum runs as configured (request has scale factor 0.02).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg
from psycopg.rows import dict_row

from cdc_invoice.db.queries import q
from tests.bench.env import Server, log, shop_database

DB = "cdc_bench_claim"
KINDS = ["issue", "reverse", "void", "deliver", "refresh"]

SUBMIT = """
UPDATE cdc_invoice.request
   SET state = 'submitted', progress = '{"parts": []}', claimed_by = NULL, lease_until = NULL,
       run_after = now(), updated_at = now()
 WHERE id = ANY(%(ids)s) AND claimed_by = %(daemon_id)s
"""
DONE = """
UPDATE cdc_invoice.request
   SET state = 'done', claimed_by = NULL, lease_until = NULL, updated_at = now(), done_at = now()
 WHERE id = ANY(%(ids)s) AND claimed_by = %(daemon_id)s
"""


def run(server: Server, *, quick: bool) -> dict[str, Any]:
    n = 20_000 if quick else 100_000
    dsn = shop_database(server, DB, 1)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            log(f"claim scale: a backlog of {n} requests")
            doc = conn.execute(
                "SELECT jsonb_agg(to_jsonb(d)) FROM invoicing.shop_document d"
            ).fetchone()
            assert doc is not None
            conn.execute(
                "INSERT INTO cdc_invoice.request (source, order_ref, kind, document, run_after) "
                "SELECT 'shop', 'b' || g, 'issue', %s, now() - interval '1 hour' "
                "+ g * interval '1 ms' FROM generate_series(1, %s) g",
                (psycopg.types.json.Jsonb(doc[0]), n),
            )
            conn.execute("VACUUM ANALYZE cdc_invoice.request")
            claim = q("claim_requests")
            # the daemon's own query: up to 200 due polls first, then fresh rows up to the limit
            params = {
                "limit": 200,
                "poll_limit": 200,
                "daemon_id": "bench",
                "lease_seconds": 30.0,
                "kinds": KINDS,
                "sellers": ["main"],  # as the daemon passes its config's sellers
            }
            times: list[float] = []
            t_all = time.monotonic()
            while True:
                t0 = time.perf_counter()
                with conn.cursor(row_factory=dict_row) as cur:
                    rows = cur.execute(claim, params).fetchall()
                times.append((time.perf_counter() - t0) * 1000)
                if not rows:
                    times.pop()
                    break
                fresh = [r["id"] for r in rows if r["state"] == "claimed"]
                polled = [r["id"] for r in rows if r["state"] == "submitted"]
                if fresh:
                    conn.execute(SUBMIT, {"ids": fresh, "daemon_id": "bench"})
                if polled:
                    conn.execute(DONE, {"ids": polled, "daemon_id": "bench"})
            total = time.monotonic() - t_all
            left = conn.execute(
                "SELECT count(*) FROM cdc_invoice.request WHERE state <> 'done'"
            ).fetchone()
    finally:
        server.drop_db(DB)
    tenth = max(1, len(times) // 10)
    start = statistics.median(times[:tenth])
    end = statistics.median(times[-tenth:])
    return {
        "backlog": n,
        "claims": len(times),
        "claim_batch": 200,
        "seconds": round(total, 1),
        "requests_per_s_db_only": round(n / total, 0),
        "claim_ms_start": round(start, 2),
        "claim_ms_end": round(end, 2),
        "claim_ms_max": round(max(times), 2),
        "end_vs_start": round(end / start, 2),
        "unfinished": int(left[0]) if left else None,
    }
