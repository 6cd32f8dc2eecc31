-- Attach Northwind's orders. Northwind has no status column: an order completes when it
-- ships, i.e. when shipped_date goes from NULL to a date. On INSERT, OLD is NULL, so an order
-- inserted already shipped is captured too; backfill evaluates the same condition with OLD
-- all NULL and so finds every order shipped before this attach.
SELECT cdc_invoice.attach(
    source       => 'northwind',
    order_table  => 'public.orders',
    order_key    => 'order_id',
    issue_when   => $$OLD.shipped_date IS NULL AND NEW.shipped_date IS NOT NULL$$,
    document     => 'northwind_invoicing.document',
    seller       => 'northwind'
);
