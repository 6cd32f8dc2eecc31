-- Roles (cluster-wide, NOLOGIN; grant them to login roles). Re-applied on every install.
--   cdc_invoice_daemon    what the daemon needs and no more (no access to inventory tables)
--   cdc_invoice_operator  the request_* / retry functions, plus reading
--   cdc_invoice_reader    the report views
-- On managed services the installer may lack CREATEROLE: then the roles are skipped with a
-- NOTICE and the DBA creates them (same names) before running install again.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['cdc_invoice_daemon', 'cdc_invoice_operator', 'cdc_invoice_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE NOTICE 'cannot create role % (needs CREATEROLE); create it and re-run install', r;
            END;
        END IF;
    END LOOP;
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cdc_invoice_reader') THEN
        GRANT USAGE ON SCHEMA cdc_invoice TO cdc_invoice_reader;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cdc_invoice_operator') THEN
        GRANT USAGE ON SCHEMA cdc_invoice TO cdc_invoice_operator;
        GRANT cdc_invoice_reader TO cdc_invoice_operator;
        GRANT EXECUTE ON FUNCTION cdc_invoice.retry(bigint), cdc_invoice.retry_failed(text),
            cdc_invoice.request_reversal(text, text, jsonb), cdc_invoice.request_void(text, text),
            cdc_invoice.request_delivery(text, text, text), cdc_invoice.request_refresh(text)
            TO cdc_invoice_operator;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cdc_invoice_daemon') THEN
        GRANT USAGE ON SCHEMA cdc_invoice TO cdc_invoice_daemon;
        GRANT SELECT ON cdc_invoice.schema_version, cdc_invoice.installation, cdc_invoice.seller,
                        cdc_invoice.item_tax, cdc_invoice.buyer, cdc_invoice.source
            TO cdc_invoice_daemon;
        GRANT SELECT, INSERT, UPDATE ON cdc_invoice.request, cdc_invoice.invoice,
                        cdc_invoice.invoice_line, cdc_invoice.provider_token, cdc_invoice.daemon
            TO cdc_invoice_daemon;
        GRANT SELECT, INSERT ON cdc_invoice.event, cdc_invoice.reconciliation TO cdc_invoice_daemon;
        -- the shared platform request rate (issue 17; the table is version 5's)
        IF to_regclass('cdc_invoice.rate_bucket') IS NOT NULL THEN
            GRANT SELECT, INSERT, UPDATE ON cdc_invoice.rate_bucket TO cdc_invoice_daemon;
        END IF;
        GRANT EXECUTE ON FUNCTION
            cdc_invoice.take_rate_token(text, double precision, double precision)
            TO cdc_invoice_daemon;
        -- a whole-order reversal (attach's reverse_when) becomes one request per invoice
        GRANT EXECUTE ON FUNCTION cdc_invoice.request_reversal(text, text, jsonb),
            cdc_invoice.platform_order_no(bigint, integer) TO cdc_invoice_daemon;
    END IF;
END $$;
-- Everything else in the schema is reachable only through these grants: no PUBLIC access to
-- the schema, and no PUBLIC EXECUTE on its functions (PostgreSQL's default), including the
-- capture functions attach() creates later (firing a trigger needs no EXECUTE right).
REVOKE ALL ON SCHEMA cdc_invoice FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cdc_invoice FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA cdc_invoice REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
