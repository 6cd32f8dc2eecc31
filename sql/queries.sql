-- Named queries the daemon runs, loaded by name (cdc_invoice/db/queries.py).
-- Parameters are named (%(x)s). Each block starts with "-- name: <name>".

-- name: schema_version
SELECT max(version) AS version FROM cdc_invoice.schema_version;

-- name: claim_requests
-- Takes due rows: results to poll first (so invoices get recorded while a backlog is still
-- being issued), then pending ones, retries, and rows whose lease expired (a worker died).
-- Each CTE is evaluated once, so LIMIT bounds the UPDATE (unlike IN (subquery)).
-- Claiming sets the lease: run_after = lease_until, so the same query recovers abandoned rows.
-- kinds: the request kinds this daemon version handles; others wait, pending, for one that does.
-- sellers: the sellers this daemon has credentials for (NULL: any). A request of another
-- seller's source waits for a daemon that can sign for it (`status` shows it if none is live);
-- a request whose source is detached is taken by anyone, and fails with the reason. The source
-- list is computed once per claim (an InitPlan over the small source table).
WITH polls AS MATERIALIZED (
    SELECT id FROM cdc_invoice.request
     WHERE state = 'submitted' AND run_after <= now() AND kind = ANY(%(kinds)s)
       AND source <> ALL (ARRAY(SELECT s.source FROM cdc_invoice.source s
                                 WHERE s.seller_id <> ALL (%(sellers)s::text[])))
     ORDER BY run_after, id
     LIMIT %(poll_limit)s
       FOR NO KEY UPDATE SKIP LOCKED
), fresh AS MATERIALIZED (
    SELECT id FROM cdc_invoice.request
     WHERE state IN ('pending', 'claimed') AND run_after <= now() AND kind = ANY(%(kinds)s)
       AND source <> ALL (ARRAY(SELECT s.source FROM cdc_invoice.source s
                                 WHERE s.seller_id <> ALL (%(sellers)s::text[])))
     ORDER BY run_after, id
     -- a batch of up to 50 polls takes one of the worker's slots
     LIMIT greatest(%(limit)s - (SELECT (count(*) + 49) / 50 FROM polls), 0)
       FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE cdc_invoice.request r
   SET state = CASE WHEN r.state = 'pending' THEN 'claimed' ELSE r.state END,
       claimed_by = %(daemon_id)s,
       attempt = r.attempt + 1,
       lease_until = now() + make_interval(secs => %(lease_seconds)s),
       run_after = now() + make_interval(secs => %(lease_seconds)s),
       platform_order_no = coalesce(r.platform_order_no,
                                    cdc_invoice.platform_order_no(r.id, r.generation)),
       updated_at = now()
 -- An array, not a join: the planner cannot know how many rows the CTEs yield (fresh's LIMIT
 -- is an expression) and, guessing thousands, hash-joined a scan of the whole queue.
 WHERE r.id = ANY (ARRAY(SELECT id FROM polls UNION ALL SELECT id FROM fresh))
-- A result to poll needs its progress, not the document (the largest value in the row).
RETURNING r.id, r.source, r.order_ref, r.kind, r.state, r.attempt, r.retries,
          CASE WHEN r.state = 'submitted' THEN NULL ELSE r.document END AS document,
          r.params, r.invoice_id, r.platform_order_no, r.progress, r.created_at;

-- name: renew_leases
UPDATE cdc_invoice.request
   SET lease_until = now() + make_interval(secs => %(lease_seconds)s),
       run_after = now() + make_interval(secs => %(lease_seconds)s)
 WHERE id = ANY(%(ids)s) AND claimed_by = %(daemon_id)s AND state IN ('claimed', 'submitted');

-- name: mark_submitted
-- The platform accepted every part: wait for the result, polled in batches by any daemon.
-- Like every fenced completion below, one statement with its audit event: it changes nothing
-- unless the request is still ours (claimed_by, attempt), and then writes exactly one event.
WITH r AS (
    UPDATE cdc_invoice.request
       SET state = 'submitted', progress = %(progress)s, platform_serial = %(serial)s,
           claimed_by = NULL, lease_until = NULL,
           run_after = now() + make_interval(secs => %(poll_after)s), updated_at = now()
     WHERE id = %(id)s AND claimed_by = %(daemon_id)s AND attempt = %(attempt)s
    RETURNING id
)
INSERT INTO cdc_invoice.event (actor, request_id, source, order_ref, event, detail)
SELECT %(daemon_id)s, r.id, %(source)s, %(order_ref)s, %(event)s, %(detail)s FROM r;

-- name: release_poll
-- Still issuing at the platform: poll again later. Fenced like every completion.
UPDATE cdc_invoice.request r
   SET claimed_by = NULL, lease_until = NULL,
       run_after = now() + make_interval(secs => %(poll_after)s)
  FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS f(id, attempt)
 WHERE r.id = f.id AND r.attempt = f.attempt AND r.claimed_by = %(daemon_id)s;

-- name: release_retry
-- A retryable error: back to pending after the backoff (fenced, with its event).
WITH r AS (
    UPDATE cdc_invoice.request
       SET state = CASE WHEN state = 'submitted' THEN 'submitted' ELSE 'pending' END,
           claimed_by = NULL, lease_until = NULL, retries = retries + 1,
           run_after = now() + make_interval(secs => %(delay)s),
           last_error = %(error)s, error_code = %(code)s, hint = %(hint)s, updated_at = now()
     WHERE id = %(id)s AND claimed_by = %(daemon_id)s AND attempt = %(attempt)s
    RETURNING id
)
INSERT INTO cdc_invoice.event (actor, request_id, source, order_ref, event, detail)
SELECT %(daemon_id)s, r.id, %(source)s, %(order_ref)s, %(event)s, %(detail)s FROM r;

-- name: release_deferred
-- The platform asked us to wait (throttling, a seller paused for quota): back to pending (or
-- submitted) after the delay, fenced, WITHOUT counting a retry and without an event per wait
-- (a paused backlog would write one per request per probe): the reason shows in last_error.
UPDATE cdc_invoice.request
   SET state = CASE WHEN state = 'submitted' THEN 'submitted' ELSE 'pending' END,
       claimed_by = NULL, lease_until = NULL,
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
-- Parked with the reason and the fix (fenced, with its event). progress, when given, records
-- which parts reached the platform under which order numbers (retry() keeps those numbers).
WITH r AS (
    UPDATE cdc_invoice.request
       SET state = 'failed', claimed_by = NULL, lease_until = NULL,
           progress = coalesce(%(progress)s, progress),
           last_error = %(error)s, error_code = %(code)s, hint = %(hint)s,
           updated_at = now(), done_at = now()
     WHERE id = %(id)s AND claimed_by = %(daemon_id)s AND attempt = %(attempt)s
    RETURNING id
)
INSERT INTO cdc_invoice.event (actor, request_id, source, order_ref, event, detail)
SELECT %(daemon_id)s, r.id, %(source)s, %(order_ref)s, %(event)s, %(detail)s FROM r;

-- name: mark_done
UPDATE cdc_invoice.request
   SET state = 'done', claimed_by = NULL, lease_until = NULL, last_error = NULL,
       error_code = NULL, hint = NULL, updated_at = now(), done_at = now()
 WHERE id = %(id)s AND claimed_by = %(daemon_id)s AND attempt = %(attempt)s;

-- name: record_issued
-- A batch of finished issue requests in one statement: each request still ours (claimed_by,
-- attempt) is marked done, and its invoices, their lines and one audit event per invoice are
-- written. A request no longer ours is left out (its id is not returned). Any error, such as
-- a unique violation because an invoice is recorded already, undoes the whole statement; the
-- daemon then records the batch again one request per savepoint (record_invoices in
-- repository.py), so one bad request never holds up the others.
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(invoices)s) AS j(
        request_id bigint, attempt integer, part integer, source text, order_ref text,
        seller_id text, invoice_number text, kind text, invoice_line text,
        original_invoice_id bigint, platform_serial text, platform_order_no text,
        issued_at timestamptz, buyer_name text, buyer_tax_number text, buyer_email text,
        buyer_phone text, total_excl_tax numeric, total_tax numeric, total_incl_tax numeric,
        pdf_url text, ofd_url text, xml_url text, delivery_status text, paper_code text,
        paper_number text, remark text, seal_failed boolean, lines jsonb, event_detail jsonb)
), done AS (
    UPDATE cdc_invoice.request r
       SET state = 'done', claimed_by = NULL, lease_until = NULL, last_error = NULL,
           error_code = NULL, hint = NULL, updated_at = now(), done_at = now()
      FROM (SELECT DISTINCT request_id, attempt FROM input) f
     WHERE r.id = f.request_id AND r.attempt = f.attempt AND r.claimed_by = %(daemon_id)s
    RETURNING r.id
), inv AS (
    INSERT INTO cdc_invoice.invoice (request_id, part, source, order_ref, seller_id,
            invoice_number, kind, invoice_line, original_invoice_id, platform_serial,
            platform_order_no, issued_at, buyer_name, buyer_tax_number, buyer_email, buyer_phone,
            total_excl_tax, total_tax, total_incl_tax, pdf_url, ofd_url, xml_url,
            delivery_status, paper_code, paper_number, remark, seal_failed)
    SELECT i.request_id, i.part, i.source, i.order_ref, i.seller_id, i.invoice_number, i.kind,
           i.invoice_line, i.original_invoice_id, i.platform_serial, i.platform_order_no,
           i.issued_at, i.buyer_name, i.buyer_tax_number, i.buyer_email, i.buyer_phone,
           i.total_excl_tax, i.total_tax, i.total_incl_tax, i.pdf_url, i.ofd_url, i.xml_url,
           i.delivery_status, i.paper_code, i.paper_number, i.remark, coalesce(i.seal_failed, false)
      FROM input i JOIN done d ON d.id = i.request_id
    RETURNING id, request_id, part
), lines AS (
    INSERT INTO cdc_invoice.invoice_line (invoice_id, line_no, source_line_no, line_property,
            item_ref, item_name, tax_code, quantity, unit_price, price_includes_tax,
            amount_excl_tax, tax_rate, tax, amount_incl_tax)
    SELECT inv.id, l.line_no, l.source_line_no, l.line_property, l.item_ref, l.item_name,
           l.tax_code, l.quantity, l.unit_price, l.price_includes_tax, l.amount_excl_tax,
           l.tax_rate, l.tax, l.amount_incl_tax
      FROM inv JOIN input i ON i.request_id = inv.request_id AND i.part = inv.part
     CROSS JOIN LATERAL jsonb_to_recordset(i.lines) AS l(
            line_no integer, source_line_no integer, line_property smallint, item_ref text,
            item_name text, tax_code text, quantity numeric, unit_price numeric,
            price_includes_tax boolean, amount_excl_tax numeric, tax_rate numeric, tax numeric,
            amount_incl_tax numeric)
), ev AS (
    INSERT INTO cdc_invoice.event (actor, request_id, invoice_id, source, order_ref, event, detail)
    SELECT %(daemon_id)s, i.request_id, inv.id, i.source, i.order_ref, 'invoice.recorded',
           jsonb_build_object('invoice_number', i.invoice_number, 'kind', i.kind)
           || coalesce(i.event_detail, '{}'::jsonb)
      FROM inv JOIN input i ON i.request_id = inv.request_id AND i.part = inv.part
), seal AS (
    -- Status 24: issued (it exists, it is recorded) but its seal failed: an alert for finance.
    INSERT INTO cdc_invoice.event (actor, request_id, invoice_id, source, order_ref, event, detail)
    SELECT %(daemon_id)s, i.request_id, inv.id, i.source, i.order_ref, 'invoice.seal_failed',
           jsonb_build_object('invoice_number', i.invoice_number) || coalesce(i.event_detail, '{}'::jsonb)
      FROM inv JOIN input i ON i.request_id = inv.request_id AND i.part = inv.part
     WHERE i.seal_failed
)
SELECT id FROM done;

