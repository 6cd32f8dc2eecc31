-- 0006: what finance needs on a real invoice (issue 15).
--
-- seller.clerk (开票人): the platform wants "和开票登录账号对应的开票员姓名", at most 20 characters
-- (requestBillingNew, clerk). The old default '开票员' was a silent guess: it is gone, and the
-- column is empty until the DBA sets the issuing account's clerk name; orders of a seller without
-- one fail with the UPDATE that fixes them (and `cdc-invoice health` / attach say so first).
-- Existing rows: a seller that has issued invoices keeps its clerk whatever it is (the platform
-- accepted it, so it matches the account); a seller that never issued and still has the
-- placeholder '开票员', or a name the platform refuses (> 20 characters), gets NULL.
ALTER TABLE cdc_invoice.seller ALTER COLUMN clerk DROP DEFAULT, ALTER COLUMN clerk DROP NOT NULL;
UPDATE cdc_invoice.seller s SET clerk = NULL
 WHERE (s.clerk = '开票员' OR char_length(btrim(s.clerk)) NOT BETWEEN 1 AND 20)
   AND NOT EXISTS (SELECT 1 FROM cdc_invoice.invoice i WHERE i.seller_id = s.seller_id);
UPDATE cdc_invoice.seller s SET clerk = left(btrim(s.clerk), 20)
 WHERE char_length(btrim(s.clerk)) > 20;
ALTER TABLE cdc_invoice.seller
    ADD CONSTRAINT seller_clerk_check CHECK (char_length(btrim(clerk)) BETWEEN 1 AND 20),
    -- 备注 when the document view gives no remark, e.g. '订单 {order_ref}' (docs/finance-guide.md)
    ADD COLUMN remark_template text,
    -- showBankAccountType: which bank accounts the invoice prints (requestBillingNew)
    ADD COLUMN show_bank_account text NOT NULL DEFAULT 'none'
        CHECK (show_bank_account IN ('none', 'seller', 'buyer', 'both')),
    -- surveyAnswerType: why a small-scale taxpayer issues at 1 %/3 % (requestBillingNew)
    ADD COLUMN survey_answer_type text CHECK (survey_answer_type IN ('1', '2', '3'));

-- The remark printed on the invoice (what was sent), for the register.
ALTER TABLE cdc_invoice.invoice ADD COLUMN remark text;

INSERT INTO cdc_invoice.schema_version (version, description) VALUES (6, 'finance');
