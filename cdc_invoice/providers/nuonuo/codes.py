"""Nuonuo answer codes and what each one means for the daemon (reference/nuonuo.md §2.2, §2.10).

Every platform code is mapped here, once, to one ``cdc_invoice.errors`` class and an operator hint,
so the transport code only has to hand over ``code``, ``describe`` and ``method``.
"""

from __future__ import annotations

from typing import Final

from cdc_invoice.errors import (
    OutcomeUnknown,
    ProviderAuthError,
    ProviderError,
    ProviderRejected,
    ProviderThrottled,
    ProviderUnavailable,
)

SUCCESS: Final = "E0000"

# Method names (reference/nuonuo.md §2.6). The void method is spelled with a lower-case "e".
ISSUE: Final = "nuonuo.OpeMplatform.requestBillingNew"
QUERY: Final = "nuonuo.OpeMplatform.queryInvoiceResult"
# 开票重试 doc (ourworldcn/PowerLms 诺诺网接口/数电发票/2.…开票重试接口…): a failed (22) invoice is
# issued again with the same serial and order number; E9613 after 20 retries.
RE_INVOICE: Final = "nuonuo.OpeMplatform.reInvoice"
RE_INVOICE_LIMIT: Final = "E9613"
SAVE_RED_CONFIRM: Final = "nuonuo.OpeMplatform.saveInvoiceRedConfirm"
QUERY_RED_CONFIRM: Final = "nuonuo.OpeMplatform.queryInvoiceRedConfirm"
FAST_RED: Final = "nuonuo.OpeMplatform.fastInvoiceRed"
VOID: Final = "nuonuo.electronInvoice.invoiceCancellation"
DELIVER: Final = "nuonuo.OpeMplatform.deliveryInvoice"
LIST: Final = "nuonuo.OpeMplatform.queryInvoiceList"

# queryInvoiceRedConfirm's doc shows "0000" in its answer example where every other method says
# "E0000" (§2.5): accept both there (a read-only call, so a wrong guess costs nothing).
RED_CONFIRM_SUCCESS: Final = frozenset({SUCCESS, "0000"})

# Query answers "no such invoice": the Provider contract says unknown invoices are simply omitted.
NOT_FOUND: Final = frozenset({"E9500"})

# ASSUMPTION (docs/platform-assumptions.md): the platform does not document the code for an expired
# or revoked access token; our sandbox answers 070301. The adapter fetches a new token once and
# retries on 070301 and on any gateway code whose text names the token (is_token_error).
TOKEN_INVALID: Final = frozenset({"070301"})

# A bad X-Nuonuo-Sign is answered 070601 签名不匹配 (jellyfrank/nuonuo-sdk
# docs/sandbox-validation.md, a live run against sandbox.nuonuocs.cn). 070302 was our sandbox's
# earlier invention: kept so a daemon talking to an old sandbox still reports a signature problem.
SIGNATURE_INVALID: Final = frozenset({"070601", "070302"})

# Business answers are "E" + 4 digits; the gateway and token endpoint answer six digits (0701xx,
# 0703xx token errors in 创建应用.md; 070601 signature). None of the gateway codes is published in
# full, so every all-digit code is read as a problem with the SELLER's credentials, signature or
# token: the gateway refused before the business method ran, so nothing was created, and the
# order itself is not at fault (never a rejected order).
AUTH_PREFIXES: Final = ("0701", "0703", "0706")

# Codes that say "try again later" rather than "this request is wrong".
TRANSIENT: Final = frozenset({"E9601"})

# Methods that change something at the platform: an unknown answer to one of them may hide an
# effect, so it is "outcome unknown" (query first), never "refused". deliveryInvoice only re-sends
# an e-mail / SMS: repeating it is harmless, so it is treated like a read.
MUTATING: Final = frozenset(
    {
        ISSUE,
        SAVE_RED_CONFIRM,
        FAST_RED,
        VOID,
        "nuonuo.OpeMplatform.confirm",
        "nuonuo.OpeMplatform.reInvoice",
    }
)

