-- 0007: the invoice files (XML, PDF, OFD) in the company's own archive.
--
-- Under 数电 the XML is the legal original; the platform's links expire. The daemon's archiver
-- fetches every recorded invoice's files (blue and red), checks them, and keeps them here
-- (bytes) or in the directory daemon.archive_dir names (path). Rows are never changed: the
-- triggers in archive.sql refuse UPDATE, DELETE and TRUNCATE.
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

-- Invoices recorded before this version: their files are fetched too (if the links still work).
INSERT INTO cdc_invoice.invoice_file_fetch (invoice_id, kind, source_url)
SELECT i.id, f.kind, f.url
  FROM cdc_invoice.invoice i
 CROSS JOIN LATERAL (VALUES ('xml', i.xml_url), ('pdf', i.pdf_url), ('ofd', i.ofd_url)) f(kind, url)
 WHERE f.url IS NOT NULL AND f.url <> '';

INSERT INTO cdc_invoice.schema_version (version, description) VALUES (7, 'invoice files');
