"""Capture: attach order tables, list them, preview an order's invoices, backfill old orders.

The SQL functions (sql/api.sql, sql/ops.sql) do the work; these modules wrap them for the CLI
(cdc_invoice/commands/sources.py) and for tests.
"""

from __future__ import annotations

from cdc_invoice.capture._db import CaptureError
from cdc_invoice.capture.backfill import BackfillProgress, backfill
from cdc_invoice.capture.preview import Preview, preview
from cdc_invoice.capture.sources import AttachArgs, SourceInfo, attach, detach, sources

__all__ = [
    "AttachArgs",
    "BackfillProgress",
    "CaptureError",
    "Preview",
    "SourceInfo",
    "attach",
    "backfill",
    "detach",
    "preview",
    "sources",
]
