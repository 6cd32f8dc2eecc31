-- cdc-invoice: fresh install of the current schema version (tables, indexes, roles).
-- Functions (api.sql) and report views (reports.sql) are applied after this file on every install
-- and upgrade; `cdc-invoice sql` prints all three in order for DBAs who review SQL first.
-- Upgrades of an older install apply sql/migrations/NNNN_*.sql instead of this file; a test
-- checks that both paths give the same catalogue.

CREATE SCHEMA IF NOT EXISTS cdc_invoice;
COMMENT ON SCHEMA cdc_invoice IS 'cdc-invoice: e-invoices for completed orders (https://example.invalid/cdc-invoice)';

-- Which version of these tables is installed; the daemon refuses to start on a mismatch.
CREATE TABLE cdc_invoice.schema_version (
    version     integer PRIMARY KEY,
    description text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- One row: a random tag that makes our platform order numbers unique across installations,
-- bound to the cluster (pg_control_system()'s system identifier) and database it was made in:
-- a restored copy elsewhere would reuse production's order numbers, so the daemon refuses to
-- run on a mismatch until a DBA gives the copy a tag of its own (SELECT cdc_invoice.retag()).
CREATE TABLE cdc_invoice.installation (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    tag         text NOT NULL DEFAULT upper(substr(md5(random()::text || clock_timestamp()::text), 1, 4)),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- the names of this database's roles: <prefix>daemon, <prefix>operator, <prefix>reader
    role_prefix text NOT NULL DEFAULT 'cdc_invoice_' CHECK (role_prefix ~ '^[a-z_][a-z0-9_]{0,40}$'),
    system_identifier bigint,
    database_name     text
);
INSERT INTO cdc_invoice.installation (system_identifier, database_name)
SELECT s.system_identifier, current_database() FROM pg_control_system() s;

-- The selling company (销方). One per platform account; keyed by the config's credentials.
CREATE TABLE cdc_invoice.seller (
    seller_id          text PRIMARY KEY,
    tax_number         text NOT NULL CHECK (tax_number ~ '^[0-9A-Z]{15,20}$'),
    name               text NOT NULL,
    address            text,
    phone              text,
    bank_account       text,
    clerk              text CHECK (char_length(btrim(clerk)) BETWEEN 1 AND 20),  -- 开票员: no default
    payee              text,
    checker            text,
    invoice_line       text NOT NULL DEFAULT 'pc',   -- pc 数电普票, bs 数电专票, es/ec 数电纸质
    extension_number   text,
    max_invoice_amount numeric(18,2) CHECK (max_invoice_amount > 0),  -- optional split limit
    max_lines          integer NOT NULL DEFAULT 2000 CHECK (max_lines BETWEEN 2 AND 2000),
    created_at         timestamptz NOT NULL DEFAULT now(),
    remark_template    text,           -- 备注 when the view gives none, e.g. '订单 {order_ref}'
    show_bank_account  text NOT NULL DEFAULT 'none'   -- showBankAccountType
                       CHECK (show_bank_account IN ('none', 'seller', 'buyer', 'both')),
    survey_answer_type text CHECK (survey_answer_type IN ('1', '2', '3'))  -- small-scale 1 %/3 %
);

-- Tax classification (税收分类编码) and rate per item. source '*' applies to every source.
CREATE TABLE cdc_invoice.item_tax (
    source      text NOT NULL DEFAULT '*',
    item_ref    text NOT NULL,
    tax_code    text NOT NULL CHECK (tax_code ~ '^[0-9]{19}$'),
    tax_rate    numeric(7,4) NOT NULL CHECK (tax_rate >= 0 AND tax_rate < 1),
    short_name  text,
    policy_flag text,
    PRIMARY KEY (source, item_ref)
);

-- Buyers (购方) by the order's customer key. source '*' applies to every source.
CREATE TABLE cdc_invoice.buyer (
    source         text NOT NULL DEFAULT '*',
    customer_ref   text NOT NULL,
    name           text NOT NULL,
    tax_number     text,
    email          text,
    phone          text,
    address        text,
    bank_account   text,
    invoice_type   text,          -- NULL: the seller's default invoice kind; 'bs' for 专票 …
    natural_person boolean NOT NULL DEFAULT false,
    PRIMARY KEY (source, customer_ref)
);

-- Attached order streams (written by cdc_invoice.attach, read by the daemon and `sources`).
CREATE TABLE cdc_invoice.source (
    source        text PRIMARY KEY CHECK (length(source) BETWEEN 1 AND 40),
    order_table   text NOT NULL,        -- qualified and quoted, as regclass prints it
    order_key     text NOT NULL,
    key_type      text NOT NULL,
    issue_when    text NOT NULL,
    reverse_when  text,
    document      text NOT NULL,        -- the document view, qualified and quoted
    seller_id     text NOT NULL REFERENCES cdc_invoice.seller,
    capture_fn    text NOT NULL,        -- generated trigger function
    attached_at   timestamptz NOT NULL DEFAULT now(),
    attached_by   text NOT NULL DEFAULT current_user
);

-- kind and state are domains, not CHECK constraints: PostgreSQL re-parses a table's CHECK
-- constraints at every INSERT/UPDATE execution, and the capture trigger's INSERT runs once per
-- completed order (migration 0012).
CREATE DOMAIN cdc_invoice.request_kind AS text
    CONSTRAINT request_kind_check
    CHECK (VALUE IN ('issue', 'reverse', 'void', 'deliver', 'refresh', 'confirm_slip'));
CREATE DOMAIN cdc_invoice.request_state AS text
    CONSTRAINT request_state_check
    CHECK (VALUE IN ('pending', 'claimed', 'submitted', 'done', 'failed', 'cancelled'));

-- The work queue. One row per (source, order_ref, kind, seq); the trigger writes it inside the
-- order's own transaction, the daemon claims it with SKIP LOCKED and a lease.
--   pending -> claimed -> (submitted ->) done | failed | cancelled
-- For claimed/submitted rows being worked on, run_after = lease_until: the same claim query
-- picks up rows whose lease expired (a worker died) and rows whose retry or poll is due.
CREATE TABLE cdc_invoice.request (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source            text NOT NULL,
    order_ref         text NOT NULL,
    kind              cdc_invoice.request_kind NOT NULL,
    seq               integer NOT NULL DEFAULT 1,
    state             cdc_invoice.request_state NOT NULL DEFAULT 'pending',
    document          json,           -- issue: the order's document snapshot at commit (json:
                                      -- cheaper to build in the inventory's transaction)
    params            jsonb,          -- reverse/void/deliver/refresh: what was asked
    invoice_id        bigint,         -- reverse/void/deliver/refresh: the invoice concerned
    generation        integer NOT NULL DEFAULT 0,   -- bumped by retry() after a platform refusal
    attempt           integer NOT NULL DEFAULT 0,   -- claims so far (fencing token with claimed_by)
    retries           integer NOT NULL DEFAULT 0,   -- retryable errors so far (drives backoff)
    run_after         timestamptz NOT NULL DEFAULT now(),
    claimed_by        text,
    lease_until       timestamptz,
    platform_order_no text,           -- idempotency key sent to the platform (+ 2-digit part)
    platform_serial   text,
    progress          jsonb,          -- per-part platform state of a submitted request
    last_error        text,
    error_code        text,
    hint              text,
    actor             text NOT NULL DEFAULT current_user,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    done_at           timestamptz,
    UNIQUE (source, order_ref, kind, seq)
);
-- The claim index: only live rows, in due order. Finished rows cost the claim nothing.
CREATE INDEX request_due_idx ON cdc_invoice.request (run_after, id)
    WHERE state IN ('pending', 'claimed');
CREATE INDEX request_poll_idx ON cdc_invoice.request (run_after, id) WHERE state = 'submitted';
CREATE INDEX request_failed_idx ON cdc_invoice.request (source, updated_at) WHERE state = 'failed';
CREATE INDEX request_invoice_idx ON cdc_invoice.request (invoice_id)
    WHERE invoice_id IS NOT NULL;
CREATE INDEX request_platform_serial_idx ON cdc_invoice.request (platform_serial)
    WHERE platform_serial IS NOT NULL;
-- Unique once set (at the first claim): partial, so the capture trigger's insert adds no entry.
CREATE UNIQUE INDEX request_platform_order_no_key ON cdc_invoice.request (platform_order_no)
    WHERE platform_order_no IS NOT NULL;
ALTER TABLE cdc_invoice.request SET (autovacuum_vacuum_scale_factor = 0.02, fillfactor = 80);

-- Issued invoices (blue and red), recorded by the daemon in the same transaction as the
-- request's completion and an audit event.
CREATE TABLE cdc_invoice.invoice (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id          bigint NOT NULL REFERENCES cdc_invoice.request,
    part                integer NOT NULL DEFAULT 1,
    source              text NOT NULL,
    order_ref           text NOT NULL,
    seller_id           text NOT NULL,
    invoice_number      text NOT NULL UNIQUE,
    kind                text NOT NULL CHECK (kind IN ('blue', 'red')),
    invoice_line        text NOT NULL DEFAULT 'pc',
    original_invoice_id bigint REFERENCES cdc_invoice.invoice,
    platform_serial     text NOT NULL,
    platform_order_no   text NOT NULL UNIQUE,
    issued_at           timestamptz NOT NULL,
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    buyer_name          text NOT NULL,
    buyer_tax_number    text,
    buyer_email         text,
    buyer_phone         text,
    total_excl_tax      numeric(18,2) NOT NULL,
    total_tax           numeric(18,2) NOT NULL,
    total_incl_tax      numeric(18,2) NOT NULL CHECK (total_incl_tax = total_excl_tax + total_tax),
    status              text NOT NULL DEFAULT 'issued'
                        CHECK (status IN ('issued', 'partially_reversed', 'reversed', 'voided')),
    pdf_url             text,
    ofd_url             text,
    xml_url             text,
    delivery_status     text,
    paper_code          text,     -- paper invoices (es/ec): 发票代码 and 8-digit number
    paper_number        text,
    remark              text,     -- 备注 as sent
    seal_failed         boolean NOT NULL DEFAULT false,  -- status 24: issued, the seal failed
    UNIQUE (request_id, part),
    CHECK ((kind = 'red') = (original_invoice_id IS NOT NULL))
);
CREATE INDEX invoice_order_idx ON cdc_invoice.invoice (source, order_ref);
CREATE INDEX invoice_issued_idx ON cdc_invoice.invoice (issued_at);
-- A blue invoice's reds (partial reversals, status); partial: blue inserts add no entry.
CREATE INDEX invoice_original_idx ON cdc_invoice.invoice (original_invoice_id)
    WHERE original_invoice_id IS NOT NULL;

CREATE TABLE cdc_invoice.invoice_line (
    invoice_id      bigint NOT NULL REFERENCES cdc_invoice.invoice ON DELETE CASCADE,
    line_no         integer NOT NULL,
    source_line_no  integer,
    line_property   smallint NOT NULL DEFAULT 0,   -- 0 normal, 1 discount, 2 discounted
    item_ref        text,
    item_name       text NOT NULL,
    tax_code        text,
    quantity        numeric(30,8),
    unit_price      numeric(30,8),
    price_includes_tax boolean NOT NULL DEFAULT true,
    amount_excl_tax numeric(18,2) NOT NULL,
    tax_rate        numeric(7,4) NOT NULL,
    tax             numeric(18,2) NOT NULL,
    amount_incl_tax numeric(18,2) NOT NULL CHECK (amount_incl_tax = amount_excl_tax + tax),
    PRIMARY KEY (invoice_id, line_no)
);

-- Append-only audit log of every state change and platform call (secrets never written).
CREATE TABLE cdc_invoice.event (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text NOT NULL DEFAULT current_user,
    request_id  bigint,
    invoice_id  bigint,
    source      text,
    order_ref   text,
    event       text NOT NULL,      -- e.g. request.claimed, platform.issue, invoice.recorded
    detail      jsonb
);
CREATE INDEX event_request_idx ON cdc_invoice.event (request_id);

-- The platform access token, shared by all daemons (the platform allows 50 fetches / 30 days).
-- Encrypted by the daemon with a key from its own config; the database never sees it in clear.
CREATE TABLE cdc_invoice.provider_token (
    app_key         text PRIMARY KEY,
    token_encrypted bytea NOT NULL,
    expires_at      timestamptz NOT NULL,
    fetched_at      timestamptz NOT NULL DEFAULT now(),
    fetched_by      text NOT NULL,
    fetch_log       timestamptz[] NOT NULL DEFAULT '{}'   -- fetch times, the last 30 days
);

-- Live daemons and their heartbeats (for `cdc-invoice status` and the health check).
CREATE TABLE cdc_invoice.daemon (
    daemon_id    text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    version      text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz,
    sellers      text[]       -- the sellers it has credentials for, so claims work for (NULL: any)
);

-- Results of `cdc-invoice reconcile`: local records vs. the platform's, per day and seller.
CREATE TABLE cdc_invoice.reconciliation (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id         uuid NOT NULL,
    run_at         timestamptz NOT NULL DEFAULT now(),
    day            date NOT NULL,
    seller_id      text NOT NULL,
    finding        text NOT NULL CHECK (finding IN ('ok', 'adopted', 'amount_mismatch',
                       'buyer_mismatch', 'missing_locally', 'missing_at_platform',
                       'not_invoiced', 'foreign')),
    order_no       text,
    invoice_number text,
    source         text,
    order_ref      text,
    request_id     bigint,
    local_total    numeric(18,2),
    platform_total numeric(18,2),
    detail         text
);
CREATE INDEX reconciliation_day_idx ON cdc_invoice.reconciliation (day, run_at);

-- The invoice files (XML, PDF, OFD) in the company's own archive: bytes here, or a path under
-- daemon.archive_dir. Never changed: archive.sql's triggers refuse UPDATE, DELETE, TRUNCATE.
CREATE TABLE cdc_invoice.invoice_file (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    invoice_id   bigint NOT NULL REFERENCES cdc_invoice.invoice,
    kind         text NOT NULL CHECK (kind IN ('xml', 'pdf', 'ofd')),
    bytes        bytea,
    path         text,
    size         bigint NOT NULL CHECK (size >= 0),
    sha256       text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    fetched_at   timestamptz NOT NULL DEFAULT now(),
    fetched_by   text NOT NULL,
    source_url   text NOT NULL,
    check_result text NOT NULL CHECK (check_result IN ('ok', 'mismatch')),
    check_detail text,
    UNIQUE (invoice_id, kind),
    CHECK ((bytes IS NULL) <> (path IS NULL))
);
ALTER TABLE cdc_invoice.invoice_file ALTER COLUMN bytes SET STORAGE EXTERNAL;  -- already compressed
-- The alert's rows (report_archive_mismatches, the metric): few, found without a scan.
CREATE INDEX invoice_file_mismatch_idx ON cdc_invoice.invoice_file (invoice_id)
    WHERE check_result = 'mismatch';

-- What is still to fetch, per invoice and kind: filled by a trigger on cdc_invoice.invoice in
-- the recording transaction (nothing is ever missed), worked by the archiver with a lease in
-- run_after (a dead fetcher's row comes back), retried with a backoff, 'failed' after
-- daemon.archive_max_attempts.
CREATE TABLE cdc_invoice.invoice_file_fetch (
    invoice_id  bigint NOT NULL REFERENCES cdc_invoice.invoice ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('xml', 'pdf', 'ofd')),
    source_url  text NOT NULL,
    state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
    attempts    integer NOT NULL DEFAULT 0,
    run_after   timestamptz NOT NULL DEFAULT now(),
    claimed_by  text,
    last_error  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (invoice_id, kind)
);
CREATE INDEX invoice_file_fetch_due_idx ON cdc_invoice.invoice_file_fetch (run_after)
    WHERE state = 'pending';
-- Failed ones (report_archive_open, the metric) without reading the done ones.
CREATE INDEX invoice_file_fetch_open_idx ON cdc_invoice.invoice_file_fetch (state)
    WHERE state <> 'done';

-- Red-letter slips the BUYER applied for (03 购方录入待销方确认): the seller answers them with
-- confirm_red_slip() within 72 hours of slip_time (红字确认单查询/确认 docs).
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

-- The cluster-wide request rate per app key ([provider] max_requests_per_second): the next
-- moment a call may start (a token bucket of depth one, GCRA), shared by every daemon of the
-- database through cdc_invoice.take_rate_token (sql/ops.sql).
CREATE TABLE cdc_invoice.rate_bucket (
    app_key    text PRIMARY KEY,
    next_start timestamptz NOT NULL
);

INSERT INTO cdc_invoice.schema_version (version, description) VALUES (1, 'initial'), (2, 'reconciliation'),
    (3, 'document json'), (4, 'red invoice index'), (5, 'tamper evident'), (6, 'finance'),
    (7, 'invoice files'), (8, 'lifecycle'), (9, 'buyer red slip'), (10, 'lifecycle edges'),
    (11, 'peak'), (12, 'request domains');
