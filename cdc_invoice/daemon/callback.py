"""Platform callbacks (``operater=callback|invoiceInvalid|invoiceRedCallback|redConfirmCallback``).

Encodings differ per kind (【诺诺发票】回传开票结果对接文档V1.1.1): ``callback`` and
``invoiceInvalid`` are FORM posts whose ``content`` is a JSON string (§一, §二);
``invoiceRedCallback`` and ``redConfirmCallback`` are JSON bodies whose ``content`` is an
object (§四, §五). Both are read.

Nuonuo's callbacks carry no signature (reference §2.8), so they are hints, never facts: the
request they name is polled at once and the platform's answer to that query is what gets
recorded. The reply is always the documented ``{"status": "0000"}`` so the platform stops
resending; an unknown or malformed callback changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from cdc_invoice.db.queries import q
from cdc_invoice.db.repository import DatabaseUnavailable, Repository

log = logging.getLogger(__name__)

PATH = "/nuonuo/callback"
OK = {"status": "0000", "message": "同步成功"}
RED_LETTER = frozenset({"redConfirmCallback", "invoiceRedCallback"})


def _keys(form: dict[str, str]) -> tuple[list[str], list[str]]:
    """(our 18-character order number bases, platform serials) that the callback mentions."""
    numbers = [form.get("orderno", ""), form.get("billId", "")]
    serials = [form.get("fpqqlsh", "")]
    try:
        content: Any = json.loads(form.get("content") or "{}")
    except ValueError:
        content = {}
    if isinstance(content, dict):
        numbers += [str(content.get(k) or "") for k in ("c_orderno", "orderNo", "billId")]
        serials += [str(content.get(k) or "") for k in ("c_fpqqlsh", "invoiceSerialNum")]
    # order numbers and bill ids are our 18-character base plus 2 characters (part, "RC")
    bases = sorted({n[:-2] for n in numbers if len(n) == 20})
    return bases, sorted({s for s in serials if s})


async def read_fields(request: web.Request) -> dict[str, str]:
    """The callback's top-level fields as strings, whichever encoding it came in."""
    if request.content_type == "application/json":
        try:
            data: Any = json.loads(await request.read())
        except ValueError:
            return {}
        if not isinstance(data, dict):
            return {}
        # content is an object in the JSON kinds: keep it as the JSON string the FORM kinds send
        return {
            str(k): v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
            for k, v in data.items()
            if v is not None
        }
    return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}


def add_route(
    app: web.Application,
    repo: Repository,
    wake: asyncio.Event,
    slips: asyncio.Event | None = None,
) -> None:
    """``slips``: set on a red-letter callback, so that the buyer-slip listing runs now (a slip
    the buyer started names no request of ours)."""

    async def callback(request: web.Request) -> web.Response:
        form = await read_fields(request)
        if slips is not None and form.get("operater") in RED_LETTER:
            slips.set()
        bases, serials = _keys(form)
        due: list[Any] = []
        if bases or serials:
            try:
                async with repo.connection() as conn:
                    cur = await conn.execute(
                        q("callback_hint"), {"bases": bases, "serials": serials}
                    )
                    due = await cur.fetchall()
            except DatabaseUnavailable as exc:
                log.warning("callback %s: %s", form.get("operater"), exc)
                return web.json_response({"status": "9999", "message": "稍后重试"})
        if due:
            wake.set()
        log.info("callback %s: %d request(s) polled now", form.get("operater", "?"), len(due))
        return web.json_response(OK)

    app.router.add_post(PATH, callback)
