-- 0009: red-letter confirmation slips (红字确认单) that the BUYER applied for.
--
-- Once the buyer has booked an invoice (入账/用途确认) it is often the buyer who starts the slip;
-- the platform then shows it as 03 购方录入待销方确认 and the seller must confirm or refuse it
-- within 72 hours of the slip's own time (红字确认单查询/确认 docs). The daemon copies such slips
-- here; finance answers with cdc_invoice.confirm_red_slip(bill_id, agree), which queues a
-- 'confirm_slip' request that the daemon carries out (nuonuo.OpeMplatform.confirm).
ALTER TABLE cdc_invoice.request DROP CONSTRAINT request_kind_check;
ALTER TABLE cdc_invoice.request ADD CONSTRAINT request_kind_check
    CHECK (kind IN ('issue', 'reverse', 'void', 'deliver', 'refresh', 'confirm_slip'));

CREATE TABLE cdc_invoice.buyer_red_slip (
    bill_id             text PRIMARY KEY,          -- the platform's 申请号
    seller_id           text NOT NULL,
    bill_no             text,
    bill_uuid           text,
    invoice_id          bigint REFERENCES cdc_invoice.invoice,  -- our blue; NULL: not ours
    blue_invoice_number text NOT NULL,
    red_reason          text NOT NULL,
    slip_time           timestamptz NOT NULL,      -- billTime: the 72 hours count from here
    total_excl_tax      numeric(18,2) NOT NULL,    -- negative, as on the slip
    total_tax           numeric(18,2) NOT NULL,
    lines               jsonb NOT NULL,
    platform_status     text NOT NULL,             -- billStatus when last seen
    decision            boolean,                   -- the seller's answer: true = agree
    decided_by          text,
    decided_at          timestamptz,
    request_id          bigint REFERENCES cdc_invoice.request,
    first_seen          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX buyer_red_slip_invoice_idx ON cdc_invoice.buyer_red_slip (invoice_id);

INSERT INTO cdc_invoice.schema_version (version, description) VALUES (9, 'buyer red slip');
