-- Named queries of the operations side: /metrics, /healthz, `cdc-invoice status`, `health`,
-- `report`. Loaded by name (cdc_invoice.db.queries.q(name, "ops_queries.sql")).
-- Live requests are read through the partial index request_due_idx and failed ones through
-- request_failed_idx, so these stay cheap however many finished requests the table holds.

-- name: metrics_requests
-- Requests by kind and state, for the states an operator acts on (done/cancelled rows grow
-- forever and would need a full scan: their flow is the daemon's recorded counter).
SELECT kind, state, count(*) AS requests
  FROM cdc_invoice.request
 WHERE state IN ('pending', 'claimed', 'submitted')
 GROUP BY kind, state
UNION ALL
SELECT kind, state, count(*)
  FROM cdc_invoice.request
 WHERE state = 'failed'
 GROUP BY kind, state;

-- name: metrics_backlog
SELECT count(*) AS requests,
       count(*) FILTER (WHERE run_after <= now()) AS due,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_age_seconds
  FROM cdc_invoice.request
 WHERE state IN ('pending', 'claimed', 'submitted');

-- name: metrics_tokens
-- The shared platform tokens: expiry (NULL until one was fetched) and fetches in the platform's
-- 30-day window (it allows 50 per app).
SELECT app_key,
       CASE WHEN octet_length(token_encrypted) > 0
            THEN extract(epoch FROM expires_at)::float8 END AS expires_at,
       (SELECT count(*) FROM unnest(fetch_log) t WHERE t > now() - interval '30 days') AS fetches_30d
  FROM cdc_invoice.provider_token
 ORDER BY app_key;

-- name: metrics_daemons
-- Daemons that heartbeat (every 10 s) and have not said they stopped.
SELECT count(*) AS live
  FROM cdc_invoice.daemon
 WHERE stopped_at IS NULL AND heartbeat_at > now() - interval '30 seconds';

-- name: status_backlog
SELECT source, kind, state, count(*) AS requests,
       count(*) FILTER (WHERE run_after <= now()) AS due,
       now() - min(created_at) AS oldest_age,
       max(attempt) AS max_attempt
  FROM cdc_invoice.request
 WHERE state IN ('pending', 'claimed', 'submitted')
 GROUP BY source, kind, state
 ORDER BY source, kind, state;

-- name: status_failures
-- Failures grouped by reason: the platform's or our error code, with one example message
-- (its first line) and the fix.
SELECT coalesce(error_code, '-') AS error_code, count(*) AS requests,
       min(split_part(coalesce(last_error, ''), E'\n', 1)) AS example,
       min(hint) AS hint,
       max(updated_at) AS latest
  FROM cdc_invoice.request
 WHERE state = 'failed'
 GROUP BY 1
 ORDER BY count(*) DESC, 1;

-- name: status_waiting
-- Requests waiting on the platform's limits (issue 17), not failed: a seller paused because
-- its monthly quota is exhausted (QUOTA_PAUSED), or calls throttled (E9429) and handed back.
SELECT source, error_code, count(*) AS requests, now() - min(created_at) AS oldest_age,
       min(split_part(coalesce(last_error, ''), E'\n', 1)) AS example, min(hint) AS hint
  FROM cdc_invoice.request
 WHERE state IN ('pending', 'claimed', 'submitted') AND error_code IN ('QUOTA_PAUSED', 'E9429')
 GROUP BY source, error_code
 ORDER BY source, error_code;

-- name: status_throughput
-- Invoices recorded in the last 1, 5 and 15 minutes. invoice.recorded_at has no index; ids
-- grow with time, so the newest 100000 rows by primary key are all that can qualify (a rate
-- above ~110 invoices/s shows as 100000 in 15 minutes).
SELECT count(*) FILTER (WHERE recorded_at > now() - interval '1 minute') AS last_1m,
       count(*) FILTER (WHERE recorded_at > now() - interval '5 minutes') AS last_5m,
       count(*) AS last_15m
  FROM (SELECT recorded_at FROM cdc_invoice.invoice ORDER BY id DESC LIMIT 100000) recent
 WHERE recorded_at > now() - interval '15 minutes';

-- name: status_daemons
-- Daemons running, and those that stopped (or vanished) in the last hour.
SELECT daemon_id, host, pid, version, started_at,
       now() - heartbeat_at AS heartbeat_age,
       stopped_at, sellers
  FROM cdc_invoice.daemon
 WHERE stopped_at IS NULL OR stopped_at > now() - interval '1 hour'
 ORDER BY stopped_at IS NOT NULL, daemon_id;

-- name: status_unserved
-- Unfinished work of sellers that no live daemon has credentials for: it waits until one
-- with the seller's [provider.credentials.<seller_id>] runs. A daemon that does not record
-- its sellers (an older version) counts as serving all.
SELECT s.seller_id, r.source, count(*) AS requests, now() - min(r.created_at) AS oldest_age
  FROM cdc_invoice.request r
  JOIN cdc_invoice.source s ON s.source = r.source
 WHERE r.state IN ('pending', 'claimed', 'submitted')
   AND NOT EXISTS (SELECT 1 FROM cdc_invoice.daemon d
                    WHERE d.stopped_at IS NULL AND d.heartbeat_at > now() - interval '30 seconds'
                      AND (d.sellers IS NULL OR s.seller_id = ANY (d.sellers)))
 GROUP BY s.seller_id, r.source
 ORDER BY s.seller_id, r.source;

-- name: health_source_sellers
-- Sellers with attached sources: a daemon needs credentials for each to take their work.
SELECT seller_id, array_agg(source ORDER BY source) AS sources
  FROM cdc_invoice.source
 GROUP BY seller_id
 ORDER BY seller_id;

-- name: status_tokens
SELECT app_key,
       CASE WHEN octet_length(token_encrypted) > 0 THEN expires_at END AS expires_at,
       CASE WHEN octet_length(token_encrypted) > 0 THEN fetched_at END AS fetched_at,
       fetched_by,
       (SELECT count(*) FROM unnest(fetch_log) t WHERE t > now() - interval '30 days') AS fetches_30d
  FROM cdc_invoice.provider_token
 ORDER BY app_key;

-- name: health_server
SELECT current_setting('server_version') AS server_version, pg_is_in_recovery() AS in_recovery,
       inet_server_addr()::text AS addr, inet_server_port() AS port, current_database() AS db;

-- name: health_seller
SELECT tax_number FROM cdc_invoice.seller WHERE seller_id = %(seller_id)s;

-- name: sellers_without_clerk
-- Sellers whose orders fail until the issuing account's 开票员 name is set (no default).
SELECT seller_id FROM cdc_invoice.seller WHERE clerk IS NULL ORDER BY seller_id;

-- name: health_token
SELECT token_encrypted, expires_at FROM cdc_invoice.provider_token
 WHERE app_key = %(app_key)s AND octet_length(token_encrypted) > 0;

-- name: report_views
SELECT c.relname AS name, coalesce(obj_description(c.oid, 'pg_class'), '') AS description
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'cdc_invoice' AND c.relkind IN ('v', 'm') AND c.relname LIKE 'report\_%'
 ORDER BY c.relname;

-- name: report_columns
-- The view's columns in order, with their types (to find the date column --since filters on).
SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'cdc_invoice' AND c.relname = %(view)s AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum;

-- name: health_notify
SELECT pg_notify(%(channel)s, %(payload)s);
