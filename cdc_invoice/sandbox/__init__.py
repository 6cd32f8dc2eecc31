"""A local e-invoice platform that speaks the Nuonuo protocol, strictly (``cdc-invoice sandbox``).

Programmatic use (in-process tests)::

    running = await start_sandbox(SandboxOptions(app_key=..., app_secret=..., ...))
    ... talk to running.url ...
    await running.stop()

The checks are written from the Nuonuo doc pages on their own and never import the domain or the
adapter, so the sandbox cannot share their mistakes; each behaviour names its doc page (see
``cdc-invoice sandbox --help``). Every response code the platform does not document is an
assumption, listed in ``cdc_invoice.sandbox.codes`` and docs/platform-assumptions.md: notably
070301 for an invalid or expired accessToken and 070601 (the live 签名不匹配) also for a stale
timestamp (±300 s).
"""

from cdc_invoice.sandbox.options import RuntimeConfig, SandboxOptions
from cdc_invoice.sandbox.server import RunningSandbox, start_sandbox

__all__ = ["RunningSandbox", "RuntimeConfig", "SandboxOptions", "start_sandbox"]
