-- 0010: the installation tag is bound to its cluster and database; daemons record their sellers.
--
-- A restored copy of the database (pg_dump/restore, CREATE DATABASE … TEMPLATE) kept
-- production's installation tag and so issued under production's platform order numbers. The
-- tag is now bound to the cluster's system identifier and the database name; the daemon
-- refuses to start elsewhere until a DBA runs SELECT cdc_invoice.retag(). An upgrade binds the
-- tag to the database being upgraded (this one: the production it runs on).
ALTER TABLE cdc_invoice.installation ADD COLUMN system_identifier bigint,
                                     ADD COLUMN database_name text;
UPDATE cdc_invoice.installation
   SET system_identifier = (SELECT s.system_identifier FROM pg_control_system() s),
       database_name = current_database();

-- Each daemon claims only the work of sellers it has credentials for; `status` shows pending
-- work no live daemon can take. NULL: a daemon of an older version (takes any seller's work).
ALTER TABLE cdc_invoice.daemon ADD COLUMN sellers text[];

-- request_delivery() now refuses a phone the platform cannot deliver to (deliveryInvoice: a
-- mobile number, at most 11 characters). One queued before the upgrade crashed the worker on
-- every lease: it ends here, failed with the reason and the fix, and is never sent.
WITH bad AS (
    UPDATE cdc_invoice.request r
       SET state = 'failed', claimed_by = NULL, lease_until = NULL,
           last_error = format('phone %s is not a mobile number (11 digits starting with 1)',
                               quote_literal(r.params ->> 'phone')),
           error_code = 'INVALID_PHONE',
           hint = 'ask again with a mobile number (or NULL and an email): SELECT cdc_invoice.request_delivery(''<invoice number>'', ''<email>'', ''13800138000'')',
           updated_at = now(), done_at = now()
     WHERE r.kind = 'deliver' AND r.state IN ('pending', 'claimed')
       AND nullif(btrim(r.params ->> 'phone'), '') IS NOT NULL
       AND btrim(r.params ->> 'phone') !~ '^1[0-9]{10}$'
    RETURNING r.id, r.invoice_id, r.source, r.order_ref, r.last_error
)
INSERT INTO cdc_invoice.event (request_id, invoice_id, source, order_ref, event, detail)
SELECT b.id, b.invoice_id, b.source, b.order_ref, 'request.failed',
       jsonb_build_object('error', b.last_error, 'code', 'INVALID_PHONE', 'by', 'migration 5')
  FROM bad b;

INSERT INTO cdc_invoice.schema_version (version, description) VALUES (10, 'lifecycle edges');
