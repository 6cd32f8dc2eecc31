-- The invoice-file archive: triggers, finance views and grants. Re-applied on every install,
-- after roles.sql (the roles exist) and before reports.sql (which grants report_* to readers).

-- The archive is append-only, like the audit log: a file is kept as fetched, never replaced.
CREATE OR REPLACE FUNCTION cdc_invoice.invoice_file_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'cdc_invoice.invoice_file is append-only (% refused)', TG_OP
        USING ERRCODE = 'CI006',
              HINT = 'archived invoice files are never changed; a file that fails '
                     '`cdc-invoice archive verify` is restored from a backup or an export';
END $$;
DROP TRIGGER IF EXISTS invoice_file_append_only ON cdc_invoice.invoice_file;
CREATE TRIGGER invoice_file_append_only BEFORE UPDATE OR DELETE ON cdc_invoice.invoice_file
    FOR EACH ROW EXECUTE FUNCTION cdc_invoice.invoice_file_append_only();
DROP TRIGGER IF EXISTS invoice_file_no_truncate ON cdc_invoice.invoice_file;
CREATE TRIGGER invoice_file_no_truncate BEFORE TRUNCATE ON cdc_invoice.invoice_file
    FOR EACH STATEMENT EXECUTE FUNCTION cdc_invoice.invoice_file_append_only();

-- Every recorded invoice's file links become fetch work in the recording transaction itself, so
-- no invoice is ever left out; new links (a refresh request) re-arm a fetch not yet done.
CREATE OR REPLACE FUNCTION cdc_invoice.invoice_file_enqueue() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cdc_invoice.invoice_file_fetch AS f (invoice_id, kind, source_url)
    SELECT NEW.id, u.kind, u.url
      FROM (VALUES ('xml', NEW.xml_url), ('pdf', NEW.pdf_url), ('ofd', NEW.ofd_url)) u(kind, url)
     WHERE u.url IS NOT NULL AND u.url <> ''
    ON CONFLICT (invoice_id, kind) DO UPDATE
       SET source_url = EXCLUDED.source_url, state = 'pending', attempts = 0,
           run_after = now(), last_error = NULL, updated_at = now()
     WHERE f.state <> 'done' AND f.source_url <> EXCLUDED.source_url;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS invoice_file_enqueue ON cdc_invoice.invoice;
CREATE TRIGGER invoice_file_enqueue AFTER INSERT OR UPDATE OF xml_url, pdf_url, ofd_url
    ON cdc_invoice.invoice FOR EACH ROW EXECUTE FUNCTION cdc_invoice.invoice_file_enqueue();

-- Finance: invoices whose legal original (the XML) is not in the archive yet, and why.
CREATE OR REPLACE VIEW cdc_invoice.report_archive_missing_xml AS
SELECT i.id AS invoice_id, i.invoice_number, i.kind, i.issued_at, i.source, i.order_ref,
       coalesce(f.state, 'no link') AS fetch_state, f.attempts,
       CASE WHEN f.state = 'pending' THEN f.run_after END AS next_try,
       f.last_error, f.source_url,
       (i.issued_at AT TIME ZONE 'Asia/Shanghai')::date AS issue_date,
       s.tax_number AS seller_tax_number, i.buyer_name, i.buyer_tax_number,
       i.total_excl_tax, i.total_tax, i.total_incl_tax
  FROM cdc_invoice.invoice i
  JOIN cdc_invoice.seller s ON s.seller_id = i.seller_id
  LEFT JOIN cdc_invoice.invoice_file_fetch f ON f.invoice_id = i.id AND f.kind = 'xml'
 WHERE NOT EXISTS (SELECT 1 FROM cdc_invoice.invoice_file a
                    WHERE a.invoice_id = i.id AND a.kind = 'xml');
COMMENT ON VIEW cdc_invoice.report_archive_missing_xml IS 'Invoices without their XML (the legal original) in the archive: still being fetched, failed (with the last error), or no link from the platform.';

-- Files still to fetch or given up on (every kind), for the operator.
CREATE OR REPLACE VIEW cdc_invoice.report_archive_open AS
SELECT f.invoice_id, i.invoice_number, f.kind, f.state, f.attempts,
       CASE WHEN f.state = 'pending' THEN f.run_after END AS next_try,
       f.last_error, f.source_url, f.created_at
  FROM cdc_invoice.invoice_file_fetch f
  JOIN cdc_invoice.invoice i ON i.id = f.invoice_id
 WHERE f.state <> 'done';
COMMENT ON VIEW cdc_invoice.report_archive_open IS 'Invoice files not archived yet: pending (with the next try) or failed after daemon.archive_max_attempts (fix: cdc-invoice archive retry).';

-- The alert: an archived XML that does not say what we recorded. Never overwritten either way.
CREATE OR REPLACE VIEW cdc_invoice.report_archive_mismatches AS
SELECT a.invoice_id, i.invoice_number, i.kind, i.issued_at, a.kind AS file_kind,
       a.check_detail, a.fetched_at, a.sha256, a.source_url
  FROM cdc_invoice.invoice_file a
  JOIN cdc_invoice.invoice i ON i.id = a.invoice_id
 WHERE a.check_result = 'mismatch';
COMMENT ON VIEW cdc_invoice.report_archive_mismatches IS 'Archived files whose content differs from the recorded invoice (number, date, seller/buyer tax numbers, amounts): investigate with the platform.';

-- Every archived file with what finance hands to auditors next to it (`cdc-invoice archive
-- export` writes this as the index CSV); month is the issue month in China time.
CREATE OR REPLACE VIEW cdc_invoice.report_archive_files AS
SELECT a.id AS file_id, a.invoice_id, i.invoice_number, i.kind AS invoice_kind,
       i.issued_at, to_char(i.issued_at AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM') AS month,
       (i.issued_at AT TIME ZONE 'Asia/Shanghai')::date AS issue_date,
       s.tax_number AS seller_tax_number, i.buyer_name, i.buyer_tax_number,
       i.total_excl_tax, i.total_tax, i.total_incl_tax,
       o.invoice_number AS original_invoice_number,
       a.kind AS file_kind, a.size, a.sha256, a.path, a.fetched_at, a.source_url,
       a.check_result, a.check_detail
  FROM cdc_invoice.invoice_file a
  JOIN cdc_invoice.invoice i ON i.id = a.invoice_id
  JOIN cdc_invoice.seller s ON s.seller_id = i.seller_id
  LEFT JOIN cdc_invoice.invoice o ON o.id = i.original_invoice_id;
COMMENT ON VIEW cdc_invoice.report_archive_files IS 'Archived invoice files (bytes, or path under daemon.archive_dir) (the bytes themselves: cdc_invoice.invoice_file) with the invoice they belong to, its month (Asia/Shanghai), parties and totals.';

-- Grants on the archive's tables: sql/roles.sql (applied last, with the installation's role prefix).
