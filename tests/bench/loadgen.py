"""Drive the sandbox alone: issue N invoices then query them in batches of 50 (its capacity)."""

from __future__ import annotations

import argparse
import asyncio
from decimal import Decimal
from pathlib import Path

from cdc_invoice import harness
from cdc_invoice.invoice import compute, mapping
from cdc_invoice.invoice.model import Buyer, InvoiceDraft, ItemTax, Seller
from cdc_invoice.providers.nuonuo.adapter import NuonuoProvider
from cdc_invoice.providers.nuonuo.client import Credentials
from cdc_invoice.providers.nuonuo.token import MemoryTokenStore


def draft(seller: Seller, ref: str) -> InvoiceDraft:
    """A one-line invoice, computed by the daemon's own code from a document row."""
    rows = [
        {
            "order_ref": ref,
            "customer_ref": "C002",
            "line_no": 1,
            "item_ref": "P-MOUSE",
            "item_name": "无线鼠标",
            "quantity": Decimal("2"),
            "unit_price": Decimal("79.90"),
        }
    ]
    buyers = {"C002": Buyer(name="上海样板科技有限公司", tax_number="91310115MA1K0002AB")}
    items = {"P-MOUSE": ItemTax("P-MOUSE", "1090511030000000000", Decimal("0.13"), "计算机")}
    order = mapping.build_order("bench", ref, rows, buyers, items, seller)
    return compute.build_invoices(order, seller)[0]


async def main(args: argparse.Namespace) -> None:
    secret = Path(args.secret_file).read_text(encoding="utf-8").strip()
    seller = Seller(
        seller_id="main", tax_number=harness.SELLER_TAX_NUMBER, name="bench", clerk="张三"
    )
    provider = NuonuoProvider(
        base_url=args.base_url,
        token_url=args.base_url + "/accessToken",  # the sandbox's own token endpoint
        credentials={"main": Credentials(app_key=args.app_key, app_secret=secret)},
        token_store=MemoryTokenStore(),
    )
    sem = asyncio.Semaphore(args.concurrency)
    serials: list[str] = []

    async def one(i: int) -> None:
        async with sem:
            acc = await provider.issue(seller, draft(seller, str(i)), f"LG{args.tag}{i:012d}01")
            serials.append(acc.serial)

    await asyncio.gather(*(one(i) for i in range(args.n)))
    pending = list(serials)
    while pending:
        await asyncio.sleep(0.2)
        chunks = [pending[i : i + 50] for i in range(0, len(pending), 50)]

        async def ask(chunk: list[str]) -> list[str]:
            async with sem:
                found = await provider.query_by_serials(seller, chunk)
            done = {f.serial for f in found if f.status in ("issued", "failed")}
            return [s for s in chunk if s not in done]

        pending = [s for left in await asyncio.gather(*(ask(c) for c in chunks)) for s in left]
    await provider.aclose()
    print(f"DONE {len(serials)}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--app-key", required=True)
    p.add_argument("--secret-file", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=64)
    asyncio.run(main(p.parse_args()))