# The documented answers that mean "refused, nothing created" — the request was checked and
# refused before anything existed at the platform, so a new order number cannot make a second
# invoice. Sources: requestBillingNew doc (1.诺诺开放平台诺税通saas请求开具发票接口…md,
# 返回码 table: E4000, E9101–E9131, E9138, E9154, E9301, E9302, E9338, E9796–E9801),
# 开票重试 doc (E9613), 发票详情查询 doc (E9500/E9601/E9611, read-only), 发票重新交付 doc
# (E9999). Every other code is undocumented: see error_for. E9106 (orderNo already used) is
# deliberately absent: it means an invoice MAY exist under the number.
REFUSED: Final = frozenset(
    {
        "E4000",
        *(f"E91{n:02d}" for n in range(1, 32) if n not in (6, 9)),
        "E9138",
        "E9154",
        "E9301",
        "E9302",
        "E9338",
        "E9613",
        *(f"E{n}" for n in range(9796, 9802)),
    }
)
# Method-specific documented refusals (the code means "refused" only on that method).
METHOD_REFUSED: Final[dict[str, frozenset[str]]] = {
    DELIVER: frozenset({"E9999"}),  # 发票重新交付 doc: 发票不存在不能重新交付
    QUERY: frozenset({"E9611"}),
    VOID: frozenset({"E9102", "E9500"}),
}

# E9106 订单编号或流水号不能重复 (requestBillingNew doc): documented, but it does NOT mean "nothing
# created" — an earlier attempt may have been accepted. Raised as ProviderRejected with its code
# so the issuer can turn it into "query by order number" (daemon/issuer.py ALREADY_EXISTS).
ORDER_NO_TAKEN: Final = "E9106"

UNKNOWN_CODE_HINT: Final = (
    "the platform answered a code its documentation does not list; the request is treated as "
    "'outcome unknown' (queried, then retried with the same order number — never a new one): "
    "check the platform console and docs/platform-assumptions.md"
)

# ASSUMPTION (docs/platform-assumptions.md): the platform's throttling answer is undocumented
# (reference/nuonuo.md §2.10 "rate limits: [U]"); our sandbox answers E9429, and HTTP 429 is
# read the same way (client.py). Throttled calls were not acted on: they are resent, paced.
THROTTLED: Final = frozenset({"E9429"})

# ASSUMPTION (docs/platform-assumptions.md): an invoice the platform accepts and then fails for
# lack of monthly quota (发票总额度, reference/nuonuo.md §3.4, "quota (async fail)") carries a
# failCause with this text; the sandbox's is "当月发票总额度不足:…". Such a failure pauses the
# seller and is re-submitted (reInvoice, same serial) once the quota is raised.
QUOTA_FAIL_MARKERS: Final = ("额度不足",)


def is_quota_failure(fail_cause: str | None) -> bool:
    return bool(fail_cause) and any(m in (fail_cause or "") for m in QUOTA_FAIL_MARKERS)


_CHECK_CREDENTIALS = (
    "check app_key/app_secret configured for this seller (a self-use app's key and secret "
    "from the Nuonuo console)"
)

