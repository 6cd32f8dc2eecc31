"""What the daemon reports as it works: metrics and status hang off this one small interface."""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def platform_call(self, method: str, code: str, seconds: float) -> None:
        """One platform call finished; code is the platform's (E0000 …) or an error class name."""

    def recorded(self, kind: str, latency_seconds: float) -> None:
        """A request finished with invoices recorded; latency from the order's commit."""

    def failed(self, kind: str, code: str | None) -> None:
        """A request was parked as failed."""

    def retried(self, kind: str, code: str | None) -> None:
        """A request hit a retryable error and was put back with a backoff."""

    def deferred(self, kind: str, code: str | None) -> None:
        """A request was put back to wait for the platform (throttling, quota pause)."""


class NullObserver:
    def platform_call(self, method: str, code: str, seconds: float) -> None:
        pass

    def recorded(self, kind: str, latency_seconds: float) -> None:
        pass

    def failed(self, kind: str, code: str | None) -> None:
        pass

    def retried(self, kind: str, code: str | None) -> None:
        pass

    def deferred(self, kind: str, code: str | None) -> None:
        pass
