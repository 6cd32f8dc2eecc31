"""``NuonuoProvider``: the Provider protocol over the Nuonuo 诺税通 API (nuonuo.OpeMplatform.*).

Which calls can act on the platform (so that a lost answer is OutcomeUnknown, not
ProviderUnavailable): requestBillingNew, saveInvoiceRedConfirm, confirm, fastInvoiceRed and
invoiceCancellation. deliveryInvoice only re-sends a file: a retry after a lost answer at worst
sends it twice, so it is treated like a query.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Final

import httpx

from cdc_invoice.errors import (
    OutcomeUnknown,
    ProviderAuthError,
    ProviderRejected,
    ProviderThrottled,
    ProviderUnavailable,
    SellerPaused,
)
from cdc_invoice.invoice.model import InvoiceDraft, InvoiceLine, Seller
from cdc_invoice.providers.base import (
    BuyerSlip,
    InvoiceRef,
    IssueAccepted,
    PlatformInvoice,
    RedSlip,
)
from cdc_invoice.providers.nuonuo import buyer_slips, codes, payload
from cdc_invoice.providers.nuonuo.client import (
    DEFAULT_UNKNOWN_HINT,
    DEFAULT_USER_AGENT,
    Answer,
    Credentials,
    NuonuoClient,
    dumps,
)
from cdc_invoice.providers.nuonuo.token import Clock, TokenCache, TokenStore
from cdc_invoice.providers.pace import Pacer, QuotaGuard

logger = logging.getLogger(__name__)

ISSUE: Final = codes.ISSUE
QUERY: Final = codes.QUERY
SAVE_RED_CONFIRM: Final = codes.SAVE_RED_CONFIRM
QUERY_RED_CONFIRM: Final = codes.QUERY_RED_CONFIRM
FAST_RED: Final = codes.FAST_RED
VOID: Final = codes.VOID
DELIVER: Final = codes.DELIVER
LIST: Final = codes.LIST

# Guards a platform that ignores pageNo or never stops sending full pages.
MAX_LIST_PAGES: Final = 2000

_SLIP_UNKNOWN = "query the slip by bill_id before applying again"
_VOID_UNKNOWN = "query the invoice by serial (status 31/3) before voiding again"


class NuonuoProvider:
    """The Nuonuo open platform (or the sandbox, which speaks the same protocol).

    ::

        provider = NuonuoProvider(
            base_url="https://sdk.nuonuo.com",
            token_url="https://open.nuonuo.com/accessToken",
            credentials={"main": Credentials(app_key="…", app_secret="…")},
            token_store=MemoryTokenStore(),
        )
        try:
            accepted = await provider.issue(seller, draft, order_no)
        finally:
            await provider.aclose()

    :param credentials: per ``Seller.seller_id``.
    :param token_store: shared by every process using the same apps (50 token requests / 30 days).
    :param transport, clock: for tests.
    Other parameters are those of ``NuonuoClient``.
    """

    max_query_batch = 50

    def __init__(
        self,
        *,
        base_url: str,
        credentials: Mapping[str, Credentials],
        token_store: TokenStore,
        token_url: str | None = None,
        timeout: float = 10.0,
        max_connections: int = 64,
        verify: bool | str | ssl.SSLContext = True,
        max_response_bytes: int = 2_000_000,
        user_agent: str = DEFAULT_USER_AGENT,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock = time.time,
        pacer: Pacer | None = None,
        quota: QuotaGuard | None = None,
    ) -> None:
        self._credentials = dict(credentials)
        # providers/pace.py: rate cap, throttling and quota pauses (None: calls go straight out)
        self.pacer = pacer
        self.quota = quota
        self._clock = clock
        self._tokens = TokenCache(token_store, clock=clock)
        self._client = NuonuoClient(
            base_url=base_url,
            token_url=token_url,
            timeout=timeout,
            max_connections=max_connections,
            verify=verify,
            max_response_bytes=max_response_bytes,
            user_agent=user_agent,
            transport=transport,
            clock=clock,
        )

    def __repr__(self) -> str:
        return f"NuonuoProvider(gateway={str(self._client.gateway_url)!r})"

    async def __aenter__(self) -> NuonuoProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------ Provider

    async def issue(self, seller: Seller, draft: InvoiceDraft, order_no: str) -> IssueAccepted:
        if not order_no:
            raise ValueError("order_no (the idempotency key) must not be empty")
        self._check_quota(seller)
        content = payload.build_order(
            seller,
            draft,
            order_no,
            invoice_date=datetime.fromtimestamp(self._clock(), payload.CHINA_TZ),
        )
        answer = await self._call(seller, ISSUE, content, mutating=True, order_no=order_no)
        if answer.code != codes.SUCCESS:
            raise codes.error_for(answer.code, answer.describe, method=ISSUE)
        return IssueAccepted(order_no=order_no, serial=self._serial(answer, ISSUE))

    async def reissue(self, seller: Seller, serial: str, order_no: str) -> IssueAccepted:
        # 开票重试 doc: fpqqlsh (serial) or orderno, the serial wins; the invoice keeps both.
        # A lost answer is harmless here (same serial, same order number: at most one invoice),
        # yet it is reported as OutcomeUnknown like every call that can act.
        content = {"fpqqlsh": serial, "orderno": order_no}
        answer = await self._call(
            seller,
            codes.RE_INVOICE,
            content,
            mutating=True,
            order_no=order_no,
            unknown_hint="query the invoice by serial before retrying again",
        )
        if answer.code != codes.SUCCESS:
            raise codes.error_for(answer.code, answer.describe, method=codes.RE_INVOICE)
        return IssueAccepted(order_no=order_no, serial=serial)

    async def query_by_serials(
        self, seller: Seller, serials: Sequence[str]
    ) -> list[PlatformInvoice]:
        return await self._query(seller, payload.query_content(serials=self._batch(serials)))

    async def query_by_order_nos(
        self, seller: Seller, order_nos: Sequence[str]
    ) -> list[PlatformInvoice]:
        return await self._query(seller, payload.query_content(order_nos=self._batch(order_nos)))

    async def request_red_slip(
        self,
        seller: Seller,
        blue: InvoiceRef,
        red_lines: Sequence[InvoiceLine] | None,
        reason: str,
        bill_id: str,
        red_order_no: str,
    ) -> str:
        content = payload.red_confirm_content(
            seller, blue, red_lines, reason, bill_id, red_order_no
        )
        answer = await self._call(
            seller,
            SAVE_RED_CONFIRM,
            content,
            mutating=True,
            order_no=bill_id,
            unknown_hint=_SLIP_UNKNOWN,
        )
        if answer.code != codes.SUCCESS:
            raise codes.error_for(answer.code, answer.describe, method=SAVE_RED_CONFIRM)
        # The result is the billId; we sent ours, so anything else would be the platform's own.
        result = answer.result
        if isinstance(result, (str, int)) and not isinstance(result, bool) and str(result):
            if str(result) != bill_id:
                logger.warning(
                    "%s: asked for billId %s, the platform answered %s",
                    SAVE_RED_CONFIRM,
                    bill_id,
                    result,
                )
            return str(result)
        return bill_id

    async def query_red_slip(self, seller: Seller, bill_id: str) -> RedSlip | None:
        content = payload.red_confirm_query_content(bill_id)
        answer = await self._call(seller, QUERY_RED_CONFIRM, content, mutating=False)
        if answer.code in codes.NOT_FOUND:
            return None
        if answer.code not in codes.RED_CONFIRM_SUCCESS:
            raise codes.error_for(answer.code, answer.describe, method=QUERY_RED_CONFIRM)
        try:
            items = payload.slip_items(answer.result, answer.extra)
            slips = [payload.parse_red_slip(item, bill_id) for item in items]
        except payload.MalformedResponse as exc:
            raise ProviderUnavailable(
                f"{QUERY_RED_CONFIRM}: malformed result: {exc}", method=QUERY_RED_CONFIRM
            ) from exc
        # Only our slip: a platform that ignored the billId filter must not hand us another one.
        mine = [slip for slip in slips if slip.bill_id == bill_id]
        if len(mine) > 1:
            logger.warning("%s: %d slips with billId %s", QUERY_RED_CONFIRM, len(mine), bill_id)
        return mine[0] if mine else None

    async def list_buyer_slips(self, seller: Seller, since: datetime) -> list[BuyerSlip]:
        until = datetime.fromtimestamp(self._clock(), payload.CHINA_TZ)
        found: dict[str, BuyerSlip] = {}
        for page_no in range(1, buyer_slips.MAX_PAGES + 1):
            content = buyer_slips.list_content(since, until, page_no)
            answer = await self._call(seller, QUERY_RED_CONFIRM, content, mutating=False)
            if answer.code in codes.NOT_FOUND:
                break
            if answer.code not in codes.RED_CONFIRM_SUCCESS:
                raise codes.error_for(answer.code, answer.describe, method=QUERY_RED_CONFIRM)
            try:
                items = payload.slip_items(answer.result, answer.extra)
                page = [buyer_slips.parse(item) for item in items]
            except payload.MalformedResponse as exc:
                raise ProviderUnavailable(
                    f"{QUERY_RED_CONFIRM}: malformed result: {exc}", method=QUERY_RED_CONFIRM
                ) from exc
            before = len(found)
            found.update((s.bill_id, s) for s in page if s is not None)
            if len(items) < buyer_slips.PAGE_SIZE or (page and len(found) == before):
                break
        return list(found.values())

    async def confirm_red_slip(
        self, seller: Seller, bill_id: str, agree: bool, red_order_no: str
    ) -> None:
        content = buyer_slips.confirm_content(bill_id, agree, red_order_no)
        answer = await self._call(
            seller,
            buyer_slips.CONFIRM,
            content,
            mutating=True,
            order_no=red_order_no,
            unknown_hint=_SLIP_UNKNOWN,
        )
        if answer.code != codes.SUCCESS:
            raise codes.error_for(answer.code, answer.describe, method=buyer_slips.CONFIRM)

    async def issue_red_from_slip(
        self, seller: Seller, blue: InvoiceRef, slip: RedSlip, red_order_no: str
    ) -> IssueAccepted:
        content = payload.fast_red_content(seller, blue, slip, red_order_no)
        answer = await self._call(seller, FAST_RED, content, mutating=True, order_no=red_order_no)
        if answer.code != codes.SUCCESS:
            raise codes.error_for(answer.code, answer.describe, method=FAST_RED)
        return IssueAccepted(order_no=red_order_no, serial=self._serial(answer, FAST_RED))

    async def void(self, seller: Seller, invoice: InvoiceRef, reason: str) -> None:
        # ``reason`` is not sent: the request documents no reason field (§2.11 / A6).
        if invoice.invoice_line in payload.ELECTRONIC_LINES:
            # Never voidable (12366, §3.6); the platform's code for it is undocumented, so say it
            # here instead of spending a call on a guess.
            raise ProviderRejected(
                f"{VOID}: invoice {invoice.serial} is a 数电 electronic invoice "
                f"({invoice.invoice_line})",
                hint=codes.VOID_ELECTRONIC_HINT,
                method=VOID,
            )
        answer = await self._call(
            seller,
            VOID,
            payload.void_content(invoice),
            mutating=True,
            order_no=invoice.serial,
            unknown_hint=_VOID_UNKNOWN,
        )
        if answer.code != codes.SUCCESS:
            raise codes.error_for(answer.code, answer.describe, method=VOID)

    async def deliver(
        self, seller: Seller, invoice: InvoiceRef, email: str | None, phone: str | None
    ) -> None:
        content = payload.delivery_content(seller, invoice, email, phone)
        answer = await self._call(seller, DELIVER, content, mutating=False)
        if answer.code != codes.SUCCESS:
            raise codes.error_for(answer.code, answer.describe, method=DELIVER)

    async def list_invoices(
        self, seller: Seller, start: datetime, end: datetime
    ) -> list[PlatformInvoice]:
        found: dict[str, PlatformInvoice] = {}  # by serial: windows share their boundary second
        for low, high in payload.list_windows(start, end):
            for invoice in await self._list_window(seller, low, high):
                found.setdefault(invoice.serial, invoice)
        return list(found.values())

    # ------------------------------------------------------------ helpers

    def _check_quota(self, seller: Seller) -> None:
        if self.quota is None or self.quota.may_issue(seller.seller_id):
            return
        pause = self.quota.paused.get(seller.seller_id)
        raise SellerPaused(
            f"seller {seller.seller_id!r} is paused: the platform's monthly invoicing quota is "
            f"exhausted ({pause.reason if pause else 'quota'})",
            seller_id=seller.seller_id,
            retry_after=self.quota.retry_after(seller.seller_id) or 0.0,
            hint="ask the tax bureau / Nuonuo to raise the seller's 发票总额度; the daemon "
            "probes and resumes by itself, nothing is failed meanwhile",
        )

    async def _list_window(
        self, seller: Seller, start: datetime, end: datetime
    ) -> list[PlatformInvoice]:
        size = payload.LIST_PAGE_SIZE
        invoices: list[PlatformInvoice] = []
        serials: set[str] = set()
        for page_no in range(1, MAX_LIST_PAGES + 1):
            content = payload.list_content(seller, start, end, page_no=page_no, page_size=size)
            answer = await self._call(seller, LIST, content, mutating=False)
            if answer.code in codes.NOT_FOUND:
                return invoices
            if answer.code != codes.SUCCESS:
                raise codes.error_for(answer.code, answer.describe, method=LIST)
            try:
                items, total = payload.list_page(answer.result, answer.extra)
                page = [payload.parse_invoice(item) for item in items]
            except payload.MalformedResponse as exc:
                raise ProviderUnavailable(f"{LIST}: malformed result: {exc}", method=LIST) from exc
            new = [inv for inv in page if inv.serial not in serials]
            serials.update(inv.serial for inv in new)
            invoices += new
            if total is not None:
                # Trust the total over the page length: the platform may cap pageSize lower.
                if len(invoices) >= total:
                    return invoices
                if not page:
                    logger.warning(
                        "%s: total %d but only %d invoices before an empty page",
                        LIST,
                        total,
                        len(invoices),
                    )
                    return invoices
            elif len(page) < size:
                return invoices
            if not new:
                raise ProviderUnavailable(
                    f"{LIST}: page {page_no} repeats earlier invoices (paging does not advance)",
                    method=LIST,
                )
        raise ProviderUnavailable(
            f"{LIST}: more than {MAX_LIST_PAGES} pages of {size} in one window", method=LIST
        )

    @staticmethod
    def _serial(answer: Answer, method: str) -> str:
        result = answer.result
        serial = result.get("invoiceSerialNum") if isinstance(result, dict) else None
        if not isinstance(serial, str) or not serial:
            # Accepted (E0000) yet no serial: the invoice may exist, so never issue blindly again.
            raise OutcomeUnknown(
                f"{method}: E0000 without invoiceSerialNum",
                code=answer.code,
                method=method,
                hint="query by order number before issuing again",
            )
        return serial

    def _batch(self, keys: Sequence[str]) -> list[str]:
        if isinstance(keys, str):  # a str is a Sequence[str]: catch query_by_serials(s, "123")
            raise TypeError("pass a sequence of serials / order numbers, not one string")
        if len(keys) > self.max_query_batch:
            raise ValueError(
                f"at most {self.max_query_batch} serials or order numbers per query, "
                f"got {len(keys)}"
            )
        return list(keys)

    async def _query(self, seller: Seller, content: dict[str, object]) -> list[PlatformInvoice]:
        if not content.get("serialNos") and not content.get("orderNos"):
            return []
        answer = await self._call(seller, QUERY, content, mutating=False)
        if answer.code in codes.NOT_FOUND:
            return []
        if answer.code != codes.SUCCESS:
            raise codes.error_for(answer.code, answer.describe, method=QUERY)
        if answer.result is None:
            return []
        if not isinstance(answer.result, list):
            raise ProviderUnavailable(f"{QUERY}: result is not a list", method=QUERY)
        try:
            return [payload.parse_invoice(item) for item in answer.result]
        except payload.MalformedResponse as exc:
            raise ProviderUnavailable(f"{QUERY}: malformed result: {exc}", method=QUERY) from exc

    def _credentials_for(self, seller: Seller) -> Credentials:
        try:
            return self._credentials[seller.seller_id]
        except KeyError:
            raise ProviderAuthError(
                f"no Nuonuo credentials for seller {seller.seller_id!r}",
                hint="configure app_key/app_secret for this seller",
            ) from None

    async def _call(
        self,
        seller: Seller,
        method: str,
        content: Mapping[str, object],
        *,
        mutating: bool,
        order_no: str | None = None,
        unknown_hint: str = DEFAULT_UNKNOWN_HINT,
    ) -> Answer:
        """One paced gateway call: throttling answers are resent, further apart, for up to the
        pacer's max_throttle_wait; then ProviderThrottled (the daemon defers the request). A
        throttled call was not acted on (docs/platform-assumptions.md), so resending is safe;
        were it acted on, the resend of an issue answers E9106 and the daemon queries first."""
        pacer = self.pacer
        if pacer is None:
            return await self._call_once(
                seller,
                method,
                content,
                mutating=mutating,
                order_no=order_no,
                unknown_hint=unknown_hint,
            )
        app_key = self._credentials_for(seller).app_key
        deadline = pacer.clock() + pacer.max_throttle_wait
        while True:
            await pacer.before(app_key, seller.seller_id)
            try:
                answer = await self._call_once(
                    seller,
                    method,
                    content,
                    mutating=mutating,
                    order_no=order_no,
                    unknown_hint=unknown_hint,
                )
            except ProviderThrottled as exc:  # HTTP 429
                throttled: ProviderThrottled = exc
            else:
                if answer.code not in codes.THROTTLED:
                    pacer.on_success(seller.seller_id)
                    return answer
                throttled = ProviderThrottled(
                    f"{method}: {answer.code} {answer.describe}".rstrip(),
                    code=answer.code,
                    hint=codes.HINTS.get(answer.code),
                    method=method,
                )
            pause = pacer.on_throttled(seller.seller_id)
            if pacer.clock() + pause > deadline:
                raise throttled
            await pacer.sleep(pause)

    async def _call_once(
        self,
        seller: Seller,
        method: str,
        content: Mapping[str, object],
        *,
        mutating: bool,
        order_no: str | None = None,
        unknown_hint: str = DEFAULT_UNKNOWN_HINT,
    ) -> Answer:
        """One gateway call with a valid token; a rejected token is replaced and retried once."""
        credentials = self._credentials_for(seller)
        body = dumps(content)  # once: the retry sends and signs the same bytes
        fetch = partial(self._client.fetch_token, credentials)
        token = await self._tokens.get(credentials.app_key, fetch)
        send = partial(
            self._client.call,
            method=method,
            content=body,
            credentials=credentials,
            user_tax=seller.tax_number,
            mutating=mutating,
            order_no=order_no,
            unknown_hint=unknown_hint,
        )
        answer = await send(access_token=token.access_token)
        if codes.is_token_error(answer.code, answer.describe):
            # The gateway refused the token before doing anything, so retrying is safe even
            # for issue. A second refusal is reported, not retried: each fetch costs quota.
            logger.info("Nuonuo rejected the access token (%s); fetching a new one", answer.code)
            token = await self._tokens.replace(credentials.app_key, token.access_token, fetch)
            answer = await send(access_token=token.access_token)
        return answer