HINTS: Final[dict[str, str]] = {
    # token / credentials
    "070101": _CHECK_CREDENTIALS,
    "070301": "the access token was rejected twice in a row; check that the token store is shared "
    "and that app_key matches the token",
    "070302": "the request signature was rejected: check app_secret, and that nothing between us "
    "and the platform rewrites the body",
    "070601": "the request signature was rejected (签名不匹配): check this seller's app_secret "
    "and app_key, and that nothing between us and the platform rewrites the body",
    "E4000": "a required field was empty or had a wrong value (接口调用失败): the describe text "
    "names it; check the order and cdc_invoice.seller settings",
    "070304": _CHECK_CREDENTIALS,
    "070305": _CHECK_CREDENTIALS,
    "070306": "the platform allows only 50 token requests per app per 30 days and they are used "
    "up; wait for the window to pass or ask Nuonuo support, and make sure every daemon uses the "
    "shared token store instead of fetching its own",
    "070307": "the app must be a self-use (自用型) app to use client_credentials",
    "070315": "the token request had a wrong Content-Type (a bug in cdc-invoice)",
    # issue
    "E9104": "buyer email is longer than 50 characters: fix cdc_invoice.buyer.email",
    "E9105": "a discount line must have the same goods name as the line it discounts",
    "E9106": "orderNo already used: query by order number (an earlier attempt may have been "
    "accepted) instead of issuing again",
    "E9108": "a discount is larger than the amount of the line it discounts",
    "E9110": "a discount line must directly follow the line it discounts",
    "E9111": "a blue invoice's discount line must have a negative amount",
    "E9112": "a discount line must have the same tax rate as the line it discounts",
    "E9114": "a discounted line must have a positive quantity",
    "E9121": "the goods code (税收分类编码) was not found: fix cdc_invoice.item_tax.tax_code "
    "(19 digits, not a summary code)",
    "E9122": "the invoice has no lines",
    "E9123": "a line without price must carry taxIncludedAmount, taxExcludedAmount and tax",
    "E9130": "rounding: taxExcludedAmount + tax must equal taxIncludedAmount exactly on every line",
    "E9131": "rounding: |taxExcludedAmount × taxRate − tax| must be ≤ 0.06 on every line; "
    "check the item's tax rate",
    "E9138": "the goods code (税收分类编码) could not be matched: "
    "fix cdc_invoice.item_tax.tax_code",
    "E9154": "the platform would split this order into more than 10 invoices: lower the "
    "per-invoice amount or split the order",
    "E9301": "the seller's tax number is not registered (企业资质) on the platform: register it "
    "with Nuonuo",
    "E9302": "seller tax number (salerTaxNum) must equal userTax: check cdc_invoice.seller."
    "tax_number against the Nuonuo account",
    "E9338": "the seller has no API issuing entitlement: enable API invoicing for this tax number "
    "at Nuonuo",
    **{
        f"E912{n}": "an amount or tax is not a number or is longer than 20 characters "
        "(a bug in cdc-invoice's formatting)"
        for n in range(4, 10)
    },
    # red-letter (红冲) — E9103 is documented for reversing twice; the platform's codes for the
    # 数电 slip's cumulative per-line limits are not, and our sandbox answers E9103 for them too.
    "E9103": "the blue invoice is already reversed (红冲), or these red lines exceed what is left "
    "of the blue lines (cumulative limit): check the earlier reversals of this invoice",
    "E9113": "the red invoice's buyer address must equal the blue invoice's",
    "E9115": "the red invoice's buyer phone must equal the blue invoice's",
    "E9117": "the red-letter buyer name must equal the blue invoice's buyer name exactly",
    "E9118": "the red-letter buyer tax number must equal the blue invoice's",
    "E9120": "the red invoice's buyer bank account must equal the blue invoice's",
    # reInvoice (开票重试 doc)
    "E9613": "the platform allows 20 retries of one failed invoice and they are used up: fix "
    "the failure cause with Nuonuo; the order number stays (an invoice may still appear under "
    "it), so cancel the request rather than issue it under a new number",
    # query
    "E9601": "the platform could not query the invoice right now; it will be retried",
    "E9429": "the platform throttled the call: lower [provider] max_requests_per_second to the "
    "rate your Nuonuo app is allowed; the daemon slows down and resends meanwhile",
    "E9611": "neither serial numbers nor order numbers were given (a bug in cdc-invoice)",
}


VOID_ELECTRONIC_HINT: Final = (
    "cannot void 数电 electronic invoice: reverse it with a red-letter slip instead "
    "(pc/bs can never be voided; only paper es/ec can)"
)

