"""Response codes the sandbox returns, with where each one comes from.

Documented by Nuonuo: E0000; E4000 接口调用失败 for a missing or wrong private parameter and
E9101-E9131, E9138, E9154, E9301, E9302, E9338 (requestBillingNew doc,
1.诺诺开放平台诺税通saas请求开具发票接口…【外部用】.md, 返回码); E9613 (开票重试 doc); E9500, E9601,
E9611 (发票详情查询 doc); E9999 (发票重新交付 doc); the token errors 070304-070307, 070315
(创建应用.md) and 070101; 070601 签名不匹配 for a bad X-Nuonuo-Sign (jellyfrank/nuonuo-sdk
docs/sandbox-validation.md, a live answer of sandbox.nuonuocs.cn).

ASSUMPTIONS (docs/platform-assumptions.md) — the real platform's codes for these are not documented:
  070301  accessToken invalid or expired ("accessToken无效或已过期")
  070601  also for missing senid/nonce/timestamp and for a timestamp outside ±300 s of the sandbox
          host's clock (the window itself is undocumented)
  070303  unknown ``method`` header
  070315  gateway request whose Content-Type is not application/json (the documented token code)
  E4000   every missing or malformed field where the doc names no more specific code (the doc's
          own wording: "必填字段没有传值，或者传的值不对")
  E9124-E9129  per field: incl. amount too long / not a number (E9124/E9125), excl. amount
          (E9126/E9127), tax (E9128/E9129)
  E9601   query with more than 50 serials or order numbers (documented as "query error")
  E9500   query where none of the serials / order numbers exists; when only some exist the
          answer is E0000 with the found ones (unknown ones are omitted)
  E9201   void (invoiceCancellation) of a 数电 electronic invoice (pc/bs): never allowed
  E9202   void of an invoice that is not issued (status ≠ 2)
  E9103   red-letter slip for a blue invoice that is already fully reversed, or whose lines would
          exceed what is left of the blue lines (cumulative limit)
  E4000   also on the red-letter pages, which document no error code at all (unknown slip, detail
          that does not match the blue, |price × num − amount| > 0.01): the platform's generic
          "parameter missing or wrong" answer, so a refused slip ends with its reason
  E9999   saveInvoiceRedConfirm with a billId already used ("申请号重复", as one client's tests
          expect; documented only as deliveryInvoice's "invoice not found")
  E9117/E9118  slip buyer name / tax number ≠ the blue invoice's (documented for legacy red)
  070307  token request with a grant_type other than client_credentials ("Incorrect appType")
  E9429   gateway call over ``rate_limit_per_s`` for the app key in the last second
          ("请求过于频繁，请稍后再试"); not acted on (docs/platform-assumptions.md)
HTTP: every protocol answer, errors included, is HTTP 200 with a JSON body (as the SDKs expect);
only injected faults produce other statuses.
"""

# ruff: noqa: S105 - response codes, not passwords (TOKEN_* names trip the check)
from __future__ import annotations

from typing import Final

OK: Final = "E0000"
RED_QUERY_OK: Final = "0000"  # queryInvoiceRedConfirm only: its doc's 响应参数 example
MALFORMED: Final = "E4000"
THROTTLED: Final = "E9429"
TOKEN_INVALID: Final = "070301"
BAD_SIGNATURE: Final = "070601"
UNKNOWN_METHOD: Final = "070303"
BAD_CONTENT_TYPE: Final = "070315"
UNKNOWN_APP: Final = "070101"
QUERY_TOO_MANY: Final = "E9601"
NOT_FOUND: Final = "E9500"
QUERY_EMPTY: Final = "E9611"
VOID_NOT_ALLOWED: Final = "E9201"
VOID_BAD_STATE: Final = "E9202"
RED_EXCEEDED: Final = "E9103"
RED_INVALID: Final = MALFORMED  # E4000: see above
DELIVERY_NOT_FOUND: Final = "E9999"

# Token endpoint (§2.2): {"error": code, "error_description": text}
TOKEN_BAD_CLIENT_ID: Final = "070304"
TOKEN_BAD_SECRET: Final = "070305"
TOKEN_LIMIT: Final = "070306"
TOKEN_BAD_APP_TYPE: Final = "070307"
TOKEN_BAD_CONTENT_TYPE: Final = "070315"

# queryInvoiceResult statusMsg texts (the final one as seen in a live response).
STATUS_MESSAGES: Final = {
    "20": "开票中",
    "21": "开票成功签章中",
    "22": "开票失败",
    "24": "开票成功签章失败",
    "2": "开票完成（最终状态）",
    "3": "已作废",
    "31": "作废中",
}

# invoiceKind as printed for each 数电 invoiceLine.
INVOICE_KINDS: Final = {
    "pc": "电子发票(普通发票)",
    "bs": "电子发票(增值税专用发票)",
    "ec": "纸质发票(普通发票)",
    "es": "纸质发票(增值税专用发票)",
}
