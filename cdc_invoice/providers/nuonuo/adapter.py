"""``NuonuoProvider``: the Provider protocol over the Nuonuo 诺税通 API (nuonuo.OpeMplatform.*)."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Final

import httpx

from cdc_invoice.errors import OutcomeUnknown, ProviderAuthError, ProviderUnavailable
from cdc_invoice.invoice.model import InvoiceDraft, Seller
from cdc_invoice.providers.base import IssueAccepted, PlatformInvoice
from cdc_invoice.providers.nuonuo import codes, payload
from cdc_invoice.providers.nuonuo.client import (
    DEFAULT_USER_AGENT,
    Answer,
    Credentials,
    NuonuoClient,
    dumps,
)
from cdc_invoice.providers.nuonuo.token import Clock, TokenCache, TokenStore

logger = logging.getLogger(__name__)

ISSUE: Final = "nuonuo.OpeMplatform.requestBillingNew"
QUERY: Final = "nuonuo.OpeMplatform.queryInvoiceResult"


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
    ) -> None:
        self._credentials = dict(credentials)
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
        content = payload.build_order(
            seller,
            draft,
            order_no,
            invoice_date=datetime.fromtimestamp(self._clock(), payload.CHINA_TZ),
        )
        answer = await self._call(seller, ISSUE, content, mutating=True, order_no=order_no)
        if answer.code != codes.SUCCESS:
            raise codes.error_for(answer.code, answer.describe, method=ISSUE)
        result = answer.result
        serial = result.get("invoiceSerialNum") if isinstance(result, dict) else None
        if not isinstance(serial, str) or not serial:
            # Accepted (E0000) yet no serial: the invoice may exist, so never issue blindly again.
            raise OutcomeUnknown(
                f"{ISSUE}: E0000 without invoiceSerialNum",
                code=answer.code,
                method=ISSUE,
                hint="query by order number before issuing again",
            )
        return IssueAccepted(order_no=order_no, serial=serial)

    async def query_by_serials(
        self, seller: Seller, serials: Sequence[str]
    ) -> list[PlatformInvoice]:
        return await self._query(seller, payload.query_content(serials=self._batch(serials)))

    async def query_by_order_nos(
        self, seller: Seller, order_nos: Sequence[str]
    ) -> list[PlatformInvoice]:
        return await self._query(seller, payload.query_content(order_nos=self._batch(order_nos)))

    # ------------------------------------------------------------ helpers

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
        )
        answer = await send(access_token=token.access_token)
        if answer.code in codes.TOKEN_INVALID:
            # The platform refused the token before doing anything, so retrying is safe even
            # for issue. A second refusal is reported, not retried: each fetch costs quota.
            logger.info("Nuonuo rejected the access token (%s); fetching a new one", answer.code)
            token = await self._tokens.replace(credentials.app_key, token.access_token, fetch)
            answer = await send(access_token=token.access_token)
        return answer
