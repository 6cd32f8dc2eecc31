-- Northwind's document view: one row per invoice line, in cdc-invoice's canonical columns.
-- It lives in a schema of its own so that Northwind's schema (public) is not changed.
--
-- Lines: orders × order_details × products, plus one freight line per order.
-- Money in Northwind is `real` (float4). It becomes Decimal without ever being a binary float
-- in cdc-invoice: the capture trigger stores to_jsonb(row), which writes a real as the shortest
-- decimal that reads back as the same float (9.65, not 9.649999618530273; PostgreSQL 12+ with
-- the default extra_float_digits), and the daemon parses JSON numbers as Decimal. Where this
-- view computes with money it converts the same way: real::text::numeric (shortest decimal).
--
-- Discount: Northwind stores a fraction of the line (0 to 0.25) and charges
-- round(unit_price × quantity × (1 − discount), 2). cdc-invoice's discount column is an
-- amount on the line's price basis, so the view gives gross minus that net: the invoice line
-- then comes to exactly what Northwind charges (a discounted line plus a discount line).
--
-- Prices are taken as tax-inclusive (含税价, price_includes_tax = true): the invoice total is
-- what the customer paid. If your prices are net of VAT, set it to false: the total becomes
-- net + tax.
CREATE SCHEMA IF NOT EXISTS northwind_invoicing;

CREATE OR REPLACE VIEW northwind_invoicing.document AS
SELECT o.order_id              AS order_ref,      -- smallint, as orders.order_id (index use)
       o.customer_id           AS customer_ref,   -- cdc_invoice.buyer
       d.product_id::integer   AS line_no,        -- order_details has no line number
       d.product_id::text      AS item_ref,       -- cdc_invoice.item_tax
       p.product_name          AS item_name,
       p.quantity_per_unit     AS spec,
       d.quantity,
       d.unit_price,                              -- real: see above
       true                    AS price_includes_tax,
       round(d.unit_price::text::numeric * d.quantity, 2)
         - round(d.unit_price::text::numeric * d.quantity * (1 - d.discount::text::numeric), 2)
                               AS discount
  FROM public.orders o
  JOIN public.order_details d ON d.order_id = o.order_id
  JOIN public.products p ON p.product_id = d.product_id
UNION ALL
-- Freight: a service line of its own (item_ref FREIGHT, 9 %: see mappings.sql). line_no
-- 100000 sorts it after every product (product_id is a smallint).
SELECT o.order_id,
       o.customer_id,
       100000,
       'FREIGHT',
       'Freight: ' || coalesce(s.company_name, 'carrier'),
       NULL,
       1,
       o.freight,
       true,
       0
  FROM public.orders o
  LEFT JOIN public.shippers s ON s.shipper_id = o.ship_via
 WHERE o.freight > 0;