-- name: insert_invoice
INSERT INTO cdc_invoice.invoice (request_id, part, source, order_ref, seller_id, invoice_number,
        kind, invoice_line, original_invoice_id, platform_serial, platform_order_no, issued_at,
        buyer_name, buyer_tax_number, buyer_email, buyer_phone, total_excl_tax, total_tax,
        total_incl_tax, pdf_url, ofd_url, xml_url, delivery_status, paper_code, paper_number,
        remark, seal_failed)
VALUES (%(request_id)s, %(part)s, %(source)s, %(order_ref)s, %(seller_id)s, %(invoice_number)s,
        %(kind)s, %(invoice_line)s, %(original_invoice_id)s, %(platform_serial)s,
        %(platform_order_no)s, %(issued_at)s, %(buyer_name)s, %(buyer_tax_number)s,
        %(buyer_email)s, %(buyer_phone)s, %(total_excl_tax)s, %(total_tax)s, %(total_incl_tax)s,
        %(pdf_url)s, %(ofd_url)s, %(xml_url)s, %(delivery_status)s, %(paper_code)s,
        %(paper_number)s, %(remark)s, coalesce(%(seal_failed)s, false))
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
       invoice_line, extension_number, max_invoice_amount, max_lines, remark_template,
       show_bank_account, survey_answer_type
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
INSERT INTO cdc_invoice.daemon (daemon_id, host, pid, version, sellers)
VALUES (%(daemon_id)s, %(host)s, %(pid)s, %(version)s, %(sellers)s)
ON CONFLICT (daemon_id) DO UPDATE
   SET host = EXCLUDED.host, pid = EXCLUDED.pid, version = EXCLUDED.version,
       sellers = EXCLUDED.sellers, started_at = now(), heartbeat_at = now(), stopped_at = NULL;