# Codes whose meaning depends on the method (E9999 is "invoice not found" for deliveryInvoice but
# our sandbox also uses it for a reused billId). Looked up before HINTS.
METHOD_HINTS: Final[dict[str, dict[str, str]]] = {
    DELIVER: {
        "E9999": "invoice not found: the platform has no issued invoice with this number (the "
        "20-digit 数电 number; code + 8-digit number for paper invoices). An invoice that is "
        "still being issued cannot be delivered yet",
        "E9104": "the delivery email is longer than 50 characters",
    },
    SAVE_RED_CONFIRM: {
        # ASSUMPTION (the sandbox's choice; the platform documents no code for it).
        "E9999": "the slip was refused; if billId was already used, an earlier attempt was "
        "accepted: query the slip by bill_id instead of applying again",
    },
    VOID: {
        # ASSUMPTIONS (the sandbox's codes; the platform's are undocumented, §6).
        "E9201": VOID_ELECTRONIC_HINT,
        "E9202": "only an issued invoice (status 2) without a red-letter slip can be voided",
        "E9102": "invoice code / number do not match the serial: check the paper invoice's "
        "code and 8-digit number",
        "E9500": "invoice not found: check the serial",
    },
}


def is_auth_code(code: str) -> bool:
    """A gateway / token / credential code: six digits, not a business ``E`` code."""
    return (code.isdigit() and code != "0000") or code.startswith(AUTH_PREFIXES)


def is_token_error(code: str, describe: str) -> bool:
    """Whether a fresh access token may cure this answer (refresh once, then retry)."""
    if code in TOKEN_INVALID:
        return True
    text = describe.lower()
    return (
        is_auth_code(code) and code not in SIGNATURE_INVALID and ("token" in text or "令牌" in text)
    )


def is_refused(code: str, method: str) -> bool:
    """A documented refusal: nothing was created at the platform."""
    return code in REFUSED or code in METHOD_REFUSED.get(method, frozenset())


def error_for(code: str, describe: str, *, method: str) -> ProviderError:
    """The exception for a platform answer that is not a success.

    Gateway codes → ProviderAuthError (the seller's credentials; retryable, never a rejected
    order). Documented refusals → ProviderRejected. Anything else is undocumented: for a method
    that changes something it is OutcomeUnknown (query first, keep the order number), for a read
    it is ProviderUnavailable — an unknown code never fails an order as "refused".
    """
    message = f"{method}: {code} {describe}".rstrip()
    hint = METHOD_HINTS.get(method, {}).get(code) or HINTS.get(code)
    if code in TOKEN_INVALID or code in SIGNATURE_INVALID or is_auth_code(code):
        return ProviderAuthError(message, code=code, hint=hint, method=method)
    if code in THROTTLED:
        return ProviderThrottled(message, code=code, hint=hint, method=method)
    if code in TRANSIENT:
        return ProviderUnavailable(message, code=code, hint=hint, method=method)
    if code == ORDER_NO_TAKEN or is_refused(code, method) or (method, code) in _ASSUMED_REFUSED:
        return ProviderRejected(message, code=code, hint=hint, method=method)
    unknown = hint or UNKNOWN_CODE_HINT
    if method in MUTATING:
        return OutcomeUnknown(message, code=code, hint=unknown, method=method)
    return ProviderUnavailable(message, code=code, hint=unknown, method=method)


# Undocumented codes read as refusals (assumptions, docs/platform-assumptions.md): only the
# sandbox's answers to a void — of a 数电 electronic invoice (E9201) or of an invoice that is not
# issued (E9202). A void creates nothing, so a wrong guess cannot make a second invoice. The red-
# letter pages document no error code at all: anything but E0000 and the generic E4000 there is
# outcome unknown — the slip is queried by its billId before it is applied for again.
_ASSUMED_REFUSED: Final = frozenset({(VOID, "E9201"), (VOID, "E9202")})
