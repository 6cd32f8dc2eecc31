-- Invoice lifecycle, asked for in SQL by finance, carried out by the daemon as requests.
-- Re-applied (CREATE OR REPLACE) on every install. Errors: SQLSTATE class CI (see api.sql).
-- The request_* functions run with the owner's rights (SECURITY DEFINER, pinned search_path)
-- so that cdc_invoice_operator needs EXECUTE on them and nothing else; the request records
-- who asked (current_user inside a definer function is the owner, so session_user is kept).
--
--   SELECT cdc_invoice.request_reversal('26330000000000000001', 'sales_return');            -- full
--   SELECT cdc_invoice.request_reversal('2633…', 'sales_return', '[{"line_no": 1, "quantity": 2}]');
--   SELECT cdc_invoice.request_reversal('2633…', 'sales_allowance', '[{"line_no": 3, "amount": 10.00}]');
--   SELECT cdc_invoice.request_void('2633…', 'invoicing_error');      -- paper kinds (es/ec) only
--   SELECT cdc_invoice.request_delivery('2633…', 'ap@example.com', NULL);
--   SELECT cdc_invoice.request_refresh('2633…');
--   SELECT cdc_invoice.cancel(42, 'order cancelled by the customer');

-- '1'..'4' or a name (English or Chinese) -> the platform's reason code.
CREATE OR REPLACE FUNCTION cdc_invoice.red_reason_code(reason text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE lower(btrim(reason))
        WHEN '1' THEN '1' WHEN 'sales_return' THEN '1' WHEN '销货退回' THEN '1'
        WHEN '2' THEN '2' WHEN 'invoicing_error' THEN '2' WHEN '开票有误' THEN '2'
        WHEN '3' THEN '3' WHEN 'service_termination' THEN '3' WHEN '服务中止' THEN '3'
        WHEN '4' THEN '4' WHEN 'sales_allowance' THEN '4' WHEN '销售折让' THEN '4'
    END
$$;

-- The invoice a finance user names, locked against concurrent lifecycle requests.
CREATE OR REPLACE FUNCTION cdc_invoice._invoice_for_request(p_number text, p_what text)
RETURNS cdc_invoice.invoice
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_inv cdc_invoice.invoice;
BEGIN
    -- The order's lock first, then the invoice's row (see _enqueue): always in this order, so
    -- a whole-order reversal (one transaction over every part) and a request on one part
    -- queue behind each other instead of deadlocking.
    SELECT * INTO v_inv FROM cdc_invoice.invoice i WHERE i.invoice_number = p_number;
    IF FOUND THEN
        PERFORM pg_advisory_xact_lock(1128547146, hashtext(v_inv.source || '/' || v_inv.order_ref));
    END IF;
    SELECT * INTO v_inv FROM cdc_invoice.invoice i WHERE i.invoice_number = p_number FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invoice % not found', quote_nullable(p_number) USING ERRCODE = 'CI005',
            HINT = 'SELECT invoice_number, order_ref FROM cdc_invoice.report_register WHERE order_ref = ''…''';
    END IF;
    IF v_inv.kind = 'red' AND p_what IN ('reverse', 'void') THEN
        RAISE EXCEPTION 'invoice % is a red-letter invoice; % its blue invoice instead', p_number,
            CASE p_what WHEN 'reverse' THEN 'reverse' ELSE 'void' END USING ERRCODE = 'CI006',
            HINT = format('the blue invoice is %s',
                          (SELECT o.invoice_number FROM cdc_invoice.invoice o WHERE o.id = v_inv.original_invoice_id));
    END IF;
    RETURN v_inv;
END $$;

CREATE OR REPLACE FUNCTION cdc_invoice._enqueue(p_inv cdc_invoice.invoice, p_kind text, p_params jsonb)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id bigint;
BEGIN
    -- Serialise the requests of one order: the next seq is max(seq) + 1, and two transactions
    -- computing it at once (two parts of a split order, or a manual request racing the
    -- daemon's whole-order reversal) would otherwise both pick it and one end in a raw 23505.
    -- The invoice row lock covers one invoice, not the order. _invoice_for_request took this
    -- lock already (before the row's); taking it again is free and keeps _enqueue safe alone.
    PERFORM pg_advisory_xact_lock(1128547146, hashtext(p_inv.source || '/' || p_inv.order_ref));
    -- seq 1 is reserved for the whole-order reversal that attach(reverse_when) requests.
    INSERT INTO cdc_invoice.request (source, order_ref, kind, seq, invoice_id, params, actor)
    SELECT p_inv.source, p_inv.order_ref, p_kind,
           greatest(max(r.seq), 1) + 1, p_inv.id, p_params, session_user
      FROM cdc_invoice.request r
     WHERE r.source = p_inv.source AND r.order_ref = p_inv.order_ref AND r.kind = p_kind
    RETURNING id INTO v_id;
    INSERT INTO cdc_invoice.event (actor, request_id, invoice_id, source, order_ref, event, detail)
    VALUES (session_user, v_id, p_inv.id, p_inv.source, p_inv.order_ref, p_kind || '.requested', p_params);
    PERFORM pg_notify('cdc_invoice', '');
    RETURN v_id;
END $$;

CREATE OR REPLACE FUNCTION cdc_invoice._refuse_if_busy(p_inv cdc_invoice.invoice, p_kinds text[])
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_busy bigint;
BEGIN
    SELECT r.id INTO v_busy FROM cdc_invoice.request r
     WHERE r.invoice_id = p_inv.id AND r.kind = ANY(p_kinds)
       AND r.state IN ('pending', 'claimed', 'submitted')
     LIMIT 1;
    IF v_busy IS NOT NULL THEN
        RAISE EXCEPTION 'invoice % already has a request in progress (request %)',
            p_inv.invoice_number, v_busy USING ERRCODE = 'CI006',
            HINT = format('wait for it: SELECT state, last_error FROM cdc_invoice.report_open WHERE request_id = %s', v_busy);
    END IF;
END $$;

-- request_reversal(): a red-letter invoice (红冲) for the whole invoice, or for some lines.
--   lines: [{"line_no": 1, "quantity": 2}] or [{"line_no": 3, "amount": 10.00}] (incl. tax, positive)
CREATE OR REPLACE FUNCTION cdc_invoice.request_reversal(invoice_number text, reason text,
                                                       lines jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_inv    cdc_invoice.invoice;
    v_reason text := cdc_invoice.red_reason_code(reason);
    v_line   jsonb;
    v_blue   cdc_invoice.invoice_line;
    v_done   numeric;
    v_qty    numeric;
    v_amount numeric;
    v_seen   int[] := '{}';
    v_net    numeric;   -- the blue line net of its discount line, on its price basis
    v_price  numeric;   -- the blue unit price on that basis, as the daemon computes it
    v_share  numeric;
    v_left   numeric;
    v_most   numeric;
BEGIN
    IF v_reason IS NULL THEN
        RAISE EXCEPTION 'unknown reversal reason %', quote_nullable(reason) USING ERRCODE = 'CI001',
            HINT = 'use sales_return (1, 销货退回), invoicing_error (2, 开票有误), service_termination (3, 服务中止) or sales_allowance (4, 销售折让)';
    END IF;
    v_inv := cdc_invoice._invoice_for_request(request_reversal.invoice_number, 'reverse');
    IF v_inv.status = 'reversed' THEN
        RAISE EXCEPTION 'invoice % is already fully reversed', v_inv.invoice_number USING ERRCODE = 'CI006',
            HINT = format('its red invoices: SELECT invoice_number, total_incl_tax FROM cdc_invoice.report_register WHERE original_invoice_number = %L', v_inv.invoice_number);
    ELSIF v_inv.status = 'voided' THEN
        RAISE EXCEPTION 'invoice % was voided; there is nothing to reverse', v_inv.invoice_number
            USING ERRCODE = 'CI006', HINT = 'a voided invoice needs no red-letter invoice';
    END IF;
    PERFORM cdc_invoice._refuse_if_busy(v_inv, ARRAY['reverse', 'void']);

    IF lines IS NOT NULL THEN
        IF jsonb_typeof(lines) <> 'array' OR jsonb_array_length(lines) = 0 THEN
            RAISE EXCEPTION 'lines must be a non-empty JSON array, got %', lines USING ERRCODE = 'CI001',
                HINT = 'e.g. ''[{"line_no": 1, "quantity": 2}]''; omit lines for a full reversal';
        END IF;
        IF v_reason = '2' THEN
            RAISE EXCEPTION 'a reversal for invoicing_error (开票有误) must be full' USING ERRCODE = 'CI001',
                HINT = 'call request_reversal without lines';
        END IF;
        FOR v_line IN SELECT * FROM jsonb_array_elements(lines) LOOP
            IF jsonb_typeof(v_line) <> 'object' OR jsonb_typeof(v_line -> 'line_no') <> 'number' THEN
                RAISE EXCEPTION 'each line needs a numeric line_no: %', v_line USING ERRCODE = 'CI001',
                    HINT = 'e.g. {"line_no": 1, "quantity": 2}';
            END IF;
            IF (v_line ? 'quantity') = (v_line ? 'amount') THEN
                RAISE EXCEPTION 'line % must give either quantity or amount (not both, not neither)',
                    v_line -> 'line_no' USING ERRCODE = 'CI001',
                    HINT = 'quantity for returned goods, amount (incl. tax) for an allowance';
            END IF;
            IF (v_line ->> 'line_no')::int = ANY(v_seen) THEN
                RAISE EXCEPTION 'line % is named twice', v_line -> 'line_no' USING ERRCODE = 'CI001',
                    HINT = 'give each line once';
            END IF;
            v_seen := v_seen || (v_line ->> 'line_no')::int;
            SELECT * INTO v_blue FROM cdc_invoice.invoice_line l
             WHERE l.invoice_id = v_inv.id AND l.line_no = (v_line ->> 'line_no')::int;
            IF NOT FOUND OR v_blue.line_property = 1 THEN
                RAISE EXCEPTION 'invoice % has no line % to reverse', v_inv.invoice_number, v_line -> 'line_no'
                    USING ERRCODE = 'CI001',
                    HINT = format('its lines: SELECT line_no, item_name, quantity, amount_incl_tax FROM cdc_invoice.invoice_line WHERE invoice_id = %s AND line_property <> 1', v_inv.id);
            END IF;
            IF v_line ? 'quantity' THEN
                IF v_reason = '4' THEN
                    RAISE EXCEPTION 'a sales_allowance (销售折让) reversal is by amount, not quantity'
                        USING ERRCODE = 'CI001', HINT = 'give {"line_no": n, "amount": …}';
                END IF;
                v_qty := (v_line ->> 'quantity')::numeric;
                IF v_qty IS NULL OR v_qty <= 0 THEN
                    RAISE EXCEPTION 'line %: quantity must be positive', v_line -> 'line_no' USING ERRCODE = 'CI001',
                        HINT = 'the quantity returned, e.g. 2';
                END IF;
                SELECT coalesce(-sum(rl.quantity), 0) INTO v_done
                  FROM cdc_invoice.invoice r JOIN cdc_invoice.invoice_line rl ON rl.invoice_id = r.id
                 WHERE r.original_invoice_id = v_inv.id AND rl.line_no = v_blue.line_no;
                IF v_done + v_qty > v_blue.quantity THEN
                    RAISE EXCEPTION 'line % of invoice %: reversing % more would exceed the invoiced quantity % (% reversed already)',
                        v_blue.line_no, v_inv.invoice_number, v_qty, v_blue.quantity, v_done
                        USING ERRCODE = 'CI006', HINT = format('at most %s can still be reversed', v_blue.quantity - v_done);
                END IF;
                SELECT CASE WHEN v_blue.price_includes_tax
                            THEN v_blue.amount_incl_tax + coalesce(sum(d.amount_incl_tax), 0)
                            ELSE v_blue.amount_excl_tax + coalesce(sum(d.amount_excl_tax), 0) END
                  INTO v_net
                  FROM cdc_invoice.invoice_line d
                 WHERE d.invoice_id = v_inv.id AND d.line_no = v_blue.line_no + 1 AND d.line_property = 1
                   AND v_blue.line_property = 2;
                v_price := round(v_net / v_blue.quantity, 8);
                v_share := round(v_price * v_qty, 2);
                IF v_share = 0 THEN
                    RAISE EXCEPTION 'line % of invoice %: % at the unit price % comes to 0.00; a red line needs at least 0.01',
                        v_blue.line_no, v_inv.invoice_number, v_qty, v_price
                        USING ERRCODE = 'CI001', HINT = 'reverse a larger quantity';
                END IF;
                -- 销货退回 keeps the blue unit price ("“红冲原因”为“销货退回”时，只允许修改数量，不允许修改
                -- 单价", 乐企 V4.000): after an allowance (a red line without quantity) the amount
                -- left may pay for fewer units than remain.
                IF v_reason = '1' AND EXISTS (
                        SELECT 1 FROM cdc_invoice.invoice r JOIN cdc_invoice.invoice_line rl ON rl.invoice_id = r.id
                         WHERE r.original_invoice_id = v_inv.id AND rl.line_no = v_blue.line_no
                           AND rl.quantity IS NULL) THEN
                    SELECT v_net + coalesce(sum(CASE WHEN v_blue.price_includes_tax THEN rl.amount_incl_tax
                                                     ELSE rl.amount_excl_tax END), 0)
                      INTO v_left
                      FROM cdc_invoice.invoice r JOIN cdc_invoice.invoice_line rl ON rl.invoice_id = r.id
                     WHERE r.original_invoice_id = v_inv.id AND rl.line_no = v_blue.line_no;
                    IF v_share > v_left THEN
                        v_most := CASE WHEN v_blue.quantity = trunc(v_blue.quantity) THEN floor(v_left / v_price)
                                       ELSE trunc(v_left / v_price, 8) END;
                        RAISE EXCEPTION 'line % of invoice %: returning % at the blue unit price % comes to %, more than the % an earlier sales_allowance (销售折让) left; 销货退回 may not change the unit price',
                            v_blue.line_no, v_inv.invoice_number, v_qty, v_price, v_share, v_left
                            USING ERRCODE = 'CI006',
                            HINT = format('return at most %s with sales_return, and reverse the remaining %s with sales_allowance: [{"line_no": %s, "amount": %s}]',
                                          v_most, v_left - round(v_price * v_most, 2), v_blue.line_no,
                                          v_left - round(v_price * v_most, 2));
                    END IF;
                END IF;
            ELSE
                IF v_reason = '1' THEN
                    RAISE EXCEPTION 'a sales_return (销货退回) reversal is by quantity, not amount'
                        USING ERRCODE = 'CI001', HINT = 'give {"line_no": n, "quantity": …}, or use sales_allowance for an amount';
                END IF;
                v_amount := (v_line ->> 'amount')::numeric;
                IF v_amount IS NULL OR v_amount <= 0 OR v_amount <> round(v_amount, 2) THEN
                    RAISE EXCEPTION 'line %: amount must be positive, in cents', v_line -> 'line_no'
                        USING ERRCODE = 'CI001', HINT = 'the amount incl. tax, e.g. 10.00';
                END IF;
                SELECT coalesce(-sum(rl.amount_incl_tax), 0) INTO v_done
                  FROM cdc_invoice.invoice r JOIN cdc_invoice.invoice_line rl ON rl.invoice_id = r.id
                 WHERE r.original_invoice_id = v_inv.id AND rl.line_no = v_blue.line_no;
                -- the line's amount net of its discount line, if it has one
                SELECT v_blue.amount_incl_tax + coalesce(sum(d.amount_incl_tax), 0) INTO v_qty
                  FROM cdc_invoice.invoice_line d
                 WHERE d.invoice_id = v_inv.id AND d.line_no = v_blue.line_no + 1 AND d.line_property = 1
                   AND v_blue.line_property = 2;
                IF v_done + v_amount > v_qty THEN
                    RAISE EXCEPTION 'line % of invoice %: reversing % more would exceed the invoiced amount % (% reversed already)',
                        v_blue.line_no, v_inv.invoice_number, v_amount, v_qty, v_done
                        USING ERRCODE = 'CI006', HINT = format('at most %s can still be reversed', v_qty - v_done);
                END IF;
            END IF;
        END LOOP;
    ELSIF v_inv.status = 'partially_reversed' AND v_reason = '2' THEN
        RAISE EXCEPTION 'invoice % is partially reversed already; invoicing_error needs the whole invoice',
            v_inv.invoice_number USING ERRCODE = 'CI006', HINT = 'reverse the remaining lines with sales_return';
    ELSIF v_reason = '1' AND EXISTS (
            SELECT 1 FROM cdc_invoice.invoice r JOIN cdc_invoice.invoice_line rl ON rl.invoice_id = r.id
             WHERE r.original_invoice_id = v_inv.id AND rl.quantity IS NULL) THEN
        -- what an allowance left no longer pays for the remaining units at the blue unit price
        RAISE EXCEPTION 'invoice % had a sales_allowance (销售折让); a full sales_return would change the unit price, which 销货退回 may not',
            v_inv.invoice_number USING ERRCODE = 'CI006',
            HINT = 'return by quantity per line (lines => ''[{"line_no": n, "quantity": q}]''), and reverse what is left by amount with sales_allowance';
    END IF;
    RETURN cdc_invoice._enqueue(v_inv, 'reverse',
        jsonb_build_object('reason', v_reason, 'full', lines IS NULL, 'lines', lines,
                           'requested_by', session_user));
END $$;

-- request_void(): void (作废) a paper invoice. Electronic 数电 invoices can never be voided.
CREATE OR REPLACE FUNCTION cdc_invoice.request_void(invoice_number text, reason text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_inv    cdc_invoice.invoice;
    v_reason text := CASE lower(btrim(reason))
        WHEN '1' THEN '1' WHEN 'sales_return' THEN '1' WHEN '2' THEN '2' WHEN 'invoicing_error' THEN '2'
        WHEN '3' THEN '3' WHEN 'service_termination' THEN '3' WHEN '4' THEN '4' WHEN 'other' THEN '4' END;
BEGIN
    IF v_reason IS NULL THEN
        RAISE EXCEPTION 'unknown void reason %', quote_nullable(reason) USING ERRCODE = 'CI001',
            HINT = 'use sales_return (1), invoicing_error (2), service_termination (3) or other (4)';
    END IF;
    v_inv := cdc_invoice._invoice_for_request(request_void.invoice_number, 'void');
    IF v_inv.invoice_line NOT IN ('es', 'ec', 'c', 's') THEN
        RAISE EXCEPTION 'invoice % is an electronic invoice (%), which cannot be voided', v_inv.invoice_number,
            v_inv.invoice_line USING ERRCODE = 'CI006',
            HINT = format('reverse it instead: SELECT cdc_invoice.request_reversal(%L, %L)',
                          v_inv.invoice_number, 'invoicing_error');
    END IF;
    IF v_inv.status <> 'issued' THEN
        RAISE EXCEPTION 'invoice % is %, only an issued invoice can be voided', v_inv.invoice_number,
            v_inv.status USING ERRCODE = 'CI006', HINT = 'a reversed invoice stays on record';
    END IF;
    PERFORM cdc_invoice._refuse_if_busy(v_inv, ARRAY['reverse', 'void']);
    RETURN cdc_invoice._enqueue(v_inv, 'void',
        jsonb_build_object('reason', v_reason, 'requested_by', session_user));
END $$;

-- request_delivery(): send the invoice again (email and/or phone).
CREATE OR REPLACE FUNCTION cdc_invoice.request_delivery(invoice_number text, email text, phone text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_inv cdc_invoice.invoice;
BEGIN
    IF coalesce(btrim(email), '') = '' AND coalesce(btrim(phone), '') = '' THEN
        RAISE EXCEPTION 'give an email or a phone number to deliver to' USING ERRCODE = 'CI001',
            HINT = 'SELECT cdc_invoice.request_delivery(''<number>'', ''ap@example.com'', NULL)';
    END IF;
    IF email IS NOT NULL AND (length(email) > 50 OR email !~ '^[^@\s]+@[^@\s]+\.[^@\s]+$') THEN
        RAISE EXCEPTION 'email % is not valid (at most 50 characters)', quote_literal(email)
            USING ERRCODE = 'CI001', HINT = 'the platform accepts one address of up to 50 characters';
    END IF;
    -- deliveryInvoice (诺诺开放平台诺税通saas发票重新交付接口): phone is the delivery mobile number,
    -- at most 11 characters; a mainland mobile number is 11 digits starting with 1.
    IF nullif(btrim(phone), '') IS NOT NULL AND btrim(phone) !~ '^1[0-9]{10}$' THEN
        RAISE EXCEPTION 'phone % is not a mobile number (11 digits starting with 1)', quote_literal(phone)
            USING ERRCODE = 'CI001',
                  HINT = 'the platform delivers by SMS to a mainland mobile number, e.g. ''13800138000''; give NULL to deliver by email only';
    END IF;
    v_inv := cdc_invoice._invoice_for_request(request_delivery.invoice_number, 'deliver');
    RETURN cdc_invoice._enqueue(v_inv, 'deliver',
        jsonb_build_object('email', nullif(btrim(email), ''), 'phone', nullif(btrim(phone), ''),
                           'requested_by', session_user));
END $$;

-- request_refresh(): re-read the invoice from the platform (status, file links).
CREATE OR REPLACE FUNCTION cdc_invoice.request_refresh(invoice_number text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_inv cdc_invoice.invoice;
BEGIN
    v_inv := cdc_invoice._invoice_for_request(request_refresh.invoice_number, 'refresh');
    RETURN cdc_invoice._enqueue(v_inv, 'refresh', jsonb_build_object('requested_by', session_user));
END $$;

-- Whether a request's progress records anything the platform holds (a part sent, a red-letter
-- slip, a red invoice's serial): then only the platform's answer may finish it.
CREATE OR REPLACE FUNCTION cdc_invoice._at_platform(p_progress jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(jsonb_typeof(p_progress) = 'object' AND EXISTS (
        SELECT 1 FROM jsonb_each(p_progress) e
         WHERE e.value NOT IN ('null'::jsonb, '[]'::jsonb, '{}'::jsonb)), false)
$$;

-- cancel(): give up on a request that nothing at the platform depends on: a failed one, or a
-- pending one never sent (no order number yet). It becomes 'cancelled' with the
-- reason, which reports do not count as a failure; cdc_invoice.retry(id) puts it back.
-- Refused for anything claimed, submitted or possibly sent (a pending request with an order
-- number; a failed one whose answer was once lost, unless the platform refused the number
-- since), and for anything with parts, a slip or an invoice at the platform: cancelling
-- those could hide an invoice that exists.
CREATE OR REPLACE FUNCTION cdc_invoice.cancel(request_id bigint, reason text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_req     cdc_invoice.request;
    v_invoice text;
BEGIN
    IF coalesce(btrim(reason), '') = '' THEN
        RAISE EXCEPTION 'give a reason for cancelling request %', cancel.request_id
            USING ERRCODE = 'CI001',
                  HINT = format('e.g. SELECT cdc_invoice.cancel(%s, %L)', cancel.request_id,
                                'order cancelled by the customer');
    END IF;
    -- FOR UPDATE waits for a claim in progress and then sees its result ('claimed').
    SELECT * INTO v_req FROM cdc_invoice.request r WHERE r.id = cancel.request_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'request % not found', cancel.request_id USING ERRCODE = 'CI005',
            HINT = 'SELECT request_id, state, last_error FROM cdc_invoice.report_open';
    END IF;
    IF v_req.state IN ('done', 'cancelled') THEN
        RAISE EXCEPTION 'request % is % already', v_req.id, v_req.state USING ERRCODE = 'CI006',
            HINT = CASE WHEN v_req.state = 'done' AND v_req.kind = 'issue'
                        THEN 'its invoices exist: reverse them with cdc_invoice.request_reversal(<number>, <reason>)'
                        ELSE 'nothing to cancel' END;
    END IF;
    IF v_req.state IN ('claimed', 'submitted') THEN
        RAISE EXCEPTION 'request % is % (in flight at the platform or being worked on) and cannot be cancelled',
            v_req.id, v_req.state USING ERRCODE = 'CI006',
            HINT = format('wait until it is done or failed: SELECT state, last_error FROM cdc_invoice.request WHERE id = %s', v_req.id);
    END IF;
    -- A claim sets the order number: without one, nothing of this try was sent (retry() clears
    -- it only after the platform refused the old one).
    IF v_req.state = 'pending' AND v_req.platform_order_no IS NOT NULL THEN
        RAISE EXCEPTION 'request % was already tried % time(s) and may have reached the platform', v_req.id, v_req.attempt
            USING ERRCODE = 'CI006',
                  HINT = format('wait until it is done or failed (SELECT state, last_error FROM cdc_invoice.request WHERE id = %s), then cancel it', v_req.id);
    END IF;
    -- A try whose answer was lost may have issued under the request's order number; only the
    -- platform refusing that number since (a burned number: nothing exists under it) settles
    -- it here. Deliveries and refreshes create nothing at the platform.
    IF v_req.kind IN ('issue', 'reverse', 'void') AND NOT cdc_invoice._number_burned(v_req.error_code)
       AND EXISTS (SELECT 1 FROM cdc_invoice.event e
                    WHERE e.request_id = v_req.id AND e.detail ->> 'unknown_outcome' = 'true') THEN
        RAISE EXCEPTION 'request % may have reached the platform: the answer to one of its tries was lost', v_req.id
            USING ERRCODE = 'CI006',
                  HINT = format('run cdc-invoice reconcile for the day it was tried (it records an invoice found under its order number %s), or SELECT cdc_invoice.retry(%s), which asks the platform first',
                                coalesce(v_req.platform_order_no, '-'), v_req.id);
    END IF;
    SELECT i.invoice_number INTO v_invoice FROM cdc_invoice.invoice i
     WHERE i.request_id = v_req.id LIMIT 1;
    IF cdc_invoice._at_platform(v_req.progress) OR v_invoice IS NOT NULL THEN
        RAISE EXCEPTION 'request % has parts at the platform%; cancelling it would hide them', v_req.id,
            coalesce(' (invoice ' || v_invoice || ')', '') USING ERRCODE = 'CI006',
            HINT = format('finish it instead: cdc-invoice reconcile, or SELECT cdc_invoice.retry(%s) once the cause is fixed; reverse issued invoices with cdc_invoice.request_reversal', v_req.id);
    END IF;
    UPDATE cdc_invoice.request r
       SET state = 'cancelled', claimed_by = NULL, lease_until = NULL,
           last_error = format('cancelled by %s: %s', session_user, btrim(cancel.reason)),
           error_code = 'CANCELLED',
           hint = format('SELECT cdc_invoice.retry(%s) puts it back in the queue', v_req.id),
           updated_at = now(), done_at = now()
     WHERE r.id = v_req.id;
    INSERT INTO cdc_invoice.event (actor, request_id, invoice_id, source, order_ref, event, detail)
    VALUES (session_user, v_req.id, v_req.invoice_id, v_req.source, v_req.order_ref, 'request.cancelled',
            jsonb_build_object('reason', btrim(cancel.reason), 'was', v_req.state,
                               'last_error', v_req.last_error, 'error_code', v_req.error_code));
    RETURN v_req.id;
END $$;

-- Red-letter requests waiting for the buyer's confirmation. They expire 72 hours after the
-- slip's own time (billTime, 红字确认单查询 doc), which the daemon stores once it has seen the
-- slip; until then the request's time stands in.
CREATE OR REPLACE VIEW cdc_invoice.pending_red_slips AS
SELECT r.id AS request_id, i.invoice_number, r.source, r.order_ref,
       r.progress ->> 'bill_id' AS bill_id, r.progress ->> 'slip_status' AS slip_status,
       r.created_at AS requested_at,
       coalesce((r.progress ->> 'slip_time')::timestamptz, r.created_at) + interval '72 hours'
           AS expires_at
  FROM cdc_invoice.request r JOIN cdc_invoice.invoice i ON i.id = r.invoice_id
 WHERE r.kind = 'reverse' AND r.state IN ('pending', 'claimed', 'submitted');

-- Red-letter slips the BUYER applied for, waiting for the seller's answer (confirm_red_slip):
-- with the blue invoice they reverse and the amounts. The platform voids a slip nobody answers
-- 72 hours after its own time (slip_time), not after we saw it (红字确认单查询 doc, status 07).
-- (Guarded: this file is re-applied on every install, and tests that rebuild an older schema
-- apply it to tables from before version 9.)
DO $$
BEGIN
    IF to_regclass('cdc_invoice.buyer_red_slip') IS NOT NULL THEN
        CREATE OR REPLACE VIEW cdc_invoice.pending_buyer_red_slips AS
        SELECT s.bill_id, s.bill_no, s.blue_invoice_number AS invoice_number, i.source,
               i.order_ref, i.buyer_name, i.total_incl_tax AS blue_total_incl_tax,
               i.status AS blue_status, s.red_reason, s.total_excl_tax, s.total_tax,
               s.total_excl_tax + s.total_tax AS total_incl_tax, s.lines, s.slip_time,
               s.slip_time + interval '72 hours' AS expires_at
          FROM cdc_invoice.buyer_red_slip s JOIN cdc_invoice.invoice i ON i.id = s.invoice_id
         WHERE s.platform_status = '03' AND s.decision IS NULL
           AND s.slip_time + interval '72 hours' > now();
        COMMENT ON VIEW cdc_invoice.pending_buyer_red_slips IS 'Buyer-initiated red-letter slips to answer with confirm_red_slip() before expires_at.';
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cdc_invoice_reader') THEN
            GRANT SELECT ON cdc_invoice.pending_buyer_red_slips TO cdc_invoice_reader;
        END IF;
    END IF;
END $$;

-- confirm_red_slip(): the seller's answer to a buyer's slip. agree = true: the platform issues
-- the red invoice (electronic blue) and the daemon records it against its blue; false: the slip
-- is refused (06). Carried out by the daemon (nuonuo.OpeMplatform.confirm, 红字确认单确认 doc).
CREATE OR REPLACE FUNCTION cdc_invoice.confirm_red_slip(bill_id text, agree boolean)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_slip record;  -- a buyer_red_slip row (record: the table is new in version 9)
    v_inv  cdc_invoice.invoice;
    v_id   bigint;
BEGIN
    IF agree IS NULL THEN
        RAISE EXCEPTION 'agree must be true (confirm the slip) or false (refuse it)'
            USING ERRCODE = 'CI001',
            HINT = format('SELECT cdc_invoice.confirm_red_slip(%L, true)', confirm_red_slip.bill_id);
    END IF;
    SELECT * INTO v_slip FROM cdc_invoice.buyer_red_slip s
     WHERE s.bill_id = confirm_red_slip.bill_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no buyer red-letter slip %', quote_nullable(confirm_red_slip.bill_id)
            USING ERRCODE = 'CI005',
            HINT = 'SELECT bill_id, invoice_number, total_incl_tax FROM cdc_invoice.pending_buyer_red_slips';
    END IF;
    IF v_slip.decision IS NOT NULL THEN
        RAISE EXCEPTION 'slip % was already answered (%) by % at %', v_slip.bill_id,
            CASE WHEN v_slip.decision THEN 'agreed' ELSE 'refused' END, v_slip.decided_by,
            v_slip.decided_at USING ERRCODE = 'CI006',
            HINT = format('SELECT state, last_error FROM cdc_invoice.request WHERE id = %s', v_slip.request_id);
    END IF;
    IF v_slip.invoice_id IS NULL THEN
        RAISE EXCEPTION 'slip % reverses invoice %, which cdc-invoice did not issue',
            v_slip.bill_id, v_slip.blue_invoice_number USING ERRCODE = 'CI006',
            HINT = 'answer it where that invoice was issued (the platform''s portal)';
    END IF;
    IF v_slip.platform_status <> '03' THEN
        RAISE EXCEPTION 'slip % no longer waits for the seller (platform status %)',
            v_slip.bill_id, v_slip.platform_status USING ERRCODE = 'CI006',
            HINT = '07 means the 72 hours passed, 08 that the buyer withdrew it: nothing to answer';
    END IF;
    IF v_slip.slip_time + interval '72 hours' <= now() THEN
        RAISE EXCEPTION 'slip % expired at % (72 hours after the buyer''s slip time)',
            v_slip.bill_id, v_slip.slip_time + interval '72 hours' USING ERRCODE = 'CI006',
            HINT = 'the platform voids it (07); the buyer has to apply again';
    END IF;
    SELECT * INTO v_inv FROM cdc_invoice.invoice i WHERE i.id = v_slip.invoice_id FOR UPDATE;
    IF agree THEN
        PERFORM cdc_invoice._refuse_if_busy(v_inv, ARRAY['reverse', 'void', 'confirm_slip']);
    END IF;
    v_id := cdc_invoice._enqueue(v_inv, 'confirm_slip',
        jsonb_build_object('bill_id', v_slip.bill_id, 'agree', agree,
                           'reason', v_slip.red_reason, 'requested_by', session_user));
    UPDATE cdc_invoice.buyer_red_slip s
       SET decision = agree, decided_by = session_user, decided_at = now(), request_id = v_id,
           updated_at = now()
     WHERE s.bill_id = v_slip.bill_id;
    RETURN v_id;
END $$;

-- The latest reconciliation of each day and seller: what differs between us and the platform.
CREATE OR REPLACE VIEW cdc_invoice.report_reconciliation AS
SELECT r.day, r.seller_id, r.finding, r.order_no, r.invoice_number, r.source, r.order_ref,
       r.request_id, r.local_total, r.platform_total, r.detail, r.run_at
  FROM cdc_invoice.reconciliation r
 WHERE r.run_id = (SELECT l.run_id FROM cdc_invoice.reconciliation l
                    WHERE l.day = r.day AND l.seller_id = r.seller_id
                    ORDER BY l.run_at DESC LIMIT 1);
COMMENT ON VIEW cdc_invoice.report_reconciliation IS 'Latest reconciliation per day and seller (cdc-invoice reconcile).';

-- Readable by the reader role: granted in roles.sql (per-database role names).
