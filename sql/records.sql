-- Recorded invoices are tamper-evident. Re-applied on every install (CREATE OR REPLACE); the
-- triggers are created only when missing, so a no-op install takes no lock on these tables.
--
-- An invoice row is the record of what the platform issued: after insert its number, parties,
-- amounts and lines never change (a correction is a red invoice: request_reversal). The columns
-- the daemon updates as the invoice lives on (status, delivery_status, the file URLs, and any
-- column added later) are not in the FROZEN list below, so they stay updatable; status changes
-- leave their event through the lifecycle. Refusals use SQLSTATE CI006 (not allowed) with a HINT.
-- A superuser can still bypass triggers (session_replication_role = replica): the event log
-- and `cdc-invoice reconcile` (local vs. platform) are what show such an edit.

CREATE OR REPLACE FUNCTION cdc_invoice.invoice_frozen() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- Guard by listing what is frozen, never what is allowed: a new column stays updatable.
    frozen  CONSTANT text[] := ARRAY[
        'id', 'request_id', 'part', 'source', 'order_ref', 'seller_id', 'invoice_number', 'kind',
        'invoice_line', 'original_invoice_id', 'platform_serial', 'platform_order_no',
        'issued_at', 'recorded_at', 'buyer_name', 'buyer_tax_number', 'buyer_email',
        'buyer_phone', 'total_excl_tax', 'total_tax', 'total_incl_tax', 'paper_code',
        'paper_number'];
    changed text[];
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'invoice % is the record of an issued invoice: DELETE refused', OLD.invoice_number
            USING ERRCODE = 'CI006',
                  HINT = 'Cancel it at the platform with a red invoice: SELECT cdc_invoice.request_reversal(<invoice number>, <reason>).';
    END IF;
    SELECT array_agg(k ORDER BY k) INTO changed
      FROM unnest(frozen) k
     WHERE to_jsonb(OLD) -> k IS DISTINCT FROM to_jsonb(NEW) -> k;
    IF changed IS NOT NULL THEN
        RAISE EXCEPTION 'invoice % is the record of an issued invoice: % cannot change',
                        OLD.invoice_number, array_to_string(changed, ', ')
            USING ERRCODE = 'CI006',
                  HINT = 'Correct an issued invoice with a red invoice (SELECT cdc_invoice.request_reversal(...)); only status, delivery and file columns are updated, by the daemon.';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION cdc_invoice.record_frozen() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_TABLE_NAME = 'event' THEN
        RAISE EXCEPTION 'cdc_invoice.event is append-only (% refused)', TG_OP
            USING ERRCODE = 'CI006', HINT = 'Record a correction as a new event instead.';
    END IF;
    RAISE EXCEPTION 'cdc_invoice.% rows are records of issued invoices (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'CI006',
              HINT = 'Correct an issued invoice with a red invoice: SELECT cdc_invoice.request_reversal(...).';
END $$;

DO $$
BEGIN
    -- Only when missing: CREATE TRIGGER locks the table, and install runs at every daemon start.
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'cdc_invoice.invoice'::regclass
                                              AND tgname = 'invoice_frozen') THEN
        -- UPDATE OF: the daemon's status/URL updates never call the function.
        CREATE TRIGGER invoice_frozen
            BEFORE UPDATE OF id, request_id, part, source, order_ref, seller_id, invoice_number,
                             kind, invoice_line, original_invoice_id, platform_serial,
                             platform_order_no, issued_at, recorded_at, buyer_name,
                             buyer_tax_number, buyer_email, buyer_phone, total_excl_tax,
                             total_tax, total_incl_tax, paper_code, paper_number
                   OR DELETE ON cdc_invoice.invoice
            FOR EACH ROW EXECUTE FUNCTION cdc_invoice.invoice_frozen();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'cdc_invoice.invoice'::regclass
                                              AND tgname = 'invoice_no_truncate') THEN
        CREATE TRIGGER invoice_no_truncate BEFORE TRUNCATE ON cdc_invoice.invoice
            FOR EACH STATEMENT EXECUTE FUNCTION cdc_invoice.record_frozen();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'cdc_invoice.invoice_line'::regclass
                                              AND tgname = 'invoice_line_frozen') THEN
        CREATE TRIGGER invoice_line_frozen BEFORE UPDATE OR DELETE ON cdc_invoice.invoice_line
            FOR EACH ROW EXECUTE FUNCTION cdc_invoice.record_frozen();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'cdc_invoice.invoice_line'::regclass
                                              AND tgname = 'invoice_line_no_truncate') THEN
        CREATE TRIGGER invoice_line_no_truncate BEFORE TRUNCATE ON cdc_invoice.invoice_line
            FOR EACH STATEMENT EXECUTE FUNCTION cdc_invoice.record_frozen();
    END IF;
    -- UPDATE and DELETE of events are refused by api.sql's event_append_only.
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'cdc_invoice.event'::regclass
                                              AND tgname = 'event_no_truncate') THEN
        CREATE TRIGGER event_no_truncate BEFORE TRUNCATE ON cdc_invoice.event
            FOR EACH STATEMENT EXECUTE FUNCTION cdc_invoice.record_frozen();
    END IF;
END $$;
