-- cdc-invoice functions. Re-applied (CREATE OR REPLACE) on every install and upgrade.
-- Errors use SQLSTATE class 'CI' with a HINT a DBA can act on:
--   CI001 bad argument   CI002 missing object   CI003 document view lacks columns
--   CI004 bad expression CI005 not found        CI006 not allowed

-- The audit log is append-only: corrections are new events, never edits.
CREATE OR REPLACE FUNCTION cdc_invoice.event_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'cdc_invoice.event is append-only (% refused)', TG_OP
        USING ERRCODE = 'CI006', HINT = 'Record a correction as a new event instead.';
END $$;

DROP TRIGGER IF EXISTS event_append_only ON cdc_invoice.event;
CREATE TRIGGER event_append_only BEFORE UPDATE OR DELETE ON cdc_invoice.event
    FOR EACH ROW EXECUTE FUNCTION cdc_invoice.event_append_only();

-- The platform order number (idempotency key) of a request: 'CI', the installation's tag, the
-- generation (0-9A-Z) and the request id: 18 characters, plus a 2-digit part when sent (the
-- platform's orderNo takes 20). 36 generations, never wrapped: a wrapped generation would reuse
-- an order number the platform has seen (retry() refuses before that; this is the last guard).
CREATE OR REPLACE FUNCTION cdc_invoice.platform_order_no(p_id bigint, p_generation integer)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_generation NOT BETWEEN 0 AND 35 THEN
        RAISE EXCEPTION 'request % has used all 36 platform order numbers (generation %)', p_id, p_generation
            USING ERRCODE = 'CI006',
                  HINT = 'the platform refused this order 35 times: cancel the request and invoice the order by hand';
    END IF;
    RETURN (SELECT 'CI' || i.tag || substr('0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ', p_generation + 1, 1)
                   || lpad(p_id::text, 11, '0')
              FROM cdc_invoice.installation i);
END $$;

-- Names of the objects attach() generates for a source: derived from a hash of the source
-- name, so any source name (quotes, spaces, Chinese) yields safe, short identifiers.
CREATE OR REPLACE FUNCTION cdc_invoice.object_name(source text, suffix text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'cdc_invoice_' || substr(md5(source), 1, 12) || '_' || suffix
$$;

-- The document snapshot of one order as an SQL expression: the view's rows for the order key
-- given by key_expr (e.g. NEW."order_id"), as a json array of the rows: json_agg, not jsonb,
-- because the capture trigger builds it inside the inventory's transaction and json costs ~15 %
-- less there (docs/benchmarks.md). The capture trigger, backfill and preview all embed this
-- one expression, so numbers take the same path
-- everywhere (a real 9.65 becomes the JSON number 9.65 -- its shortest round-trip decimal -- and
-- the daemon reads JSON numbers as Decimal). order_ref is compared with the key natively when
-- the types allow it (same type, an = operator between them such as smallint = integer, or
-- two string types), so an index on the order key serves the query; otherwise as text.
CREATE OR REPLACE FUNCTION cdc_invoice._document_sql(view regclass, tbl regclass, key text, key_expr text)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_ref    oid;
    v_key    oid;
    v_native boolean;
BEGIN
    SELECT a.atttypid INTO v_ref FROM pg_attribute a
     WHERE a.attrelid = view AND a.attname = 'order_ref' AND NOT a.attisdropped;
    SELECT a.atttypid INTO v_key FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = key AND NOT a.attisdropped;
    v_native := v_ref = v_key
        OR EXISTS (SELECT 1 FROM pg_operator o
                    WHERE o.oprname = '=' AND o.oprleft = v_ref AND o.oprright = v_key)
        OR ((SELECT t.typcategory FROM pg_type t WHERE t.oid = v_ref) = 'S'
            AND (SELECT t.typcategory FROM pg_type t WHERE t.oid = v_key) = 'S');
    RETURN format('coalesce((SELECT json_agg(d) FROM %s d WHERE %s), ''[]''::json)',
                  view,
                  CASE WHEN v_native THEN format('d.order_ref = %s', key_expr)
                       ELSE format('d.order_ref::text = (%s)::text', key_expr) END);
END $$;

-- attach(): capture completed orders of one table. Idempotent: attaching again with the same
-- or new arguments replaces the triggers. Nothing in the inventory schema changes except the
-- triggers on order_table.
--
--   source       a name for this order stream (1-40 characters, any)
--   order_table  the order table, as regclass text ('public.orders', '"销售单"')
--   order_key    the key column's exact name ('order_id', '单号')
--   issue_when   SQL boolean over NEW (and OLD on UPDATE): when an order is complete
--   document     view with one row per invoice line (see the canonical columns in the docs)
--   seller       cdc_invoice.seller.seller_id
--   reverse_when optional SQL boolean: when a full red-letter reversal is requested
--
-- order_key must be unique (a primary key or unique constraint/index on exactly that column).
-- A partitioned order table works as is (PostgreSQL 13+) when partitioned by the order key
-- (the only way its key can be unique): its triggers are cloned to every partition, including
-- partitions created or attached later. An UPDATE that moves a row to another partition fires
-- the INSERT trigger (OLD is NULL there), so issue_when should hold when OLD is NULL, as it
-- must anyway for orders inserted already complete.
CREATE OR REPLACE FUNCTION cdc_invoice.attach(
    source       text,
    order_table  text,
    order_key    text,
    issue_when   text,
    document     text,
    seller       text,
    reverse_when text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_table      regclass;
    v_view       regclass;
    v_key_type   text;
    v_missing    text[];
    v_money      text[];
    v_fn         text := cdc_invoice.object_name(attach.source, 'capture');
    v_snapshot   text;
    v_old_refs   boolean;
    -- item_name is what the invoice prints; nothing else can stand in for it.
    v_required   text[] := ARRAY['order_ref', 'line_no', 'item_name', 'quantity', 'unit_price'];
    v_cols       text[];
    v_not_unique text;
BEGIN
    IF attach.source IS NULL OR length(attach.source) NOT BETWEEN 1 AND 40 THEN
        RAISE EXCEPTION 'source name must be 1 to 40 characters, got %', quote_nullable(attach.source)
            USING ERRCODE = 'CI001', HINT = 'Pick a short name for the order stream, e.g. ''shop''.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM cdc_invoice.seller s WHERE s.seller_id = attach.seller) THEN
        RAISE EXCEPTION 'seller % does not exist', quote_nullable(attach.seller)
            USING ERRCODE = 'CI002',
                  HINT = 'INSERT INTO cdc_invoice.seller (seller_id, tax_number, name) VALUES (...) first.';
    END IF;
    IF EXISTS (SELECT 1 FROM cdc_invoice.seller s WHERE s.seller_id = attach.seller AND s.clerk IS NULL) THEN
        -- no default 开票员: the platform wants the issuing account's (requestBillingNew clerk)
        RAISE WARNING 'seller % has no clerk (开票人): its orders will fail until it is set', attach.seller
            USING HINT = format('UPDATE cdc_invoice.seller SET clerk = ''<开票员姓名>'' WHERE seller_id = %L;', attach.seller);
    END IF;

    BEGIN
        v_table := order_table::regclass;
    EXCEPTION WHEN invalid_name OR undefined_table OR invalid_schema_name OR syntax_error THEN
        RAISE EXCEPTION 'order table % does not exist', quote_nullable(order_table)
            USING ERRCODE = 'CI002',
                  HINT = 'Give it as regclass text: schema.table, with double quotes around mixed-case names.';
    END;
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = v_table) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', v_table USING ERRCODE = 'CI001',
            HINT = 'Attach the table the application updates, not a view.';
    END IF;

    SELECT format_type(a.atttypid, a.atttypmod) INTO v_key_type
      FROM pg_attribute a
     WHERE a.attrelid = v_table AND a.attname = order_key AND a.attnum > 0 AND NOT a.attisdropped;
    IF v_key_type IS NULL THEN
        RAISE EXCEPTION 'column % does not exist in %', quote_nullable(order_key), v_table
            USING ERRCODE = 'CI002', HINT = 'order_key is the exact column name, without quotes.';
    END IF;
    -- One row per key, enforced by the database: with two rows under one key the document
    -- view mixes both orders' lines into one invoice and the second shipment finds the request
    -- taken. A primary key or a unique constraint/index on exactly this column (valid, not
    -- partial, no expression; INCLUDE columns are fine). On a partitioned table PostgreSQL
    -- requires the partition key in every unique index, so only a table partitioned by the
    -- order key itself qualifies: (id, day) unique lets id 1 exist once per day.
    IF NOT EXISTS (SELECT 1 FROM pg_index i
                    WHERE i.indrelid = v_table AND i.indisunique AND i.indisvalid
                      AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = 1
                      AND i.indkey[0] = (SELECT a.attnum FROM pg_attribute a
                                          WHERE a.attrelid = v_table AND a.attname = order_key)) THEN
        v_not_unique := CASE WHEN (SELECT c.relkind FROM pg_class c WHERE c.oid = v_table) = 'p'
            THEN format('%s is partitioned: a unique constraint must contain the partition key, so %s can be unique only if the table is partitioned by it (PARTITION BY RANGE/LIST/HASH (%s)). Two orders with one key would be invoiced as one.',
                        v_table, quote_ident(order_key), quote_ident(order_key))
            ELSE format('ALTER TABLE %s ADD UNIQUE (%s); -- fails, listing them, if two orders share a key: the key must name one order',
                        v_table, quote_ident(order_key)) END;
        -- A source attached so before this check existed (re-attached by every upgrade) keeps
        -- capturing: refusing to refresh its triggers would stop its orders, or the upgrade.
        IF NOT EXISTS (SELECT 1 FROM cdc_invoice.source s
                        WHERE s.source = attach.source AND s.order_table = v_table::text
                          AND s.order_key = attach.order_key) THEN
            RAISE EXCEPTION 'order_key % of % is not unique: no primary key or unique constraint on exactly that column',
                            quote_ident(order_key), v_table
                USING ERRCODE = 'CI001', HINT = v_not_unique;
        END IF;
        RAISE WARNING 'source %: order_key % of % is not unique; two orders with one key are invoiced as one',
                      attach.source, quote_ident(order_key), v_table USING HINT = v_not_unique;
    END IF;

    BEGIN
        v_view := document::regclass;
    EXCEPTION WHEN invalid_name OR undefined_table OR invalid_schema_name OR syntax_error THEN
        RAISE EXCEPTION 'document view % does not exist', quote_nullable(document)
            USING ERRCODE = 'CI002', HINT = 'CREATE VIEW it first; see the DBA guide for its columns.';
    END;
    SELECT array_agg(a.attname::text) INTO v_cols
      FROM pg_attribute a WHERE a.attrelid = v_view AND a.attnum > 0 AND NOT a.attisdropped;
    SELECT array_agg(r) INTO v_missing FROM unnest(v_required) r WHERE r <> ALL (v_cols);
    IF NOT (v_cols && ARRAY['customer_ref', 'buyer_name']) THEN
        v_missing := v_missing || 'customer_ref or buyer_name'::text;
    END IF;
    IF v_missing IS NOT NULL AND cardinality(v_missing) > 0 THEN
        RAISE EXCEPTION 'document view % lacks column(s): %', v_view, array_to_string(v_missing, ', ')
            USING ERRCODE = 'CI003',
                  HINT = 'Alias the view''s columns to the canonical names (order_ref, line_no, item_ref, quantity, unit_price, customer_ref, ...).';
    END IF;
    -- to_jsonb() writes a money value as text in the server's lc_monetary ('$1,234.50'), which
    -- no parser should guess at; numeric is exact for money (it is stored in cents).
    SELECT array_agg(a.attname::text ORDER BY a.attnum) INTO v_money
      FROM pg_attribute a
     WHERE a.attrelid = v_view AND a.attnum > 0 AND NOT a.attisdropped
       AND a.atttypid = 'money'::regtype
       AND a.attname IN ('quantity', 'unit_price', 'discount', 'order_discount', 'tax_rate', 'line_no');
    IF v_money IS NOT NULL THEN
        RAISE EXCEPTION 'document view % has money column(s): % (to_jsonb writes money as text like ''$1,234.50'')',
                        v_view, array_to_string(v_money, ', ')
            USING ERRCODE = 'CI003',
                  HINT = format('Cast them to numeric in the view (exact for money), e.g. l.price::numeric AS %s.', v_money[1]);
    END IF;
    v_snapshot := cdc_invoice._document_sql(v_view, v_table, order_key, format('NEW.%I', order_key));

    v_old_refs := cdc_invoice._check_condition(v_table, 'issue_when', issue_when);
    IF reverse_when IS NOT NULL THEN
        PERFORM cdc_invoice._check_condition(v_table, 'reverse_when', reverse_when);
    END IF;

    PERFORM cdc_invoice._drop_triggers(attach.source);

    -- The capture function runs at commit (deferred constraint trigger), so the snapshot sees
    -- order lines written later in the same transaction. It runs as the schema owner so the
    -- application role needs no rights on cdc_invoice, hence the pinned search_path.
    -- It must never make the inventory's COMMIT fail: if the snapshot raises (the view divides
    -- by zero, a column was renamed after attach, …) the order is recorded as a failed request
    -- with the error and the row, and cdc_invoice.retry() takes the snapshot again once fixed.
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION cdc_invoice.%1$I() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
        DECLARE
            v_ref   text;
            v_doc   json;
            v_err   text;
            v_state text;
        BEGIN
            -- Only the reads run under the exception handler: an error there (the view divides
            -- by zero, the key column was renamed after attach, …) must never fail the
            -- inventory's COMMIT, and reads take no subtransaction XID.
            BEGIN
                IF TG_ARGV[0] = 'issue' AND TG_ARGV[1] = 'check' AND NOT coalesce((%4$s), false) THEN
                    RETURN NULL;
                END IF;
                v_ref := NEW.%3$I::text;
                IF TG_ARGV[0] = 'issue' THEN
                    v_doc := %5$s;
                END IF;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_err = MESSAGE_TEXT, v_state = RETURNED_SQLSTATE;
            END;
            IF v_err IS NOT NULL THEN
                -- Recorded as failed with the error and the row; retry() snapshots again once fixed.
                v_ref := coalesce(v_ref,
                    to_jsonb(NEW) ->> (SELECT a.attname FROM pg_attribute a
                                        WHERE a.attrelid = %6$s AND a.attnum = %7$s
                                          AND NOT a.attisdropped),
                    'unknown:' || md5(to_jsonb(NEW)::text));
                INSERT INTO cdc_invoice.request (source, order_ref, kind, state, last_error,
                                                 error_code, hint, params)
                VALUES (%2$L, v_ref, TG_ARGV[0], 'failed', 'capture failed: ' || v_err, 'CAPTURE',
                        'fix the document view or re-attach the source, then SELECT cdc_invoice.retry(<id>)',
                        jsonb_build_object('sqlstate', v_state, 'row', to_jsonb(NEW)))
                ON CONFLICT (source, order_ref, kind, seq) DO NOTHING;
            ELSIF TG_ARGV[0] = 'issue' THEN
                INSERT INTO cdc_invoice.request (source, order_ref, kind, document)
                VALUES (%2$L, v_ref, 'issue', v_doc)
                ON CONFLICT (source, order_ref, kind, seq) DO NOTHING;
            ELSE
                INSERT INTO cdc_invoice.request (source, order_ref, kind, params)
                VALUES (%2$L, v_ref, 'reverse',
                        jsonb_build_object('reason', 'sales_return', 'full', true, 'trigger', true))
                ON CONFLICT (source, order_ref, kind, seq) DO NOTHING;
            END IF;
            -- Coalesced wake-up: NOTIFY serialises commits cluster-wide, so only the transaction
            -- that wins this lock notifies; concurrent ones are drained on the same wake-up.
            IF pg_try_advisory_xact_lock(1128547145, 1) THEN
                PERFORM pg_notify('cdc_invoice', '');
            END IF;
            RETURN NULL;
        END
        $body$ $f$, v_fn, attach.source, order_key, issue_when, v_snapshot, v_table::oid,
        (SELECT a.attnum FROM pg_attribute a WHERE a.attrelid = v_table AND a.attname = order_key));

    -- UPDATE: WHEN filters at event time, so non-qualifying updates never call the function.
    EXECUTE format('CREATE CONSTRAINT TRIGGER %I AFTER UPDATE ON %s DEFERRABLE INITIALLY DEFERRED '
                   'FOR EACH ROW WHEN (%s) EXECUTE FUNCTION cdc_invoice.%I(''issue'', ''when'')',
                   cdc_invoice.object_name(attach.source, 'issue_upd'), v_table, issue_when, v_fn);
    -- INSERT: OLD cannot appear in a WHEN clause of an INSERT trigger; when the condition
    -- mentions OLD (NULL on INSERT) the function evaluates it instead.
    IF v_old_refs THEN
        EXECUTE format('CREATE CONSTRAINT TRIGGER %I AFTER INSERT ON %s DEFERRABLE INITIALLY DEFERRED '
                       'FOR EACH ROW EXECUTE FUNCTION cdc_invoice.%I(''issue'', ''check'')',
                       cdc_invoice.object_name(attach.source, 'issue_ins'), v_table, v_fn);
    ELSE
        EXECUTE format('CREATE CONSTRAINT TRIGGER %I AFTER INSERT ON %s DEFERRABLE INITIALLY DEFERRED '
                       'FOR EACH ROW WHEN (%s) EXECUTE FUNCTION cdc_invoice.%I(''issue'', ''when'')',
                       cdc_invoice.object_name(attach.source, 'issue_ins'), v_table, issue_when, v_fn);
    END IF;
    IF reverse_when IS NOT NULL THEN
        EXECUTE format('CREATE CONSTRAINT TRIGGER %I AFTER UPDATE ON %s DEFERRABLE INITIALLY DEFERRED '
                       'FOR EACH ROW WHEN (%s) EXECUTE FUNCTION cdc_invoice.%I(''reverse'', ''when'')',
                       cdc_invoice.object_name(attach.source, 'reverse_upd'), v_table, reverse_when, v_fn);
    END IF;

    INSERT INTO cdc_invoice.source AS s (source, order_table, order_key, key_type, issue_when,
                                         reverse_when, document, seller_id, capture_fn)
    VALUES (attach.source, v_table::text, order_key, v_key_type, issue_when, reverse_when,
            v_view::text, attach.seller, v_fn)
    ON CONFLICT ON CONSTRAINT source_pkey DO UPDATE
       SET order_table = EXCLUDED.order_table, order_key = EXCLUDED.order_key,
           key_type = EXCLUDED.key_type, issue_when = EXCLUDED.issue_when,
           reverse_when = EXCLUDED.reverse_when, document = EXCLUDED.document,
           seller_id = EXCLUDED.seller_id, capture_fn = EXCLUDED.capture_fn,
           attached_at = now(), attached_by = current_user;
    INSERT INTO cdc_invoice.event (source, event, detail)
    VALUES (attach.source, 'source.attached',
            jsonb_build_object('order_table', v_table::text, 'order_key', order_key,
                               'issue_when', issue_when, 'reverse_when', reverse_when,
                               'document', v_view::text, 'seller', attach.seller));
    RETURN format('attached %s to %s (issue when: %s)', attach.source, v_table, issue_when)
        -- format() renders a NULL argument as '', so test it first
        || CASE WHEN v_not_unique IS NULL THEN ''
                ELSE format('; WARNING: order_key %s is not unique (fix: %s)', quote_ident(order_key), v_not_unique) END;
