"""Prometheus figures of the platform's limits (issue 17), read at scrape time from the
adapter's Pacer and QuotaGuard (providers/pace.py)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cdc_invoice.providers.pace import Pacer, QuotaGuard


class PaceCollector(Collector):
    def __init__(self, pacer: Pacer | None, quota: QuotaGuard | None) -> None:
        self.pacer = pacer
        self.quota = quota
        self._sellers: set[str] = set()  # every seller ever paused keeps a 0/1 series

    def collect(self) -> Iterator[Metric]:
        throttled = CounterMetricFamily(
            "cdc_invoice_platform_throttled",
            "Throttling answers from the platform (E9429 / HTTP 429), by seller; the call was "
            "resent later, nothing failed",
            labels=["seller_id"],
        )
        spacing = GaugeMetricFamily(
            "cdc_invoice_seller_call_spacing_seconds",
            "Adaptive spacing between one seller's platform calls after throttling (0: none)",
            labels=["seller_id"],
        )
        if self.pacer is not None:
            for seller, n in sorted(self.pacer.throttled.items()):
                throttled.add_metric([seller], n)
            for seller, s in sorted(self.pacer.spacing.items()):
                spacing.add_metric([seller], s)
        yield throttled
        yield spacing
        yield CounterMetricFamily(
            "cdc_invoice_rate_cap_wait_seconds",
            "Seconds platform calls waited for the shared [provider] max_requests_per_second",
            value=self.pacer.bucket_waits if self.pacer is not None else 0.0,
        )
        paused = GaugeMetricFamily(
            "cdc_invoice_seller_quota_paused",
            "1 while a seller's new invoices are held because the platform's monthly quota "
            "is exhausted (its orders wait, pending; they resume by themselves)",
            labels=["seller_id"],
        )
        probes = 0
        if self.quota is not None:
            self._sellers |= set(self.quota.paused)
            for seller in sorted(self._sellers):
                paused.add_metric([seller], 1 if seller in self.quota.paused else 0)
            probes = self.quota.probes
        yield paused
        yield CounterMetricFamily(
            "cdc_invoice_quota_probes",
            "Probes (reInvoice or one new invoice) sent for sellers paused for quota",
            value=probes,
        )
