-- Report views (cdc_invoice.report_*), re-applied on every install. Readable by the reader role (roles.sql).

CREATE OR REPLACE VIEW cdc_invoice.report_daily AS
SELECT date_trunc('day', i.issued_at AT TIME ZONE 'Asia/Shanghai')::date AS day,
       i.seller_id, i.kind, l.tax_rate,
       count(DISTINCT i.id)     AS invoices,
       sum(l.amount_excl_tax)   AS amount_excl_tax,
       sum(l.tax)               AS tax,
       sum(l.amount_incl_tax)   AS amount_incl_tax
  FROM cdc_invoice.invoice i
  JOIN cdc_invoice.invoice_line l ON l.invoice_id = i.id
 WHERE i.status <> 'voided'
 GROUP BY 1, 2, 3, 4;
COMMENT ON VIEW cdc_invoice.report_daily IS 'Invoiced amounts per day (Asia/Shanghai), seller, kind and tax rate; voided excluded.';

CREATE OR REPLACE VIEW cdc_invoice.report_monthly AS
SELECT date_trunc('month', day)::date AS month, seller_id, kind, tax_rate,
       sum(invoices) AS invoices, sum(amount_excl_tax) AS amount_excl_tax,
       sum(tax) AS tax, sum(amount_incl_tax) AS amount_incl_tax
  FROM cdc_invoice.report_daily
 GROUP BY 1, 2, 3, 4;
COMMENT ON VIEW cdc_invoice.report_monthly IS 'Invoiced amounts per month, seller, kind and tax rate.';

CREATE OR REPLACE VIEW cdc_invoice.report_backlog AS
SELECT source, kind, state, count(*) AS requests,
       min(created_at) AS oldest, now() - min(created_at) AS oldest_age
  FROM cdc_invoice.request
 WHERE state IN ('pending', 'claimed', 'submitted')
 GROUP BY 1, 2, 3;
COMMENT ON VIEW cdc_invoice.report_backlog IS 'Requests not finished yet, with the age of the oldest.';

CREATE OR REPLACE VIEW cdc_invoice.report_failures AS
SELECT r.id AS request_id, r.source, r.order_ref, r.kind, r.error_code, r.last_error, r.hint,
       r.attempt, r.updated_at AS failed_at,
       format('SELECT cdc_invoice.retry(%s);', r.id) AS retry_sql
  FROM cdc_invoice.request r
 WHERE r.state = 'failed';
COMMENT ON VIEW cdc_invoice.report_failures IS 'Failed requests with the reason, the fix and the SQL to retry once fixed.';

CREATE OR REPLACE VIEW cdc_invoice.report_register AS
SELECT i.invoice_number, i.kind, o.invoice_number AS original_invoice_number, i.status,
       i.issued_at, i.source, i.order_ref, i.seller_id, i.buyer_name, i.buyer_tax_number,
       i.total_excl_tax, i.total_tax, i.total_incl_tax, i.pdf_url, i.platform_serial,
       i.remark
  FROM cdc_invoice.invoice i
  LEFT JOIN cdc_invoice.invoice o ON o.id = i.original_invoice_id;
COMMENT ON VIEW cdc_invoice.report_register IS 'Every invoice issued, blue and red, with its remark (备注).';

CREATE OR REPLACE VIEW cdc_invoice.report_by_buyer AS
SELECT date_trunc('month', i.issued_at AT TIME ZONE 'Asia/Shanghai')::date AS month,
       i.seller_id, i.buyer_name, i.buyer_tax_number, i.kind,
       count(*)              AS invoices,
       sum(i.total_excl_tax) AS amount_excl_tax,
       sum(i.total_tax)      AS tax,
       sum(i.total_incl_tax) AS amount_incl_tax
  FROM cdc_invoice.invoice i
 WHERE i.status <> 'voided'
 GROUP BY 1, 2, 3, 4, 5;
COMMENT ON VIEW cdc_invoice.report_by_buyer IS 'Invoiced amounts per month (Asia/Shanghai), seller, buyer and kind; voided excluded.';

CREATE OR REPLACE VIEW cdc_invoice.report_open AS
SELECT r.id AS request_id, r.source, r.order_ref, r.kind, r.state, r.attempt,
       r.created_at, now() - r.created_at AS age,
       -- when a retry (after a backoff) or a result poll is due; NULL while a daemon works on it
       CASE WHEN r.claimed_by IS NULL AND r.run_after > now() THEN r.run_after END AS next_try,
       r.error_code, r.last_error
  FROM cdc_invoice.request r
 WHERE r.state IN ('pending', 'claimed', 'submitted', 'failed');
COMMENT ON VIEW cdc_invoice.report_open IS 'Requests not finished, one row each: orders not invoiced yet (kind issue), reversals and deliveries under way, failures.';

-- Every report view, present and future, is readable by the reader role: roles.sql grants it
-- (applied after this file, with the installation's role names).
