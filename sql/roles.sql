-- Roles (NOLOGIN; grant them to login roles). Re-applied on every install, after every other
-- file: it owns every GRANT on the schema.
--   <prefix>daemon    what the daemon needs and no more (no access to inventory tables)
--   <prefix>operator  the request_* / retry / cancel functions, plus reading
--   <prefix>reader    the report views
-- Roles are cluster-wide: with the default prefix 'cdc_invoice_' a member of cdc_invoice_operator
-- may act in every database of the cluster that has cdc-invoice. A per-database prefix
-- (`cdc-invoice install --role-prefix inventory_invoice_`, or the cdc_invoice.role_prefix
-- setting before this file) gives each database roles of its own; it is kept in
-- cdc_invoice.installation and used by every later install.
-- On managed services the installer may lack CREATEROLE: then the roles are skipped with a
-- NOTICE and the DBA creates them (same names) before running install again.
CREATE OR REPLACE FUNCTION cdc_invoice.role_name(p_kind text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT i.role_prefix || p_kind FROM cdc_invoice.installation i
$$;

DO $$
DECLARE
    v_asked  text := nullif(current_setting('cdc_invoice.role_prefix', true), '');
    v_stored text := (SELECT i.role_prefix FROM cdc_invoice.installation i);
BEGIN
    IF v_asked IS NULL OR v_asked = v_stored THEN
        RETURN;
    END IF;
    IF v_asked !~ '^[a-z_][a-z0-9_]{0,40}$' THEN
        RAISE EXCEPTION 'role prefix % is not usable', quote_literal(v_asked)
            USING ERRCODE = 'CI001',
                  HINT = 'Use lower-case letters, digits and _ (up to 41 characters), e.g. inventory_invoice_.';
    END IF;
    -- Changing it later would leave the old roles holding their grants: refuse, say how.
    IF EXISTS (SELECT 1 FROM cdc_invoice.invoice) OR v_stored <> 'cdc_invoice_'
       OR EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_stored || 'daemon'
                     AND has_schema_privilege(rolname, 'cdc_invoice', 'USAGE')) THEN
        RAISE EXCEPTION 'cdc_invoice is installed with role prefix %, not %', quote_literal(v_stored),
                        quote_literal(v_asked)
            USING ERRCODE = 'CI006',
                  HINT = 'Choose the prefix at the first install; run install without --role-prefix to keep the current one.';
    END IF;
    UPDATE cdc_invoice.installation SET role_prefix = v_asked;
END $$;

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY[cdc_invoice.role_name('daemon'), cdc_invoice.role_name('operator'),
                             cdc_invoice.role_name('reader')] LOOP
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
DECLARE
    v_reader   text := cdc_invoice.role_name('reader');
    v_operator text := cdc_invoice.role_name('operator');
    v_daemon   text := cdc_invoice.role_name('daemon');
    v          name;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_reader) THEN
        EXECUTE format('GRANT USAGE ON SCHEMA cdc_invoice TO %I', v_reader);
        -- Every report view, present and future, and the views finance reads beside them.
        FOR v IN SELECT viewname FROM pg_views
                  WHERE schemaname = 'cdc_invoice'
                    AND (viewname LIKE 'report\_%' OR viewname IN ('pending_red_slips', 'pending_buyer_red_slips')) LOOP
            EXECUTE format('GRANT SELECT ON cdc_invoice.%I TO %I', v, v_reader);
        END LOOP;
        -- what the finance guide and the functions' hints tell finance to read: an invoice's
        -- lines (line_no for a partial reversal) and the attached sources
        EXECUTE format('GRANT SELECT ON cdc_invoice.invoice, cdc_invoice.invoice_line, cdc_invoice.source TO %I',
                       v_reader);
        -- the invoice-file archive: finance and auditors read the files
        EXECUTE format('GRANT SELECT ON cdc_invoice.invoice_file, cdc_invoice.invoice_file_fetch TO %I',
                       v_reader);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_operator) THEN
        EXECUTE format('GRANT USAGE ON SCHEMA cdc_invoice TO %I', v_operator);
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_reader) THEN
            EXECUTE format('GRANT %I TO %I', v_reader, v_operator);
        END IF;
        EXECUTE format('GRANT EXECUTE ON FUNCTION cdc_invoice.retry(bigint), cdc_invoice.retry_failed(text),
            cdc_invoice.request_reversal(text, text, jsonb), cdc_invoice.request_void(text, text),
            cdc_invoice.request_delivery(text, text, text), cdc_invoice.request_refresh(text),
            cdc_invoice.confirm_red_slip(text, boolean), cdc_invoice.cancel(bigint, text)
            TO %I', v_operator);
        -- `cdc-invoice archive retry` puts failed fetches back
        EXECUTE format('GRANT UPDATE (state, attempts, run_after, last_error, updated_at)
            ON cdc_invoice.invoice_file_fetch TO %I', v_operator);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_daemon) THEN
        EXECUTE format('GRANT USAGE ON SCHEMA cdc_invoice TO %I', v_daemon);
        EXECUTE format('GRANT SELECT ON cdc_invoice.schema_version, cdc_invoice.installation,
                        cdc_invoice.seller, cdc_invoice.item_tax, cdc_invoice.buyer,
                        cdc_invoice.source TO %I', v_daemon);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON cdc_invoice.request, cdc_invoice.invoice,
                        cdc_invoice.invoice_line, cdc_invoice.provider_token, cdc_invoice.daemon
                        TO %I', v_daemon);
        EXECUTE format('GRANT SELECT, INSERT ON cdc_invoice.event, cdc_invoice.reconciliation TO %I',
                       v_daemon);
        -- buyer-initiated red-letter slips: copied from the platform, answered by the daemon
        IF to_regclass('cdc_invoice.buyer_red_slip') IS NOT NULL THEN
            EXECUTE format('GRANT SELECT, INSERT, UPDATE ON cdc_invoice.buyer_red_slip TO %I', v_daemon);
        END IF;
        -- the shared platform request rate (issue 17)
        IF to_regclass('cdc_invoice.rate_bucket') IS NOT NULL THEN
            EXECUTE format('GRANT SELECT, INSERT, UPDATE ON cdc_invoice.rate_bucket TO %I', v_daemon);
        END IF;
        EXECUTE format('GRANT EXECUTE ON FUNCTION
            cdc_invoice.take_rate_token(text, double precision, double precision) TO %I', v_daemon);
        -- a whole-order reversal (attach's reverse_when) becomes one request per invoice
        EXECUTE format('GRANT EXECUTE ON FUNCTION cdc_invoice.request_reversal(text, text, jsonb),
            cdc_invoice.platform_order_no(bigint, integer) TO %I', v_daemon);
        -- the archiver appends files and works its fetch queue
        EXECUTE format('GRANT SELECT, INSERT ON cdc_invoice.invoice_file TO %I', v_daemon);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON cdc_invoice.invoice_file_fetch TO %I', v_daemon);
    END IF;
END $$;
-- Everything else in the schema is reachable only through these grants: no PUBLIC access to
-- the schema, and no PUBLIC EXECUTE on its functions (PostgreSQL's default), including the
-- capture functions attach() creates later (firing a trigger needs no EXECUTE right).
REVOKE ALL ON SCHEMA cdc_invoice FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cdc_invoice FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA cdc_invoice REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