-- name: daemon_lock
-- Held for the daemon's life on a connection of its own: a second daemon with the same
-- daemon_id would share its leases (claimed_by), so it is refused. The lock dies with the
-- session, so a SIGKILLed daemon's replacement gets it at once.
SELECT pg_try_advisory_lock(1128547147, hashtext(%(daemon_id)s)) AS locked;

-- name: daemon_lock_stale_holder
-- The session holding a daemon_id's lock, if that daemon has not heartbeat for 30 s (3 beats):
-- a daemon SIGKILLed while its link was half-open leaves its session (and lock) on the server
-- until the server's TCP keepalive notices, possibly hours. Its replacement ends that session.
-- (A live holder that was only cut off finds its lock gone when its link returns, and stops.)
SELECT l.pid
  FROM pg_locks l
 WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
           SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
   AND l.classid = 1128547147 AND l.objid = hashtext(%(daemon_id)s)::oid AND l.objsubid = 2
   AND NOT EXISTS (SELECT 1 FROM cdc_invoice.daemon d
                    WHERE d.daemon_id = %(daemon_id)s AND d.stopped_at IS NULL
                      AND d.heartbeat_at > now() - interval '30 seconds');

-- name: terminate_backend
SELECT pg_terminate_backend(%(pid)s);

-- name: installation_binding
-- The tag and where it is bound, next to where we are (a restored copy differs).
SELECT i.tag, i.system_identifier, i.database_name,
       s.system_identifier AS here_system_identifier, current_database() AS here_database_name
  FROM cdc_invoice.installation i, pg_control_system() s;

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