END $$;

-- Validates a trigger condition by planning it against the table with NEW and OLD as aliases.
-- Returns whether it mentions OLD. The condition is the DBA's own SQL by design; what we guard
-- against is a condition that is not a single boolean expression.
CREATE OR REPLACE FUNCTION cdc_invoice._check_condition(tbl regclass, what text, cond text)
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF cond IS NULL OR btrim(cond) = '' THEN
        RAISE EXCEPTION '% must not be empty', what USING ERRCODE = 'CI004',
            HINT = 'e.g. $c$NEW.status = ''shipped''$c$';
    END IF;
    IF position(';' IN cond) > 0 OR cond ~ '--|/\*' THEN
        RAISE EXCEPTION '% must be a single boolean expression (no ";" or comments): %', what, cond
            USING ERRCODE = 'CI004', HINT = 'e.g. NEW.status = ''shipped'' AND OLD.status IS DISTINCT FROM ''shipped'' (OLD is NULL on INSERT)';
    END IF;
    BEGIN
        EXECUTE format('SELECT 1 FROM %s AS new WHERE (%s) LIMIT 0', tbl, cond);
        RETURN false;
    EXCEPTION WHEN undefined_table THEN
        NULL;  -- mentions OLD (or another table): try again with OLD
    WHEN OTHERS THEN
        RAISE EXCEPTION '% is not a valid condition on %: %', what, tbl, SQLERRM
            USING ERRCODE = 'CI004', HINT = 'Write a boolean expression over NEW.<column> (and OLD.<column> for updates).';
    END;
    BEGIN
        EXECUTE format('SELECT 1 FROM %s AS new, %s AS old WHERE (%s) LIMIT 0', tbl, tbl, cond);
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION '% is not a valid condition on %: %', what, tbl, SQLERRM
            USING ERRCODE = 'CI004', HINT = 'Write a boolean expression over NEW.<column> (and OLD.<column> for updates).';
    END;
    RETURN true;
