-- 0005: the installation tag is bound to its cluster and database; daemons record their sellers.
--
-- A restored copy of the database (pg_dump/restore, CREATE DATABASE … TEMPLATE) kept
-- production's installation tag and so issued under production's platform order numbers. The
-- tag is now bound to the cluster's system identifier and the database name; the daemon
-- refuses to start elsewhere until a DBA runs SELECT cdc_invoice.retag(). An upgrade binds the
-- tag to the database being upgraded (this one: the production it runs on).
ALTER TABLE cdc_invoice.installation ADD COLUMN system_identifier bigint,
                                     ADD COLUMN database_name text;
UPDATE cdc_invoice.installation
   SET system_identifier = (SELECT s.system_identifier FROM pg_control_system() s),
       database_name = current_database();

-- Each daemon claims only the work of sellers it has credentials for; `status` shows pending
-- work no live daemon can take. NULL: a daemon of an older version (takes any seller's work).
ALTER TABLE cdc_invoice.daemon ADD COLUMN sellers text[];

INSERT INTO cdc_invoice.schema_version (version, description) VALUES (5, 'lifecycle edges');
