-- The demo's sample shop: a small inventory schema that is NOT ours (cdc-invoice only attaches
-- to it), the mappings a DBA would fill in, the document view and the attach call.
-- Used by `cdc-invoice demo` and the end-to-end tests.

CREATE SCHEMA shop;
CREATE TABLE shop.customers (
    customer_id text PRIMARY KEY,
    name        text NOT NULL,
    tax_number  text,
    email       text
);
CREATE TABLE shop.products (
    sku       text PRIMARY KEY,
    name      text NOT NULL,
    category  text NOT NULL,
    unit      text,
    spec      text,
    price     numeric(12,2) NOT NULL
);
CREATE TABLE shop.orders (
    order_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id text NOT NULL REFERENCES shop.customers,
    status      text NOT NULL DEFAULT 'new',
    created_at  timestamptz NOT NULL DEFAULT now(),
    shipped_at  timestamptz
);
CREATE TABLE shop.order_lines (
    order_id   bigint NOT NULL REFERENCES shop.orders,
    line_no    integer NOT NULL,
    sku        text NOT NULL REFERENCES shop.products,
    quantity   numeric(12,3) NOT NULL,
    unit_price numeric(12,2) NOT NULL,
    discount   numeric(12,2) NOT NULL DEFAULT 0,
    PRIMARY KEY (order_id, line_no)
);

INSERT INTO shop.customers VALUES
    ('C001', '杭州示例贸易有限公司', '91330106MA2B0001XY', 'ap@example.com'),
    ('C002', '上海样板科技有限公司', '91310115MA1K0002AB', NULL),
    ('C003', '张三', NULL, 'zhangsan@example.com'),
    ('C004', 'Northwind Traders (Shenzhen) Ltd.', '91440300MA5F0004CD', NULL);
INSERT INTO shop.products VALUES
    ('P-LAPTOP', '笔记本电脑', 'computer', '台', 'y460', 3099.00),
    ('P-MOUSE', '无线鼠标', 'computer', '个', 'M185', 79.90),
    ('P-PAPER', '复印纸', 'office', '箱', 'A4 70g', 125.50),
    ('P-TEA', '龙井茶', 'food', '盒', '250g', 268.00),
    ('S-INSTALL', '上门安装服务', 'service', '次', NULL, 150.00);

-- What a DBA fills in once: the seller, buyers and the tax classification of each item.
-- The tax number is the Nuonuo sandbox's published test seller.
INSERT INTO cdc_invoice.seller (seller_id, tax_number, name, address, phone, clerk)
VALUES ('main', '339902999999789113', '航信培训企业789113', '杭州市西湖区', '0571-77777777', '张三')
ON CONFLICT (seller_id) DO NOTHING;
INSERT INTO cdc_invoice.buyer (source, customer_ref, name, tax_number, email, natural_person)
SELECT 'shop', customer_id, name, tax_number, email, tax_number IS NULL FROM shop.customers;
INSERT INTO cdc_invoice.item_tax (source, item_ref, tax_code, tax_rate, short_name) VALUES
    ('shop', 'P-LAPTOP', '1090511030000000000', 0.13, '计算机'),
    ('shop', 'P-MOUSE', '1090511030000000000', 0.13, '计算机'),
    ('shop', 'P-PAPER', '1060201010000000000', 0.13, '纸制品'),
    ('shop', 'P-TEA', '1010115010000000000', 0.09, '茶叶'),
    ('shop', 'S-INSTALL', '3049900000000000000', 0.06, '现代服务');

-- The document view: one row per invoice line, canonical column names.
CREATE SCHEMA invoicing;
CREATE VIEW invoicing.shop_document AS
SELECT o.order_id    AS order_ref,
       o.customer_id AS customer_ref,
       l.line_no,
       l.sku         AS item_ref,
       p.name        AS item_name,
       p.spec,
       p.unit,
       l.quantity,
       l.unit_price,
       true          AS price_includes_tax,
       l.discount
  FROM shop.orders o
  JOIN shop.order_lines l ON l.order_id = o.order_id
  JOIN shop.products p ON p.sku = l.sku;

SELECT cdc_invoice.attach(
    source       => 'shop',
    order_table  => 'shop.orders',
    order_key    => 'order_id',
    issue_when   => $$NEW.status = 'shipped' AND NEW.status IS DISTINCT FROM OLD.status$$,
    document     => 'invoicing.shop_document',
    seller       => 'main',
    reverse_when => $$NEW.status = 'returned' AND OLD.status = 'shipped'$$
);
