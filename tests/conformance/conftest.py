"""Conformance with the platform's own documents and with a third-party client.

- fixtures/*.json: the request / response examples and response tables of each Nuonuo doc page
  we implement (ourworldcn/PowerLms 诺诺网接口/数电发票/…md), copied verbatim; each names its page.
- The third-party client is jellyfrank's ``nuonuo-sdk`` (MIT, a dev dependency): it signs and
  sends on its own (requests + simplejson), so it shares no code with our adapter or sandbox.
- The sandbox runs as a real process over TLS (certificates as in tests/e2e/test_tls.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nuonuo import Nuonuo

from cdc_invoice import harness
from tests.e2e.test_tls import make_ca_and_server_cert

FIXTURES = Path(__file__).parent / "fixtures"
SELLER = harness.SELLER_TAX_NUMBER


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def tls_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Sandbox]:
    folder = tmp_path_factory.mktemp("conformance")
    sb = harness.start_sandbox(
        folder / "sb", issue_delay_ms=200, tls=make_ca_and_server_cert(folder)
    )
    yield sb
    sb.proc.stop()


@pytest.fixture
def sdk(tls_sandbox: harness.Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Nuonuo]:
    """The third-party client, pointed at the sandbox; it trusts the sandbox's test CA through
    the variable ``requests`` reads, not through any hook of ours."""
    assert isinstance(tls_sandbox.verify, str)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls_sandbox.verify)
    with Nuonuo(
        tls_sandbox.app_key,
        tls_sandbox.app_secret,
        tax_number=SELLER,
        base_url=f"{tls_sandbox.url}/open/v1/services",
        token_url=tls_sandbox.token_url,
    ) as client:
        client.get_merchant_token()
        yield client
