-- 0008: an invoice that was issued but whose seal failed (Nuonuo status 24, 开票成功签章失败).
--
-- Status 24 means the invoice EXISTS at the tax bureau (发票详情查询 doc: "22、24状态时，无需再
-- 查询"): it is recorded as issued at once, never issued again, and flagged here so that finance
-- can follow up the seal with the platform. Existing invoices were all sealed (status 2).
ALTER TABLE cdc_invoice.invoice ADD COLUMN seal_failed boolean NOT NULL DEFAULT false;

INSERT INTO cdc_invoice.schema_version (version, description) VALUES (8, 'lifecycle');
