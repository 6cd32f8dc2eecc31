-- Named queries of the demo and the end-to-end tests (against the demo shop of demo_shop.sql).

-- name: new_order
INSERT INTO shop.orders (customer_id, status) VALUES (%s, %s) RETURNING order_id;

-- name: new_order_line
INSERT INTO shop.order_lines (order_id, line_no, sku, quantity, unit_price, discount)
VALUES (%s, %s, %s, %s, %s, %s);

-- name: ship_order
UPDATE shop.orders SET status = 'shipped', shipped_at = now() WHERE order_id = %s;

-- name: issue_progress
SELECT count(*) FILTER (WHERE state = 'done')   AS done,
       count(*) FILTER (WHERE state = 'failed') AS failed
  FROM cdc_invoice.request WHERE kind = 'issue';

-- name: invoices_per_order
-- For each order: its invoices, their total, and the order's own incl.-tax total.
SELECT e.order_ref, count(i.id), sum(i.total_incl_tax), e.expected
  FROM (SELECT order_id::text AS order_ref,
               sum(round(quantity * unit_price, 2) - discount) AS expected
          FROM shop.order_lines WHERE order_id = ANY(%s) GROUP BY order_id) e
  LEFT JOIN cdc_invoice.invoice i USING (order_ref)
 GROUP BY e.order_ref, e.expected;

-- name: failed_orders
SELECT order_ref, last_error FROM cdc_invoice.request
 WHERE state = 'failed' AND order_ref = ANY(%s);

-- name: invoice_list
SELECT order_ref, invoice_number, buyer_name, total_excl_tax, total_tax, total_incl_tax
  FROM cdc_invoice.invoice ORDER BY order_ref::bigint;

-- name: daily_report
SELECT day, seller_id, kind, tax_rate, invoices, amount_excl_tax, tax, amount_incl_tax
  FROM cdc_invoice.report_daily ORDER BY 1, 2, 3, 4;
