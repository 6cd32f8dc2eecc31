-- Named queries of cdc_invoice/capture (attach, preview, backfill, sources).
-- The work is done by the SQL functions of sql/api.sql and sql/ops.sql.

-- name: attach
SELECT cdc_invoice.attach(source => %(source)s, order_table => %(order_table)s,
                          order_key => %(order_key)s, issue_when => %(issue_when)s,
                          document => %(document)s, seller => %(seller)s,
                          reverse_when => %(reverse_when)s);

-- name: detach
SELECT cdc_invoice.detach(%(source)s);

-- name: sources
SELECT source, order_table, table_exists, order_key, issue_when, reverse_when, document,
       document_exists, seller_id, trigger_state, triggers, queued, failed, attached_at
  FROM cdc_invoice.sources();

-- name: order_document
-- The document as JSON text (exact numbers): parsed by the caller with the daemon's loader,
-- shown as is by preview --raw.
SELECT jsonb_pretty(document), meets_issue_when, seller_id, request_id, request_state
  FROM cdc_invoice.order_document(%(source)s, %(order_ref)s);

-- name: backfill_total
SELECT cdc_invoice.backfill_total(%(source)s, %(since)s, %(since_column)s);

-- name: backfill_batch
SELECT scanned, eligible, queued_before, enqueued, last_key
  FROM cdc_invoice.backfill_batch(%(source)s, %(after_key)s, %(batch_size)s, %(since)s,
                                  %(since_column)s, %(dry_run)s, %(condition)s);

-- name: backfill_finish
SELECT cdc_invoice.backfill_finish(%(source)s, %(scanned)s, %(enqueued)s, %(since)s,
                                   %(since_column)s, %(condition)s);
