-- Named queries the daemon runs, loaded by name (cdc_invoice/db/queries.py).
-- Parameters are named (%(x)s). Each block starts with "-- name: <name>".

-- name: schema_version
SELECT max(version) AS version FROM cdc_invoice.schema_version;

-- name: claim_requests
-- Takes due rows: pending ones, retries and polls whose time came, and rows whose lease expired
-- (a worker died). The CTE is evaluated once, so LIMIT bounds the UPDATE (unlike IN (subquery)).
-- Claiming sets the lease: run_after = lease_until, so the same query recovers abandoned rows.
-- kinds: the request kinds this daemon version handles; others wait, pending, for one that does.
WITH due AS MATERIALIZED (
    SELECT id FROM cdc_invoice.request
     WHERE state IN ('pending', 'claimed', 'submitted') AND run_after <= now()
       AND kind = ANY(%(kinds)s)
     ORDER BY run_after, id
     LIMIT %(limit)s
       FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE cdc_invoice.request r
   SET state = CASE WHEN r.state = 'pending' THEN 'claimed' ELSE r.state END,
       claimed_by = %(daemon_id)s,
       attempt = r.attempt + 1,
       lease_until = now() + make_interval(secs => %(lease_seconds)s),
       run_after = now() + make_interval(secs => %(lease_seconds)s),
       platform_order_no = coalesce(r.platform_order_no,
           'CI' || (SELECT tag FROM cdc_invoice.installation) || lpad(r.id::text, 12, '0')),
       updated_at = now()
  FROM due
 WHERE r.id = due.id
RETURNING r.id, r.source, r.order_ref, r.kind, r.state, r.attempt, r.retries, r.document,
          r.params, r.invoice_id, r.platform_order_no, r.progress, r.created_at;

-- name: renew_leases
UPDATE cdc_invoice.request
   SET lease_until = now() + make_interval(secs => %(lease_seconds)s),
       run_after = now() + make_interval(secs => %(lease_seconds)s)
 WHERE id = ANY(%(ids)s) AND claimed_by = %(daemon_id)s AND state IN ('claimed', 'submitted');

-- name: mark_submitted
-- The platform accepted every part: wait for the result, polled in batches by any daemon.
UPDATE cdc_invoice.request
   SET state = 'submitted', progress = %(progress)s, platform_serial = %(serial)s,
       claimed_by = NULL, lease_until = NULL,
       run_after = now() + make_interval(secs => %(poll_after)s), updated_at = now()
 WHERE id = %(id)s AND claimed_by = %(daemon_id)s AND attempt = %(attempt)s;

-- name: release_poll
-- Still issuing at the platform: poll again later. Fenced like every completion.
UPDATE cdc_invoice.request r
   SET claimed_by = NULL, lease_until = NULL,
       run_after = now() + make_interval(secs => %(poll_after)s)
  FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS f(id, attempt)
 WHERE r.id = f.id AND r.attempt = f.attempt AND r.claimed_by = %(daemon_id)s;

-- name: release_retry
-- A retryable error: back to pending after the backoff.
UPDATE cdc_invoice.request
   SET state = CASE WHEN state = 'submitted' THEN 'submitted' ELSE 'pending' END,
       claimed_by = NULL, lease_until = NULL, retries = retries + 1,
       run_after = now() + make_interval(secs => %(delay)s),
       last_error = %(error)s, error_code = %(code)s, hint = %(hint)s, updated_at = now()
 WHERE id = %(id)s AND claimed_by = %(daemon_id)s AND attempt = %(attempt)s;

-- name: release_unclaimed
-- Shutdown: give back rows we claimed but did not start, so another daemon takes them now.
UPDATE cdc_invoice.request
   SET state = CASE WHEN state = 'claimed' THEN 'pending' ELSE state END,
       claimed_by = NULL, lease_until = NULL, run_after = now()
 WHERE id = ANY(%(ids)s) AND claimed_by = %(daemon_id)s;

-- name: mark_failed
UPDATE cdc_invoice.request
   SET state = 'failed', claimed_by = NULL, lease_until = NULL,
       last_error = %(error)s, error_code = %(code)s, hint = %(hint)s,
       updated_at = now(), done_at = now()
 WHERE id = %(id)s AND claimed_by = %(daemon_id)s AND attempt = %(attempt)s;

-- name: mark_done
UPDATE cdc_invoice.request
   SET state = 'done', claimed_by = NULL, lease_until = NULL, last_error = NULL,
       error_code = NULL, hint = NULL, updated_at = now(), done_at = now()
 WHERE id = %(id)s AND claimed_by = %(daemon_id)s AND attempt = %(attempt)s;

-- name: insert_invoice
INSERT INTO cdc_invoice.invoice (request_id, part, source, order_ref, seller_id, invoice_number,
        kind, invoice_line, original_invoice_id, platform_serial, platform_order_no, issued_at,
        buyer_name, buyer_tax_number, buyer_email, buyer_phone, total_excl_tax, total_tax,
        total_incl_tax, pdf_url, ofd_url, xml_url, delivery_status)
VALUES (%(request_id)s, %(part)s, %(source)s, %(order_ref)s, %(seller_id)s, %(invoice_number)s,
        %(kind)s, %(invoice_line)s, %(original_invoice_id)s, %(platform_serial)s,
        %(platform_order_no)s, %(issued_at)s, %(buyer_name)s, %(buyer_tax_number)s,
        %(buyer_email)s, %(buyer_phone)s, %(total_excl_tax)s, %(total_tax)s, %(total_incl_tax)s,
        %(pdf_url)s, %(ofd_url)s, %(xml_url)s, %(delivery_status)s)
RETURNING id;

-- name: insert_invoice_line
INSERT INTO cdc_invoice.invoice_line (invoice_id, line_no, source_line_no, line_property,
        item_ref, item_name, tax_code, quantity, unit_price, price_includes_tax,
        amount_excl_tax, tax_rate, tax, amount_incl_tax)
VALUES (%(invoice_id)s, %(line_no)s, %(source_line_no)s, %(line_property)s, %(item_ref)s,
        %(item_name)s, %(tax_code)s, %(quantity)s, %(unit_price)s, %(price_includes_tax)s,
        %(amount_excl_tax)s, %(tax_rate)s, %(tax)s, %(amount_incl_tax)s);

-- name: insert_event
INSERT INTO cdc_invoice.event (actor, request_id, invoice_id, source, order_ref, event, detail)
VALUES (%(actor)s, %(request_id)s, %(invoice_id)s, %(source)s, %(order_ref)s, %(event)s, %(detail)s);

-- name: load_source
SELECT s.source, s.seller_id FROM cdc_invoice.source s;

-- name: load_seller
SELECT seller_id, tax_number, name, address, phone, bank_account, clerk, payee, checker,
       invoice_line, extension_number, max_invoice_amount, max_lines
  FROM cdc_invoice.seller WHERE seller_id = %(seller_id)s;

-- name: load_buyers
-- A source-specific row wins over the '*' row.
SELECT DISTINCT ON (customer_ref) customer_ref, name, tax_number, email, phone, address,
       bank_account, invoice_type, natural_person
  FROM cdc_invoice.buyer
 WHERE customer_ref = ANY(%(refs)s) AND source IN (%(source)s, '*')
 ORDER BY customer_ref, (source = '*');

-- name: load_items
SELECT DISTINCT ON (item_ref) item_ref, tax_code, tax_rate, short_name, policy_flag
  FROM cdc_invoice.item_tax
 WHERE item_ref = ANY(%(refs)s) AND source IN (%(source)s, '*')
 ORDER BY item_ref, (source = '*');

-- name: daemon_register
INSERT INTO cdc_invoice.daemon (daemon_id, host, pid, version)
VALUES (%(daemon_id)s, %(host)s, %(pid)s, %(version)s)
ON CONFLICT (daemon_id) DO UPDATE
   SET host = EXCLUDED.host, pid = EXCLUDED.pid, version = EXCLUDED.version,
       started_at = now(), heartbeat_at = now(), stopped_at = NULL;

-- name: daemon_heartbeat
UPDATE cdc_invoice.daemon SET heartbeat_at = now() WHERE daemon_id = %(daemon_id)s;

-- name: daemon_stopped
UPDATE cdc_invoice.daemon SET stopped_at = now() WHERE daemon_id = %(daemon_id)s;

-- name: token_lock
-- Serialises token fetches across daemons (the platform allows 50 per 30 days). The row lock
-- is held across one short HTTP call to the token endpoint, on a connection of its own.
INSERT INTO cdc_invoice.provider_token (app_key, token_encrypted, expires_at, fetched_by)
VALUES (%(app_key)s, '\x', 'epoch', 'nobody')
ON CONFLICT (app_key) DO NOTHING;

-- name: token_select_for_update
SELECT token_encrypted, expires_at, fetch_log FROM cdc_invoice.provider_token
 WHERE app_key = %(app_key)s FOR UPDATE;

-- name: token_select
SELECT token_encrypted, expires_at FROM cdc_invoice.provider_token WHERE app_key = %(app_key)s;

-- name: token_store
UPDATE cdc_invoice.provider_token
   SET token_encrypted = %(token)s, expires_at = %(expires_at)s, fetched_at = now(),
       fetched_by = %(daemon_id)s,
       fetch_log = array(SELECT t FROM unnest(fetch_log || now()) t
                          WHERE t > now() - interval '30 days' ORDER BY t)
 WHERE app_key = %(app_key)s;
