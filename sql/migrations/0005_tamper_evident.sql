-- 0005: tamper-evident records, the request lookups by invoice and platform serial, and
-- per-database role names.
--
-- The guard triggers themselves (an invoice's number, parties, amounts and lines cannot change
-- after insert; invoice lines, invoices and events refuse DELETE and TRUNCATE) are in the
-- re-applied sql/records.sql, applied right after the migrations.
--
-- request.invoice_id is looked up by the lifecycle (is a request of this invoice in progress?)
-- and request.platform_serial by a platform callback (callback_hint): without an index each
-- lookup read the whole request table. Partial: issue requests, most of them, have no
-- invoice_id, and a request has a serial only once submitted.
CREATE INDEX request_invoice_idx ON cdc_invoice.request (invoice_id)
    WHERE invoice_id IS NOT NULL;
CREATE INDEX request_platform_serial_idx ON cdc_invoice.request (platform_serial)
    WHERE platform_serial IS NOT NULL;

-- Per-database role names (roles.sql): the prefix chosen at the first install.
ALTER TABLE cdc_invoice.installation
    ADD COLUMN role_prefix text NOT NULL DEFAULT 'cdc_invoice_'
        CHECK (role_prefix ~ '^[a-z_][a-z0-9_]{0,40}$');

INSERT INTO cdc_invoice.schema_version (version, description) VALUES (5, 'tamper evident');
