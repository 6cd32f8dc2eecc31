-- 0011: peak season (issue 17): the cluster-wide platform request rate per app key.
--
-- The cluster-wide request rate per app key ([provider] max_requests_per_second): the next
-- moment a call may start (a token bucket of depth one, GCRA), shared by every daemon of the
-- database through cdc_invoice.take_rate_token (sql/ops.sql).
CREATE TABLE cdc_invoice.rate_bucket (
    app_key    text PRIMARY KEY,
    next_start timestamptz NOT NULL
);

INSERT INTO cdc_invoice.schema_version (version, description) VALUES (11, 'peak');
