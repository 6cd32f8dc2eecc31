-- 0012: the request's kind and state are domains instead of CHECK constraints (issue 17).
--
-- Why: PostgreSQL 15 re-parses a table's CHECK constraints from their stored text at every
-- execution of an INSERT or UPDATE (ExecRelCheck: stringToNode + expression_planner), and the
-- capture trigger's INSERT is one execution per completed order. The two checks were about
-- 100,000 of the ~650,000 instructions the trigger cost per order (callgrind, docs/benchmarks.md),
-- and the daemon pays them again on every UPDATE of a request. A domain's check is prepared
-- once per session in the type cache. The values allowed are the same.
--
-- No table rewrite: the columns become the domains while these have no constraint (a binary
-- coercible change), then ALTER DOMAIN adds the checks, which scans request once to validate.
-- The views that read the columns are dropped here and re-created by reports.sql and
-- lifecycle.sql, which every install runs after the migrations.
DROP VIEW IF EXISTS cdc_invoice.report_backlog, cdc_invoice.report_failures,
                    cdc_invoice.report_open, cdc_invoice.pending_red_slips;

CREATE DOMAIN cdc_invoice.request_kind AS text;
CREATE DOMAIN cdc_invoice.request_state AS text;
ALTER TABLE cdc_invoice.request
    DROP CONSTRAINT request_kind_check,
    DROP CONSTRAINT request_state_check,
    ALTER COLUMN kind TYPE cdc_invoice.request_kind,
    ALTER COLUMN state TYPE cdc_invoice.request_state;
ALTER DOMAIN cdc_invoice.request_kind ADD CONSTRAINT request_kind_check
    CHECK (VALUE IN ('issue', 'reverse', 'void', 'deliver', 'refresh', 'confirm_slip'));
ALTER DOMAIN cdc_invoice.request_state ADD CONSTRAINT request_state_check
    CHECK (VALUE IN ('pending', 'claimed', 'submitted', 'done', 'failed', 'cancelled'));

INSERT INTO cdc_invoice.schema_version (version, description) VALUES (12, 'request domains');
