-- Operations on attached sources: inspect (sources), look at one order's document (order_document,
-- used by `cdc-invoice preview`), enqueue orders completed before attach (backfill), regenerate
-- triggers after an upgrade (reattach). Re-applied (CREATE OR REPLACE) on every install.
-- Errors use SQLSTATE class 'CI' with a HINT, as in api.sql.
--
-- Every identifier that reaches dynamic SQL comes from cdc_invoice.source (written by attach,
-- which resolved and quoted it) or is quoted here with %I; values travel as parameters.

-- The attached source, resolved: its order table and document view must still exist.
CREATE OR REPLACE FUNCTION cdc_invoice._source_target(
    p_source     text,
    OUT tbl      regclass,
    OUT view     regclass,
    OUT key      text,
    OUT key_type text,
    OUT issue_when text,
    OUT seller_id text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s cdc_invoice.source;
BEGIN
    SELECT * INTO s FROM cdc_invoice.source x WHERE x.source = p_source;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'source % is not attached', quote_nullable(p_source)
            USING ERRCODE = 'CI005', HINT = 'cdc-invoice sources (or SELECT source FROM cdc_invoice.source) lists attached sources.';
    END IF;
    tbl := to_regclass(s.order_table);
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'order table % of source % no longer exists', s.order_table, quote_literal(p_source)
            USING ERRCODE = 'CI002', HINT = 'Attach the source again with the table''s current name, or detach it.';
    END IF;
    view := to_regclass(s.document);
    IF view IS NULL THEN
        RAISE EXCEPTION 'document view % of source % no longer exists', s.document, quote_literal(p_source)
            USING ERRCODE = 'CI002', HINT = 'Create the view again (see the DBA guide), then attach the source again.';
    END IF;
    key := s.order_key;
    -- The type without its modifier: '...'::varchar(5) would silently cut a longer key.
    SELECT format_type(a.atttypid, NULL) INTO key_type
      FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = s.order_key AND a.attnum > 0 AND NOT a.attisdropped;
    IF key_type IS NULL THEN
        RAISE EXCEPTION 'order key column % of source % no longer exists in %', quote_literal(s.order_key),
                        quote_literal(p_source), tbl
            USING ERRCODE = 'CI002', HINT = 'Attach the source again with the current key column.';
    END IF;
    issue_when := s.issue_when;
    seller_id := s.seller_id;
END $$;

-- order_document(): the document the capture trigger would snapshot for one order right now,
-- whether the order meets issue_when (evaluated as backfill does, OLD all NULL) and the issue
-- request it already has, if any. Reads only; `cdc-invoice preview` shows what it would issue.
CREATE OR REPLACE FUNCTION cdc_invoice.order_document(source text, order_ref text)
RETURNS TABLE (document jsonb, meets_issue_when boolean, seller_id text,
               request_id bigint, request_state text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
BEGIN
    SELECT * INTO t FROM cdc_invoice._source_target(order_document.source);
    seller_id := t.seller_id;
    BEGIN
        EXECUTE format('SELECT %s, coalesce((%s), false) FROM %s AS new LEFT JOIN %s AS old ON false '
                       'WHERE new.%I = $1::%s',
                       cdc_invoice._document_sql(t.view, t.tbl, t.key, format('new.%I', t.key)),
                       t.issue_when, t.tbl, t.tbl, t.key, t.key_type)
           INTO document, meets_issue_when USING order_document.order_ref;
    EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range OR string_data_right_truncation THEN
        RAISE EXCEPTION 'order % is not a valid % (the type of %.%)', quote_nullable(order_document.order_ref),
                        t.key_type, t.tbl, quote_ident(t.key)
            USING ERRCODE = 'CI001', HINT = 'Give the order key as the order table stores it.';
    END;
    IF document IS NULL THEN
        RAISE EXCEPTION 'order % not found in %', quote_nullable(order_document.order_ref), t.tbl
            USING ERRCODE = 'CI005', HINT = format('SELECT %I FROM %s lists the order keys.', t.key, t.tbl);
    END IF;
    SELECT r.id, r.state INTO request_id, request_state
      FROM cdc_invoice.request r
     WHERE r.source = order_document.source AND r.order_ref = order_document.order_ref
       AND r.kind = 'issue'
     ORDER BY r.seq DESC LIMIT 1;
    RETURN NEXT;
END $$;

-- The filter on since_column (compared with the parameter named by param, e.g. '$5'), or ''
-- without one. Rejects a column that cannot be a date.
CREATE OR REPLACE FUNCTION cdc_invoice._since_filter(tbl regclass, since date, since_column text, param text)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_type regtype;
BEGIN
    IF since IS NULL AND since_column IS NULL THEN
        RETURN '';
    END IF;
    IF since IS NULL OR since_column IS NULL THEN
        RAISE EXCEPTION 'since and since_column go together (got since %, since_column %)',
                        coalesce(since::text, 'NULL'), quote_nullable(since_column)
            USING ERRCODE = 'CI001',
                  HINT = format('since_column names the date column of %s that since compares with, e.g. order_date.', tbl);
    END IF;
    SELECT a.atttypid::regtype INTO v_type
      FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = since_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF v_type IS NULL THEN
        RAISE EXCEPTION 'column % does not exist in %', quote_literal(since_column), tbl
            USING ERRCODE = 'CI002', HINT = 'since_column is the exact column name, without quotes.';
    END IF;
    IF v_type NOT IN ('date'::regtype, 'timestamp'::regtype, 'timestamptz'::regtype,
                      'text'::regtype, 'varchar'::regtype, 'bpchar'::regtype) THEN
        RAISE EXCEPTION 'column % of % is of type %, not a date', quote_literal(since_column), tbl, v_type
            USING ERRCODE = 'CI001', HINT = 'Use a date, timestamp or text (YYYY-MM-DD) column.';
    END IF;
    -- timestamptz::date uses the session's TimeZone; text must be a date PostgreSQL can read.
    RETURN format(' AND (new.%I)::date >= %s', since_column, param);
END $$;

-- backfill_batch(): one page of a backfill, in key order after after_key (NULL: from the start).
-- An order is enqueued when the condition (default: the source's issue_when) holds with OLD all
-- NULL -- what the INSERT trigger would decide if the order were inserted now as it is -- and it
-- has no issue request yet. Each request carries the document the trigger would snapshot.
-- Idempotent: ON CONFLICT DO NOTHING on the request's unique key. No NOTIFY here (see
-- backfill_finish). `cdc-invoice backfill` calls it once per batch, for its progress bar.
--   scanned        rows of the order table read in this page (after the since filter)
--   eligible       of those, meeting the condition
--   queued_before  of those, already requested (by the trigger or an earlier backfill)
--   enqueued       requests inserted (dry_run: that would be inserted)
--   last_key       the page's last order key: pass it as after_key for the next page
CREATE OR REPLACE FUNCTION cdc_invoice.backfill_batch(
    source      text,
    after_key   text DEFAULT NULL,
    batch_size  integer DEFAULT 1000,
    since       date DEFAULT NULL,
    since_column text DEFAULT NULL,
    dry_run     boolean DEFAULT false,
    condition   text DEFAULT NULL
) RETURNS TABLE (scanned integer, eligible integer, queued_before integer, enqueued integer,
                 last_key text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t      record;
    v_cond text;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'batch_size must be at least 1, got %', coalesce(batch_size::text, 'NULL')
            USING ERRCODE = 'CI001', HINT = 'e.g. 1000';
    END IF;
    SELECT * INTO t FROM cdc_invoice._source_target(backfill_batch.source);
    v_cond := coalesce(backfill_batch.condition, t.issue_when);
    IF backfill_batch.condition IS NOT NULL THEN
        PERFORM cdc_invoice._check_condition(t.tbl, 'condition', v_cond);
    END IF;
    BEGIN
        RETURN QUERY EXECUTE format($q$
            WITH page AS MATERIALIZED (
                SELECT new.%1$I AS k, coalesce((%2$s), false) AS ok
                  FROM %3$s AS new LEFT JOIN %3$s AS old ON false
                 WHERE new.%1$I IS NOT NULL AND ($1 IS NULL OR new.%1$I > $1::%4$s)%5$s
                 ORDER BY new.%1$I
                 LIMIT $2
            ), todo AS MATERIALIZED (
                SELECT p.k FROM page p
                 WHERE p.ok
                   AND NOT EXISTS (SELECT 1 FROM cdc_invoice.request r
                                    WHERE r.source = $3 AND r.order_ref = p.k::text AND r.kind = 'issue')
            ), ins AS (
                INSERT INTO cdc_invoice.request (source, order_ref, kind, document)
                SELECT $3, todo.k::text, 'issue', %6$s FROM todo WHERE NOT $4
                ON CONFLICT (source, order_ref, kind, seq) DO NOTHING
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM page)::integer,
                   (SELECT count(*) FROM page WHERE ok)::integer,
                   ((SELECT count(*) FROM page WHERE ok) - (SELECT count(*) FROM todo))::integer,
                   (CASE WHEN $4 THEN (SELECT count(*) FROM todo) ELSE (SELECT count(*) FROM ins) END)::integer,
                   (SELECT p.k::text FROM page p ORDER BY p.k DESC LIMIT 1)
            $q$,
            t.key, v_cond, t.tbl, t.key_type,
            cdc_invoice._since_filter(t.tbl, backfill_batch.since, backfill_batch.since_column, '$5'),
            cdc_invoice._document_sql(t.view, t.tbl, t.key, 'todo.k'))
        USING backfill_batch.after_key, backfill_batch.batch_size, backfill_batch.source,
              backfill_batch.dry_run, backfill_batch.since;
    EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow THEN
        RAISE EXCEPTION 'a value of %.% is not a date: %', t.tbl, quote_ident(backfill_batch.since_column), SQLERRM
            USING ERRCODE = 'CI001', HINT = 'Give a since_column whose values read as dates (YYYY-MM-DD), or backfill without since.';
    END;
END $$;

-- How many order rows a backfill will read (for the progress bar).
CREATE OR REPLACE FUNCTION cdc_invoice.backfill_total(
    source text, since date DEFAULT NULL, since_column text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t   record;
    v_n bigint;
BEGIN
    SELECT * INTO t FROM cdc_invoice._source_target(backfill_total.source);
    BEGIN
        EXECUTE format('SELECT count(*) FROM %s AS new WHERE new.%I IS NOT NULL%s', t.tbl, t.key,
                       cdc_invoice._since_filter(t.tbl, backfill_total.since,
                                                 backfill_total.since_column, '$1'))
           INTO v_n USING backfill_total.since;
    EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow THEN
        RAISE EXCEPTION 'a value of %.% is not a date: %', t.tbl, quote_ident(backfill_total.since_column), SQLERRM
            USING ERRCODE = 'CI001', HINT = 'Give a since_column whose values read as dates (YYYY-MM-DD), or backfill without since.';
    END;
    RETURN v_n;
END $$;

-- The end of a backfill: one audit event and one wake-up for the daemons (not one per batch:
-- NOTIFY serialises commits cluster-wide, and the daemon drains the whole queue on a wake-up).
CREATE OR REPLACE FUNCTION cdc_invoice.backfill_finish(
    source text, scanned bigint, enqueued bigint, since date DEFAULT NULL,
    since_column text DEFAULT NULL, condition text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO cdc_invoice.event (source, event, detail)
    VALUES (backfill_finish.source, 'source.backfilled',
            jsonb_build_object('scanned', scanned, 'enqueued', enqueued, 'since', since,
                               'since_column', since_column, 'condition', condition));
    IF enqueued > 0 THEN
        PERFORM pg_notify('cdc_invoice', '');
    END IF;
END $$;

-- backfill(): the whole backfill in one transaction, for psql users (the CLI runs batches in
-- separate transactions and shows progress). Returns the totals; see backfill_batch.
CREATE OR REPLACE FUNCTION cdc_invoice.backfill(
    source      text,
    since       date DEFAULT NULL,
    since_column text DEFAULT NULL,
    batch_size  integer DEFAULT 1000,
    dry_run     boolean DEFAULT false,
    condition   text DEFAULT NULL
) RETURNS TABLE (scanned bigint, eligible bigint, queued_before bigint, enqueued bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b     record;
    v_key text;
BEGIN
    scanned := 0; eligible := 0; queued_before := 0; enqueued := 0;
    LOOP
        SELECT * INTO b FROM cdc_invoice.backfill_batch(backfill.source, v_key, backfill.batch_size,
                                                         backfill.since, backfill.since_column,
                                                         backfill.dry_run, backfill.condition);
        scanned := scanned + b.scanned;
        eligible := eligible + b.eligible;
        queued_before := queued_before + b.queued_before;
        enqueued := enqueued + b.enqueued;
        EXIT WHEN b.scanned < backfill.batch_size OR b.last_key IS NULL;
        v_key := b.last_key;
    END LOOP;
    IF NOT backfill.dry_run THEN
        PERFORM cdc_invoice.backfill_finish(backfill.source, scanned, enqueued, backfill.since,
                                            backfill.since_column, backfill.condition);
    END IF;
    RETURN NEXT;
END $$;

-- sources(): every attached source with the state of its triggers, as `cdc-invoice sources`
-- shows it. trigger_state is 'enabled' when every trigger fires in normal sessions, else what
-- is wrong: the table is gone, a trigger is missing or disabled (ALTER TABLE ... DISABLE
-- TRIGGER), fires only in replica sessions, or is disabled on some partitions.
CREATE OR REPLACE FUNCTION cdc_invoice.sources()
RETURNS TABLE (source text, order_table text, table_exists boolean, order_key text,
               issue_when text, reverse_when text, document text, document_exists boolean,
               seller_id text, trigger_state text, triggers jsonb, queued bigint, failed bigint,
               attached_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s          cdc_invoice.source;
    v_tbl      regclass;
    v_expected text[];
    v_missing  text[];
    v_disabled text[];
    v_replica  text[];
    v_elsewhere text[];
    v_parts    integer;
BEGIN
    FOR s IN SELECT * FROM cdc_invoice.source x ORDER BY x.source LOOP
        v_tbl := to_regclass(s.order_table);
        v_expected := ARRAY[cdc_invoice.object_name(s.source, 'issue_upd'),
                            cdc_invoice.object_name(s.source, 'issue_ins')];
        IF s.reverse_when IS NOT NULL THEN
            v_expected := v_expected || cdc_invoice.object_name(s.source, 'reverse_upd');
        END IF;
        -- Found by name on any table: a renamed order table keeps its triggers.
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'name', t.tgname, 'table', t.tgrelid::regclass::text,
                   'enabled', CASE t.tgenabled WHEN 'O' THEN 'yes' WHEN 'A' THEN 'always'
                                               WHEN 'R' THEN 'replica only' ELSE 'no' END)
                   ORDER BY t.tgname), '[]'::jsonb),
               array_agg(t.tgname::text) FILTER (WHERE t.tgenabled = 'D'),
               array_agg(t.tgname::text) FILTER (WHERE t.tgenabled = 'R'),
               array_agg(DISTINCT t.tgrelid::regclass::text) FILTER (WHERE t.tgrelid IS DISTINCT FROM v_tbl)
          INTO triggers, v_disabled, v_replica, v_elsewhere
          FROM pg_trigger t
         WHERE t.tgname = ANY (v_expected) AND t.tgparentid = 0;
        SELECT array_agg(e) INTO v_missing
          FROM unnest(v_expected) e
         WHERE NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgname = e AND t.tgparentid = 0);
        -- Partitions: a clone can be disabled (or dropped with its partition's trigger) on its own.
        v_parts := 0;
        IF v_tbl IS NOT NULL AND (SELECT c.relkind FROM pg_class c WHERE c.oid = v_tbl) = 'p' THEN
            SELECT count(DISTINCT p.relid) INTO v_parts
              FROM pg_partition_tree(v_tbl) p, unnest(v_expected) e
             WHERE p.isleaf
               AND NOT EXISTS (SELECT 1 FROM pg_trigger t
                                WHERE t.tgrelid = p.relid AND t.tgname = e AND t.tgenabled IN ('O', 'A'));
        END IF;
        source := s.source;
        order_table := s.order_table;
        table_exists := v_tbl IS NOT NULL;
        order_key := s.order_key;
        issue_when := s.issue_when;
        reverse_when := s.reverse_when;
        document := s.document;
        document_exists := to_regclass(s.document) IS NOT NULL;
        seller_id := s.seller_id;
        attached_at := s.attached_at;
        trigger_state := CASE
            WHEN v_tbl IS NULL AND v_elsewhere IS NULL THEN 'table gone'
            WHEN v_missing IS NOT NULL THEN 'missing: ' || array_to_string(v_missing, ', ')
            WHEN v_disabled IS NOT NULL THEN 'disabled: ' || array_to_string(v_disabled, ', ')
            WHEN v_replica IS NOT NULL THEN 'replica only: ' || array_to_string(v_replica, ', ')
            WHEN v_parts > 0 THEN format('disabled on %s partition(s)', v_parts)
            ELSE 'enabled' END
            || CASE WHEN v_elsewhere IS NOT NULL
                    THEN ' (on ' || array_to_string(v_elsewhere, ', ') || ': renamed?)' ELSE '' END;
        SELECT count(*) FILTER (WHERE r.state IN ('pending', 'claimed', 'submitted')),
               count(*) FILTER (WHERE r.state = 'failed')
          INTO queued, failed
          FROM cdc_invoice.request r
         WHERE r.source = s.source AND r.state IN ('pending', 'claimed', 'submitted', 'failed');
        RETURN NEXT;
    END LOOP;
END $$;

-- reattach(): run attach() again for one source (NULL: all) with its stored arguments, e.g.
-- after an upgrade changed the generated trigger function. Returns attach()'s messages.
CREATE OR REPLACE FUNCTION cdc_invoice.reattach(source text DEFAULT NULL)
RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s cdc_invoice.source;
BEGIN
    IF reattach.source IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM cdc_invoice.source x WHERE x.source = reattach.source) THEN
        RAISE EXCEPTION 'source % is not attached', quote_nullable(reattach.source)
            USING ERRCODE = 'CI005', HINT = 'SELECT source FROM cdc_invoice.source lists attached sources.';
    END IF;
    FOR s IN SELECT * FROM cdc_invoice.source x
              WHERE reattach.source IS NULL OR x.source = reattach.source ORDER BY x.source LOOP
        RETURN NEXT cdc_invoice.attach(source => s.source, order_table => s.order_table,
                                       order_key => s.order_key, issue_when => s.issue_when,
                                       document => s.document, seller => s.seller_id,
                                       reverse_when => s.reverse_when);
    END LOOP;
END $$;

-- retag(): give this database an installation tag of its own and bind it here. For a restored
-- or cloned copy of production (the daemon refuses to start there: its tag is production's,
-- and so would be its platform order numbers). Always safe: requests that already have an
-- order number keep it; new ones take the new tag. On the database the tag is bound to it
-- changes nothing unless force => true (e.g. a physical copy, pg_basebackup or PITR, keeps
-- the cluster's identifier and the database name: it cannot be told apart from a failover).
-- For the schema owner or a superuser only (no grant to the roles).
CREATE OR REPLACE FUNCTION cdc_invoice.retag(force boolean DEFAULT false) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_inst cdc_invoice.installation;
    v_here bigint := (SELECT s.system_identifier FROM pg_control_system() s);
    v_tag  text;
BEGIN
    SELECT * INTO v_inst FROM cdc_invoice.installation FOR UPDATE;
    IF NOT retag.force AND v_inst.system_identifier = v_here
       AND v_inst.database_name = current_database() THEN
        RAISE EXCEPTION 'the installation tag % is bound to this database already', v_inst.tag
            USING ERRCODE = 'CI006',
                  HINT = 'nothing to do; on a physical copy (pg_basebackup, PITR) that must not use production''s order numbers: SELECT cdc_invoice.retag(force => true)';
    END IF;
    LOOP
        v_tag := upper(substr(md5(random()::text || clock_timestamp()::text), 1, 4));
        EXIT WHEN v_tag <> v_inst.tag;
    END LOOP;
    UPDATE cdc_invoice.installation
       SET tag = v_tag, system_identifier = v_here, database_name = current_database();
    INSERT INTO cdc_invoice.event (actor, event, detail)
    VALUES (session_user, 'installation.retagged',
            jsonb_build_object('old_tag', v_inst.tag, 'new_tag', v_tag,
                               'old_system_identifier', v_inst.system_identifier::text,
                               'old_database', v_inst.database_name,
                               'system_identifier', v_here::text, 'database', current_database()));
    RETURN format('installation tag %s replaced by %s, bound to database %s of cluster %s',
                  v_inst.tag, v_tag, current_database(), v_here);
END $$;

-- take_rate_token(): reserve the next start for one platform call of app_key under a cap of
-- per_second calls per second shared by every daemon (issue 17). The row lock serialises the
-- daemons; the slot is granted only if it is at most max_wait seconds away (else nothing is
-- reserved and the caller asks again after wait_seconds - max_wait). clock_timestamp(), not
-- now(): the lock may have been waited for.
CREATE OR REPLACE FUNCTION cdc_invoice.take_rate_token(
    app_key text, per_second double precision, max_wait double precision,
    OUT wait_seconds double precision, OUT granted boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    slot timestamptz;
BEGIN
    IF per_second IS NULL OR per_second <= 0 OR per_second = 'Infinity' THEN
        RAISE EXCEPTION 'per_second must be a positive number of calls, got %', per_second
            USING ERRCODE = 'CI001',
                  HINT = 'Set [provider] max_requests_per_second > 0 (0 turns the cap off).';
    END IF;
    INSERT INTO cdc_invoice.rate_bucket AS b (app_key, next_start)
    VALUES (take_rate_token.app_key, clock_timestamp())
    ON CONFLICT ON CONSTRAINT rate_bucket_pkey DO NOTHING;
    SELECT b.next_start INTO slot FROM cdc_invoice.rate_bucket b
     WHERE b.app_key = take_rate_token.app_key FOR UPDATE;
    slot := greatest(slot, clock_timestamp());
    wait_seconds := extract(epoch FROM slot - clock_timestamp());
    granted := wait_seconds <= coalesce(max_wait, 0);
    IF granted THEN
        UPDATE cdc_invoice.rate_bucket b
           SET next_start = slot + make_interval(secs => 1.0 / per_second)
         WHERE b.app_key = take_rate_token.app_key;
    END IF;
    wait_seconds := greatest(wait_seconds, 0);
END $$;
