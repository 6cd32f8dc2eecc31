-- Northwind (https://github.com/pthom/northwind_psql): the seller, the buyers and the tax
-- classification of every product. Run after `cdc-invoice install`, before attach.sql.
-- Re-runnable: rows are inserted or refreshed, nothing else is touched. Northwind's own tables
-- are only read.

-- The seller (销方). The tax number is the Nuonuo sandbox's published test seller; use your
-- company's 统一社会信用代码 and the platform account configured for this seller_id.
INSERT INTO cdc_invoice.seller (seller_id, tax_number, name, address, phone, clerk)
VALUES ('northwind', '339902999999789113', 'Northwind Traders (示例)', 'Seattle, WA', '(206) 555-0100',
        'Andrew Fuller')
ON CONFLICT (seller_id) DO NOTHING;

-- Buyers (购方), one per Northwind customer. The customers are foreign companies without a
-- Chinese tax number: a 数电普票 ('pc', the seller's default kind) to a company may omit it; a
-- 专票 may not. The platform allows at most 100 characters of address plus phone: the street,
-- city and country fit (83 at most in Northwind); the postal code is left out.
INSERT INTO cdc_invoice.buyer (source, customer_ref, name, phone, address)
SELECT 'northwind', c.customer_id, c.company_name, c.phone,
       concat_ws(', ', c.address, c.city, c.country)
  FROM public.customers c
ON CONFLICT (source, customer_ref) DO UPDATE
   SET name = EXCLUDED.name, phone = EXCLUDED.phone, address = EXCLUDED.address;

-- Tax classification (税收分类编码) and rate per product, decided per category as a starting
-- point: processed foods 13 %, primary agricultural products (初级农产品) 9 %. The codes are
-- illustrative leaf codes of the 商品和服务税收分类编码表: check each product against the
-- bureau's table before issuing real invoices (the platform answers E9121/E9138 to a bad
-- code), and give a product its own row where its category's rate does not fit (for example
-- processed meat is 13 %, not 9 %).
INSERT INTO cdc_invoice.item_tax (source, item_ref, tax_code, tax_rate, short_name)
SELECT 'northwind', p.product_id::text, m.tax_code, m.tax_rate, m.short_name
  FROM public.products p
  JOIN public.categories c ON c.category_id = p.category_id
  JOIN (VALUES
        ('Beverages',      '1030307020000000000', 0.13, '饮料'),
        ('Condiments',     '1030601990000000000', 0.13, '调味品'),
        ('Confections',    '1030204990000000000', 0.13, '糖果'),
        ('Dairy Products', '1030109990000000000', 0.13, '乳制品'),
        ('Grains/Cereals', '1030501990000000000', 0.13, '谷物制品'),
        ('Meat/Poultry',   '1010303990000000000', 0.09, '肉类'),
        ('Produce',        '1010112990000000000', 0.09, '蔬菜'),
        ('Seafood',        '1010502990000000000', 0.09, '水产品')
       ) AS m (category_name, tax_code, tax_rate, short_name)
    ON m.category_name = c.category_name
ON CONFLICT (source, item_ref) DO UPDATE
   SET tax_code = EXCLUDED.tax_code, tax_rate = EXCLUDED.tax_rate, short_name = EXCLUDED.short_name;

-- Freight is invoiced as a service line of its own (item_ref 'FREIGHT' in document.sql):
-- 交通运输服务 at 9 % (code 301 交通运输服务 > 30101 陆路运输服务 > 3010102 其他陆路运输服务),
-- because Northwind contracts the carrier and charges the customer for the transport. If you
-- only arrange transport as an agent (物流辅助服务, 6 %), or your tax office treats the freight
-- as part of a mixed sale (混合销售, taxed at the goods' rate), change this one row.
INSERT INTO cdc_invoice.item_tax (source, item_ref, tax_code, tax_rate, short_name)
VALUES ('northwind', 'FREIGHT', '3010102000000000000', 0.09, '运输服务')
ON CONFLICT (source, item_ref) DO UPDATE
   SET tax_code = EXCLUDED.tax_code, tax_rate = EXCLUDED.tax_rate, short_name = EXCLUDED.short_name;
