-- Named queries of the invoice-file archive (cdc_invoice/archive): the daemon's archiver and
-- the `cdc-invoice archive` commands. Tables: sql/schema.sql; views and triggers: archive.sql.

-- name: archive_claim
-- Due fetches, taken with a lease (run_after moves forward; a dead archiver's rows come back)
-- and counted at the claim: a fetch whose last allowed attempt never reported back (the
-- process died, or lost the database, each time) ends as failed instead of looping.
WITH spent AS (
    UPDATE cdc_invoice.invoice_file_fetch
       SET state = 'failed', claimed_by = NULL, updated_at = now(),
           last_error = coalesce(last_error || '; then ', '')
                        || 'the archiver stopped during the last attempt (crash or lost database)'
     WHERE state = 'pending' AND run_after <= now() AND attempts >= %(max_attempts)s
), due AS (
    SELECT invoice_id, kind
      FROM cdc_invoice.invoice_file_fetch
     WHERE state = 'pending' AND run_after <= now() AND attempts < %(max_attempts)s
     ORDER BY run_after
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
)
UPDATE cdc_invoice.invoice_file_fetch f
   SET attempts = f.attempts + 1, claimed_by = %(daemon_id)s, updated_at = now(),
       run_after = now() + make_interval(secs => %(lease_seconds)s)
  FROM due, cdc_invoice.invoice i, cdc_invoice.seller s
 WHERE f.invoice_id = due.invoice_id AND f.kind = due.kind
   AND i.id = f.invoice_id AND s.seller_id = i.seller_id
RETURNING f.invoice_id, f.kind, f.source_url, f.attempts,
          i.invoice_number, i.kind AS invoice_kind, i.source, i.order_ref,
          (i.issued_at AT TIME ZONE 'Asia/Shanghai')::date AS issue_date,
          to_char(i.issued_at AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM') AS month,
          s.tax_number AS seller_tax_number, i.buyer_tax_number,
          i.total_excl_tax, i.total_tax, i.total_incl_tax,
          (SELECT o.invoice_number FROM cdc_invoice.invoice o
            WHERE o.id = i.original_invoice_id) AS original_invoice_number;

-- name: archive_done
-- Fenced: only the claim that is still current may finish the fetch.
UPDATE cdc_invoice.invoice_file_fetch
   SET state = 'done', claimed_by = NULL, last_error = NULL, updated_at = now()
 WHERE invoice_id = %(invoice_id)s AND kind = %(kind)s AND state = 'pending'
   AND claimed_by = %(daemon_id)s AND attempts = %(attempts)s
RETURNING invoice_id;

-- name: archive_store
INSERT INTO cdc_invoice.invoice_file (invoice_id, kind, bytes, path, size, sha256, fetched_by,
                                      source_url, check_result, check_detail)
VALUES (%(invoice_id)s, %(kind)s, %(bytes)s, %(path)s, %(size)s, %(sha256)s, %(daemon_id)s,
        %(source_url)s, %(check_result)s, %(check_detail)s)
ON CONFLICT (invoice_id, kind) DO NOTHING
RETURNING id;

-- name: archive_later
-- A failed fetch: again after the backoff, or 'failed' once the attempts are used up.
UPDATE cdc_invoice.invoice_file_fetch
   SET state = CASE WHEN attempts >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
       run_after = now() + make_interval(secs => %(delay_seconds)s),
       claimed_by = NULL, last_error = %(error)s, updated_at = now()
 WHERE invoice_id = %(invoice_id)s AND kind = %(kind)s AND state = 'pending'
   AND claimed_by = %(daemon_id)s AND attempts = %(attempts)s
RETURNING state;

-- name: archive_counts
-- Metrics and `status`: files to fetch, given up on, kept and checked, kept with a mismatch.
-- Each count reads a partial index (or, for all files, the (invoice_id, kind) key), never
-- the files themselves.
WITH m AS (SELECT count(*) AS n FROM cdc_invoice.invoice_file WHERE check_result = 'mismatch')
SELECT (SELECT count(*) FROM cdc_invoice.invoice_file_fetch WHERE state = 'pending') AS pending,
       (SELECT count(*) FROM cdc_invoice.invoice_file_fetch WHERE state = 'failed') AS failed,
       (SELECT count(*) FROM cdc_invoice.invoice_file) - (SELECT n FROM m) AS verified,
       (SELECT n FROM m) AS mismatched;

-- name: archive_retry_failed
-- `cdc-invoice archive retry`: failed fetches start over (all, or one invoice's).
UPDATE cdc_invoice.invoice_file_fetch f
   SET state = 'pending', attempts = 0, run_after = now(), last_error = NULL, updated_at = now()
 WHERE f.state = 'failed'
   AND (%(invoice_number)s::text IS NULL OR f.invoice_id IN (  -- the view: operators read it
        SELECT o.invoice_id FROM cdc_invoice.report_archive_open o
         WHERE o.invoice_number = %(invoice_number)s))
RETURNING f.invoice_id, f.kind;

-- name: archive_files
-- Every archived file (or one month's) with its invoice's facts; bytes only for those kept
-- in the database.
SELECT v.file_id, v.invoice_id, v.invoice_number, v.invoice_kind, v.issued_at, v.month,
       v.issue_date, v.seller_tax_number, v.buyer_name, v.buyer_tax_number,
       v.total_excl_tax, v.total_tax, v.total_incl_tax, v.original_invoice_number,
       v.file_kind, v.size, v.sha256, v.path, v.fetched_at, v.source_url, v.check_result,
       v.check_detail, a.bytes
  FROM cdc_invoice.report_archive_files v
  JOIN cdc_invoice.invoice_file a ON a.id = v.file_id
 WHERE %(month)s::text IS NULL OR v.month = %(month)s
 ORDER BY v.issued_at, v.invoice_number, v.file_kind;

-- name: archive_not_kept
-- Invoices of the month (or all) whose XML is not archived: `verify` and `export` say so.
SELECT m.invoice_number, m.kind AS invoice_kind, m.fetch_state, m.last_error, m.issue_date,
       m.seller_tax_number, m.buyer_name, m.buyer_tax_number, m.total_excl_tax, m.total_tax,
       m.total_incl_tax
  FROM cdc_invoice.report_archive_missing_xml m
 WHERE %(month)s::text IS NULL
    OR to_char(m.issued_at AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM') = %(month)s
 ORDER BY m.issued_at, m.invoice_number;

