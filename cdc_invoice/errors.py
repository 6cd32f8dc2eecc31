"""The exception tree. Each class's docstring is its default message.

    CdcInvoiceError
    ├── ConfigError                 bad or missing configuration (fix the config file / env)
    │   └── DaemonIdInUse           another running daemon has this daemon_id
    ├── SchemaError
    │   ├── SchemaNotInstalled      run `cdc-invoice install`
    │   ├── SchemaVersionMismatch   run `cdc-invoice install` (upgrade) or update the daemon
    │   └── InstallationCopied      a copy of the database: SELECT cdc_invoice.retag()
    ├── RequestRefused              a cdc_invoice SQL function refused (SQLSTATE CI…), with its hint
    ├── OrderError                  this order cannot be invoiced as it stands (parked as failed)
    │   ├── MappingError            customers / items missing from cdc_invoice.buyer / item_tax
    │   └── InvalidOrder            amounts, rates, codes or names that break the invoice rules
    └── ProviderError               the platform side
        ├── ProviderRejected        the platform refused the request (terminal, has a code)
        ├── ProviderUnavailable     5xx, garbage, connection refused (retryable)
        │   ├── ProviderThrottled   the platform said "too many requests" (deferred, not counted)
        │   └── SellerPaused        the seller's monthly quota is exhausted (deferred, not counted)
        ├── OutcomeUnknown          timeout / lost response after sending (retryable; query first)
        └── ProviderAuthError       credentials, signature or token problems (deferred, not counted)

Errors are mapped once at each boundary (psycopg in db/, httpx in providers/) and carry data
attributes so that the daemon can store them on the request row without parsing strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


class CdcInvoiceError(Exception):
    """An error in cdc-invoice."""

    retryable: ClassVar[bool] = False
    # False: the request waits for the platform (throttling, quota) and the wait is no attempt
    # of its own: it must not count toward any attempt or retry cap.
    counts_as_attempt: ClassVar[bool] = True

    def __init__(self, message: str | None = None, *, hint: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.hint = hint
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class ConfigError(CdcInvoiceError):
    """The configuration is invalid."""


class SchemaError(CdcInvoiceError):
    """The cdc_invoice schema is not usable."""


class SchemaNotInstalled(SchemaError):
    """The cdc_invoice schema is not installed in this database."""


class SchemaVersionMismatch(SchemaError):
    """The installed cdc_invoice schema has another version than this program expects."""


class InstallationCopied(SchemaError):
    """This database is a copy: its installation tag is bound to another cluster or database."""

    def __init__(
        self, message: str, *, hint: str | None = None, tag: str, bound_to: str, here: str
    ) -> None:
        self.tag = tag
        self.bound_to = bound_to
        self.here = here
        super().__init__(message, hint=hint)


class DaemonIdInUse(ConfigError):
    """Another running daemon has this daemon_id (they would share leases)."""

    def __init__(self, message: str, *, hint: str | None = None, daemon_id: str) -> None:
        self.daemon_id = daemon_id
        super().__init__(message, hint=hint)


class RequestRefused(CdcInvoiceError):
    """A cdc_invoice function refused the request."""

    def __init__(
        self, message: str | None = None, *, hint: str | None = None, sqlstate: str | None = None
    ) -> None:
        self.sqlstate = sqlstate
        # A request failed by this refusal shows the SQLSTATE as its error_code (CI006, ...):
        # every failed request has a code and a hint.
        self.code = sqlstate
        super().__init__(message, hint=hint)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an order: where, what, and how to fix it."""

    message: str
    line_no: int | None = None
    field: str | None = None
    fix: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line_no}: " if self.line_no is not None else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{where}{self.message}.{fix}"


class OrderError(CdcInvoiceError):
    """The order cannot be invoiced as it stands."""

    code: ClassVar[str] = "ORDER"

    def __init__(
        self,
        problems: list[Problem],
        *,
        source: str | None = None,
        order_ref: str | None = None,
    ) -> None:
        self.problems = problems
        self.source = source
        self.order_ref = order_ref
        head = f"order {order_ref!r}" if order_ref is not None else "order"
        if source:
            head += f" of source {source!r}"
        body = "; ".join(str(p) for p in problems) or (self.__doc__ or "").strip()
        super().__init__(f"{head}: {body}")


class MappingError(OrderError):
    """Customers or items of the order have no mapping."""

    code = "MAPPING"


class InvalidOrder(OrderError):
    """The order breaks the invoice rules."""

    code = "INVALID"


class ProviderError(CdcInvoiceError):
    """The e-invoice platform call failed."""

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        hint: str | None = None,
        method: str | None = None,
    ) -> None:
        self.code = code
        self.method = method
        super().__init__(message, hint=hint)


class ProviderRejected(ProviderError):
    """The platform rejected the request."""


class ProviderUnavailable(ProviderError):
    """The platform is unavailable or answered something that is not its protocol."""

    retryable = True


class OutcomeUnknown(ProviderError):
    """The request was sent but no answer came back; the platform may have acted on it."""

    retryable = True


class ProviderAuthError(ProviderError):
    """The platform refused the credentials, the signature or the access token."""

    retryable = True
    # A problem of the seller's account, not of the order (issue 14): its requests wait, without
    # counting attempts, until the credentials are fixed; no order is failed or refused for it.
    counts_as_attempt = False


class ProviderThrottled(ProviderUnavailable):
    """The platform refused the call as over its request rate; it did not act on it."""

    counts_as_attempt = False


class SellerPaused(ProviderUnavailable):
    """The seller's invoices are paused: the platform's monthly invoicing quota is exhausted."""

    counts_as_attempt = False

    def __init__(
        self,
        message: str | None = None,
        *,
        seller_id: str,
        retry_after: float,
        hint: str | None = None,
    ) -> None:
        self.seller_id = seller_id
        self.retry_after = retry_after
        super().__init__(message, code="QUOTA_PAUSED", hint=hint)