-- ---------------------------------------------------------------- lifecycle (reverse, void, …)

-- name: update_progress
-- Still waiting (e.g. a red-letter slip for the buyer's confirmation): keep what we learnt.
UPDATE cdc_invoice.request
   SET progress = %(progress)s, claimed_by = NULL, lease_until = NULL,
       run_after = now() + make_interval(secs => %(poll_after)s), updated_at = now()
 WHERE id = %(id)s AND claimed_by = %(daemon_id)s AND attempt = %(attempt)s;

-- name: load_invoice
SELECT i.id, i.source, i.order_ref, i.seller_id, i.invoice_number, i.kind, i.invoice_line,
       i.platform_serial, i.platform_order_no, i.buyer_name, i.buyer_tax_number, i.status,
       i.total_incl_tax, i.paper_code, i.paper_number
  FROM cdc_invoice.invoice i WHERE i.id = %(id)s;

-- name: load_invoice_lines
-- The lines of one invoice, or (reds = true) of every red invoice of a blue one.
SELECT l.line_no, l.source_line_no, l.item_ref, l.item_name, l.tax_code, l.tax_rate, l.quantity,
       l.unit_price, l.price_includes_tax, l.amount_excl_tax, l.tax, l.amount_incl_tax,
       l.line_property
  FROM cdc_invoice.invoice_line l JOIN cdc_invoice.invoice i ON i.id = l.invoice_id
 WHERE CASE WHEN %(reds)s THEN i.original_invoice_id = %(id)s ELSE i.id = %(id)s END
 ORDER BY i.id, l.line_no;

-- name: settle_blue_status
-- After a red invoice is recorded: reversed when the reds add up to the blue, else partially.
UPDATE cdc_invoice.invoice b
   SET status = CASE WHEN b.total_incl_tax + coalesce(
                         (SELECT sum(r.total_incl_tax) FROM cdc_invoice.invoice r
                           WHERE r.original_invoice_id = b.id), 0) = 0
                     THEN 'reversed' ELSE 'partially_reversed' END
 WHERE b.id = %(id)s
RETURNING b.status;

-- name: set_invoice_status
UPDATE cdc_invoice.invoice SET status = %(status)s WHERE id = %(id)s;

-- name: set_delivery_status
UPDATE cdc_invoice.invoice SET delivery_status = %(status)s WHERE id = %(id)s;

-- name: refresh_invoice
UPDATE cdc_invoice.invoice
   SET pdf_url = coalesce(%(pdf_url)s, pdf_url), ofd_url = coalesce(%(ofd_url)s, ofd_url),
       xml_url = coalesce(%(xml_url)s, xml_url),
       status = CASE WHEN %(voided)s THEN 'voided' ELSE status END
 WHERE id = %(id)s;

-- name: order_blue_invoices
-- The blue invoices of an order that a whole-order reversal (attach's reverse_when) covers.
SELECT invoice_number FROM cdc_invoice.invoice
 WHERE source = %(source)s AND order_ref = %(order_ref)s AND kind = 'blue'
   AND status IN ('issued', 'partially_reversed')
 ORDER BY part;

-- name: order_issue_unfinished
SELECT count(*) > 0 FROM cdc_invoice.request
 WHERE source = %(source)s AND order_ref = %(order_ref)s AND kind = 'issue'
   AND state IN ('pending', 'claimed', 'submitted');

-- name: order_issue_requests
-- A returned order's issue requests, locked: the reversal decides what becomes of each.
SELECT id, state, attempt, claimed_by, error_code, progress FROM cdc_invoice.request
 WHERE source = %(source)s AND order_ref = %(order_ref)s AND kind = 'issue'
 ORDER BY id
   FOR UPDATE;

-- name: cancel_returned_issue
-- The order was returned before anything of it reached the platform: its issue request ends.
WITH r AS (
    UPDATE cdc_invoice.request
       SET state = 'cancelled', claimed_by = NULL, lease_until = NULL,
           last_error = %(error)s, error_code = 'RETURNED', hint = %(hint)s,
           updated_at = now(), done_at = now()
     WHERE id = %(id)s AND state IN ('pending', 'failed')
    RETURNING id, source, order_ref
)
INSERT INTO cdc_invoice.event (actor, request_id, source, order_ref, event, detail)
SELECT %(daemon_id)s, r.id, r.source, r.order_ref, 'request.cancelled', %(detail)s FROM r;

-- name: request_reversal
SELECT cdc_invoice.request_reversal(%(invoice_number)s, %(reason)s);

-- ---------------------------------------------------------------- reconciliation

-- name: claim_one
-- Reconcile drives one known request through the daemon's own code path. It takes the row
-- only if no live daemon holds it (lease expired or never claimed); attempt >= 2 makes the
-- handler ask the platform by order number before doing anything.
UPDATE cdc_invoice.request r
   SET state = CASE WHEN r.state IN ('pending', 'failed') THEN 'claimed' ELSE r.state END,
       claimed_by = %(daemon_id)s,
       attempt = greatest(r.attempt + 1, 2),
       lease_until = now() + make_interval(secs => %(lease_seconds)s),
       run_after = now() + make_interval(secs => %(lease_seconds)s),
       platform_order_no = coalesce(r.platform_order_no,
                                    cdc_invoice.platform_order_no(r.id, r.generation)),
       updated_at = now()
 WHERE r.id = (SELECT id FROM cdc_invoice.request
                WHERE id = %(id)s
                  AND (state IN ('pending', 'failed') OR (state IN ('claimed', 'submitted')
                       AND (claimed_by IS NULL OR lease_until < now())))
                  FOR NO KEY UPDATE SKIP LOCKED)
RETURNING r.id, r.source, r.order_ref, r.kind, r.state, r.attempt, r.retries, r.document,
          r.params, r.invoice_id, r.platform_order_no, r.progress, r.created_at;

-- name: installation_tag
SELECT tag FROM cdc_invoice.installation;

-- name: request_by_order_no
-- Any generation of the request's number: a split order's parts may carry different ones
-- (only a refused part gets a new number), and the id is in the number (platform_order_no()).
SELECT id, source, order_ref, kind, state FROM cdc_invoice.request
 WHERE platform_order_no = %(base)s
    OR (id = CASE WHEN %(base)s ~ '^CI[0-9A-Z]{5}[0-9]{11}$' THEN right(%(base)s, 11)::bigint END
        AND left(platform_order_no, 6) = left(%(base)s, 6))
 ORDER BY platform_order_no = %(base)s DESC
 LIMIT 1;

-- name: local_invoices_of_day
SELECT platform_order_no, invoice_number, buyer_name, total_incl_tax, source, order_ref, request_id
  FROM cdc_invoice.invoice
 WHERE seller_id = %(seller_id)s AND issued_at >= %(start)s AND issued_at < %(end)s;

-- name: unfinished_issues_of_day
SELECT id, source, order_ref, state, last_error FROM cdc_invoice.request
 WHERE kind = 'issue' AND state <> 'done' AND created_at >= %(start)s AND created_at < %(end)s
   AND source IN (SELECT source FROM cdc_invoice.source WHERE seller_id = %(seller_id)s);

-- name: insert_finding
INSERT INTO cdc_invoice.reconciliation (run_id, day, seller_id, finding, order_no, invoice_number,
        source, order_ref, request_id, local_total, platform_total, detail)
VALUES (%(run_id)s, %(day)s, %(seller_id)s, %(finding)s, %(order_no)s, %(invoice_number)s,
        %(source)s, %(order_ref)s, %(request_id)s, %(local_total)s, %(platform_total)s, %(detail)s);

-- ---------------------------------------------------------------- platform callbacks

-- name: callback_hint
-- A platform callback only says "look again": the request is polled now, and what the platform
-- answers to that query is what counts. The callback's own content is never trusted.
UPDATE cdc_invoice.request
   SET run_after = now()
 WHERE state = 'submitted' AND claimed_by IS NULL
   AND (platform_order_no = ANY(%(bases)s) OR platform_serial = ANY(%(serials)s))
RETURNING id;

-- name: upsert_buyer_slip
-- A slip the buyer applied for, as the platform lists it (daemon/buyer_slips.py). The blue is
-- matched by number among this seller's blue invoices; NULL: not ours. Inserted rows report
-- inserted = true so that an event is written once per slip.
INSERT INTO cdc_invoice.buyer_red_slip AS s
       (bill_id, seller_id, bill_no, bill_uuid, invoice_id, blue_invoice_number, red_reason,
        slip_time, total_excl_tax, total_tax, lines, platform_status)
SELECT %(bill_id)s, %(seller_id)s, %(bill_no)s, %(bill_uuid)s,
       (SELECT i.id FROM cdc_invoice.invoice i
         WHERE i.invoice_number = %(blue_number)s AND i.kind = 'blue'
           AND i.seller_id = %(seller_id)s),
       %(blue_number)s, %(red_reason)s, %(slip_time)s, %(total_excl_tax)s, %(total_tax)s,
       %(lines)s, %(status)s
    ON CONFLICT (bill_id) DO UPDATE
   SET platform_status = EXCLUDED.platform_status,
       invoice_id = coalesce(s.invoice_id, EXCLUDED.invoice_id),
       updated_at = now()
 WHERE s.platform_status IS DISTINCT FROM EXCLUDED.platform_status OR s.invoice_id IS NULL
RETURNING (xmax = 0) AS inserted, s.invoice_id, s.bill_id;

-- name: buyer_slips_gone
-- Unanswered slips of a seller the platform no longer lists as 03 (withdrawn 08, expired 07).
-- Only rows not written since the listing began: another daemon's newer listing wins.
UPDATE cdc_invoice.buyer_red_slip
   SET platform_status = 'gone', updated_at = now()
 WHERE seller_id = %(seller_id)s AND platform_status = '03' AND decision IS NULL
   AND NOT (bill_id = ANY(%(listed)s)) AND updated_at < %(listed_at)s;

-- name: buyer_slip_event
INSERT INTO cdc_invoice.event (invoice_id, source, order_ref, event, detail)
SELECT i.id, i.source, i.order_ref, 'red_slip.buyer_applied', %(detail)s
  FROM cdc_invoice.invoice i WHERE i.id = %(invoice_id)s;

-- name: load_buyer_slip
SELECT bill_id, lines, red_reason, platform_status FROM cdc_invoice.buyer_red_slip
 WHERE bill_id = %(bill_id)s;

-- name: set_buyer_slip_status
UPDATE cdc_invoice.buyer_red_slip SET platform_status = %(status)s, updated_at = now()
 WHERE bill_id = %(bill_id)s;

-- name: take_rate_token
-- One platform call's slot under the shared cap (sql/ops.sql); see db/rate_bucket.py.
SELECT wait_seconds, granted
  FROM cdc_invoice.take_rate_token(%(app_key)s, %(per_second)s, %(max_wait)s);