END $$;

CREATE OR REPLACE FUNCTION cdc_invoice._drop_triggers(p_source text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT t.tgname, t.tgrelid::regclass AS tbl
               FROM pg_trigger t
              WHERE t.tgname IN (cdc_invoice.object_name(p_source, 'issue_upd'),
                                 cdc_invoice.object_name(p_source, 'issue_ins'),
                                 cdc_invoice.object_name(p_source, 'reverse_upd'))
                AND t.tgparentid = 0
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', r.tgname, r.tbl);
    END LOOP;
END $$;

-- detach(): remove the triggers of a source. Requests and invoices stay.
CREATE OR REPLACE FUNCTION cdc_invoice.detach(source text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM cdc_invoice.source s WHERE s.source = detach.source) THEN
        RAISE EXCEPTION 'source % is not attached', quote_nullable(detach.source)
            USING ERRCODE = 'CI005', HINT = 'SELECT source FROM cdc_invoice.source lists attached sources.';
    END IF;
    PERFORM cdc_invoice._drop_triggers(detach.source);
    EXECUTE format('DROP FUNCTION IF EXISTS cdc_invoice.%I()', cdc_invoice.object_name(detach.source, 'capture'));
    DELETE FROM cdc_invoice.source s WHERE s.source = detach.source;
    INSERT INTO cdc_invoice.event (source, event) VALUES (detach.source, 'source.detached');
    RETURN format('detached %s', detach.source);
END $$;

-- Whether a platform answer means "refused outright, nothing exists under this order number":
-- E4000 (invalid parameters, requestBillingNew doc) and the documented E9… business refusals,
-- so a retry may use a new number. Never E9106 (the number exists), E9613 (reInvoice limit: the invoice
-- exists, failed), ISSUE_FAILED / PARTIAL_ISSUE (status 22: the invoice exists, reInvoice is
-- the remedy under the same number), OUTCOME_UNKNOWN (maybe issued: reconcile), nor any other
-- code: an unknown answer must never lead to a second invoice.
CREATE OR REPLACE FUNCTION cdc_invoice._number_burned(error_code text) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    -- codes.REFUSED (providers/nuonuo/codes.py, docs/platform-assumptions.md) but E9613; a
    -- test keeps the two lists equal.
    SELECT coalesce(error_code = ANY (
        ARRAY['E4000', 'E9101', 'E9102', 'E9103', 'E9104', 'E9105', 'E9107', 'E9108',
              'E9110', 'E9111', 'E9112', 'E9113', 'E9114', 'E9115', 'E9116', 'E9117',
              'E9118', 'E9119', 'E9120', 'E9121', 'E9122', 'E9123', 'E9124', 'E9125',
              'E9126', 'E9127', 'E9128', 'E9129', 'E9130', 'E9131', 'E9138', 'E9154',
              'E9301', 'E9302', 'E9338', 'E9796', 'E9797', 'E9798', 'E9799', 'E9800',
              'E9801']), false)
$$;

-- retry(): put a failed (or cancelled) request back in the queue, now. Runs with the owner's
-- rights so that cdc_invoice_operator needs EXECUTE only. For an issue request
-- (docs/reliability.md, "Lifecycle rules"):
--   * parts that reached the platform (accepted, issuing, issued, failed 22) keep their order
--     numbers and the old snapshot: the next attempt asks the platform by those numbers and
--     adopts or re-issues (reInvoice) what it finds, never a second invoice; only a part the
--     platform refused outright gets a new number (the next generation);
--   * if nothing reached the platform, the order is snapshotted again (the DBA fixed it) and a
--     refused order number is replaced;
--   * an order that was returned (a whole-order reversal, attach's reverse_when) is refused,
--     unless parts of it are at the platform: those must be recorded so they can be reversed.
CREATE OR REPLACE FUNCTION cdc_invoice.retry(request_id bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_req      cdc_invoice.request;
    v_doc      json;
    v_parts    jsonb;
    v_reached  integer[];
    v_renumber integer[];
    v_gen      integer;
    v_progress jsonb;
    v_base     text;
    v_detail   jsonb := '{}';
    v_returned bigint;
    v_err      text;
BEGIN
    SELECT * INTO v_req FROM cdc_invoice.request r WHERE r.id = retry.request_id FOR UPDATE;
    IF NOT FOUND OR v_req.state NOT IN ('failed', 'cancelled') THEN
        RAISE EXCEPTION 'request % is not failed or cancelled', retry.request_id
            USING ERRCODE = 'CI005', HINT = 'SELECT request_id, order_ref, last_error FROM cdc_invoice.report_failures';
    END IF;
    v_gen := v_req.generation;
    v_base := v_req.platform_order_no;
    v_progress := v_req.progress;
    IF v_req.kind = 'issue' THEN
        v_parts := coalesce(v_progress -> 'parts', '[]');
        SELECT array_agg((p ->> 'part')::integer) FILTER (WHERE coalesce(p ->> 'state', 'accepted') <> 'refused'),
               array_agg((p ->> 'part')::integer) FILTER (WHERE p ->> 'state' = 'refused'
                                                          AND cdc_invoice._number_burned(p ->> 'code'))
          INTO v_reached, v_renumber
          FROM jsonb_array_elements(v_parts) p;
        -- A returned order with nothing at the platform is never invoiced; parts at the
        -- platform must still be recorded (then its reversal reverses them).
        SELECT r.id INTO v_returned FROM cdc_invoice.request r
         WHERE r.source = v_req.source AND r.order_ref = v_req.order_ref AND r.kind = 'reverse'
           AND r.invoice_id IS NULL AND r.state <> 'cancelled'
         ORDER BY r.id LIMIT 1;
        IF v_returned IS NOT NULL AND v_reached IS NULL THEN
            RAISE EXCEPTION 'order % of source % was returned (reversal request %): invoicing it now would invoice returned goods',
                            v_req.order_ref, v_req.source, v_returned
                USING ERRCODE = 'CI006',
                      HINT = 'nothing to do: a returned order nets to zero. If the goods were shipped again, ship them as a new order';
        END IF;
        IF v_reached IS NOT NULL THEN
            -- Parts at the platform: their numbers and the snapshot they were computed from stay.
            IF v_renumber IS NOT NULL THEN
                v_gen := v_gen + 1;
                v_base := cdc_invoice.platform_order_no(v_req.id, v_gen);  -- CI006 past 35
                SELECT jsonb_agg(CASE WHEN (p ->> 'part')::integer = ANY (v_renumber)
                                      THEN p || jsonb_build_object('order_no', v_base || lpad(p ->> 'part', 2, '0'))
                                      ELSE p END ORDER BY (p ->> 'part')::integer)
                  INTO v_parts FROM jsonb_array_elements(v_parts) p;
                v_progress := v_progress || jsonb_build_object('parts', v_parts);
            END IF;
            v_detail := jsonb_build_object(
                'snapshot', 'kept',
                'why', format('part(s) %s reached the platform under their order numbers: they stay, and so does the snapshot they were computed from',
                              array_to_string(v_reached, ', ')),
                'renumbered_parts', to_jsonb(coalesce(v_renumber, '{}')));
        ELSIF v_req.attempt = 0 OR v_req.error_code IN ('CAPTURE', 'MAPPING', 'INVALID', 'ORDER')
              OR cdc_invoice._number_burned(v_req.error_code) THEN
            -- Nothing reached the platform: take the order as it is now (the DBA fixed it).
            IF v_req.error_code = 'CAPTURE' THEN
                -- No snapshot at all yet: raises (and says why) while the order is still broken.
                SELECT d.document INTO v_doc FROM cdc_invoice.order_document(v_req.source, v_req.order_ref) d;
            ELSE
                BEGIN
                    SELECT d.document INTO v_doc FROM cdc_invoice.order_document(v_req.source, v_req.order_ref) d;
                EXCEPTION WHEN OTHERS THEN
                    v_err := SQLERRM;  -- e.g. the order was deleted: the commit-time snapshot stays
                END;
            END IF;
            IF v_err IS NULL THEN
                UPDATE cdc_invoice.request r SET document = v_doc WHERE r.id = v_req.id;
            END IF;
            v_progress := NULL;
            IF cdc_invoice._number_burned(v_req.error_code) THEN
                v_gen := v_gen + 1;
                PERFORM cdc_invoice.platform_order_no(v_req.id, v_gen);  -- CI006 past 35
                v_base := NULL;  -- the next claim takes platform_order_no(id, v_gen)
            END IF;
            v_detail := CASE WHEN v_err IS NULL
                THEN jsonb_build_object('snapshot', 'fresh',
                    'why', 'nothing reached the platform: the order is taken as it is now')
                ELSE jsonb_build_object('snapshot', 'kept',
                    'why', 'nothing reached the platform, but the order cannot be read now ('
                           || v_err || '): the snapshot taken at commit stays') END;
        ELSE
            -- Maybe at the platform (outcome unknown, a failed 22, …): same numbers, same
            -- snapshot, so the next attempt finds and adopts whatever exists.
            v_detail := jsonb_build_object('snapshot', 'kept',
                'why', format('the platform may hold this order (%s): the next attempt asks it by order number first',
                              coalesce(v_req.error_code, 'no code')));
        END IF;
        v_detail := v_detail || jsonb_build_object('generation', v_gen, 'previous_error', v_req.error_code);
    ELSIF cdc_invoice._number_burned(v_req.error_code) OR v_req.error_code = 'ISSUE_FAILED' THEN
        -- A red-letter request the platform refused, or whose red invoice failed: a new slip
        -- (bill id) and red order number; a blue invoice's slip can be used up only once.
        v_gen := v_gen + 1;
        PERFORM cdc_invoice.platform_order_no(v_req.id, v_gen);  -- CI006 past 35
        v_base := NULL;
        v_progress := NULL;
    END IF;
    UPDATE cdc_invoice.request r
       SET state = 'pending', run_after = now(), retries = 0, claimed_by = NULL, lease_until = NULL,
           generation = v_gen, platform_order_no = v_base, progress = v_progress,
           last_error = NULL, error_code = NULL, hint = NULL, updated_at = now()
     WHERE r.id = v_req.id;
    INSERT INTO cdc_invoice.event (actor, request_id, source, order_ref, event, detail)
    VALUES (session_user, v_req.id, v_req.source, v_req.order_ref, 'request.retried', v_detail);
    PERFORM pg_notify('cdc_invoice', '');
    RETURN v_req.id;
END $$;

-- retry_failed(): every failed request (of one source) back in the queue. Returns the count.
CREATE OR REPLACE FUNCTION cdc_invoice.retry_failed(source text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_n bigint := 0;
    v_id bigint;
BEGIN
    FOR v_id IN SELECT r.id FROM cdc_invoice.request r
                 WHERE r.state = 'failed' AND (retry_failed.source IS NULL OR r.source = retry_failed.source)
                 ORDER BY r.id
    LOOP
        -- One request retry() refuses (e.g. its order was returned meanwhile, or its numbers
        -- are spent) must not hold up the others: it stays failed, and a NOTICE says why.
        BEGIN
            PERFORM cdc_invoice.retry(v_id);
            v_n := v_n + 1;
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 2) <> 'CI' THEN
                RAISE;
            END IF;
            RAISE NOTICE 'request % left failed: %', v_id, SQLERRM;
        END;
    END LOOP;
    RETURN v_n;
END $$;
