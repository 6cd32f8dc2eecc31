"""The platform access token, shared by every daemon through cdc_invoice.provider_token.

The platform allows 50 token requests per app per 30 days, so fetches are serialised across
daemons by a row lock and a fetched token is reused by all. The token is encrypted (Fernet)
with a key the database never sees: from ``provider.token_key_file``, or else derived from the
app secret with HKDF.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cdc_invoice.db.queries import q
from cdc_invoice.db.repository import Repository
from cdc_invoice.providers.nuonuo.token import CachedToken

log = logging.getLogger(__name__)

QUOTA_PER_30_DAYS = 50


def fernet_for(key_material: str) -> Fernet:
    """A Fernet key derived from a secret (the app secret or the token key file's content)."""
    raw = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"cdc-invoice provider token v1"
    ).derive(key_material.encode())
    return Fernet(base64.urlsafe_b64encode(raw))


class PgTokenStore:
    def __init__(self, repo: Repository, keys: Mapping[str, Fernet]) -> None:
        self.repo = repo
        self.keys = keys  # app_key -> Fernet

    def _decrypt(self, app_key: str, blob: bytes, expires_at: datetime) -> CachedToken | None:
        if not blob:
            return None
        try:
            token = self.keys[app_key].decrypt(bytes(blob)).decode()
        except (InvalidToken, KeyError):
            # Another key (rotated secret or token_key_file): treat as absent, fetch anew.
            log.warning(
                "stored token for app %s cannot be decrypted with this daemon's key", app_key
            )
            return None
        return CachedToken(access_token=token, expires_at=expires_at.timestamp())

    async def get(self, app_key: str) -> CachedToken | None:
        async with self.repo.connection() as conn:
            row = await (await conn.execute(q("token_select"), {"app_key": app_key})).fetchone()
        if row is None:
            return None
        return self._decrypt(app_key, row[0], row[1])

    async def fetch_and_store(
        self,
        app_key: str,
        fetch: Callable[[], Awaitable[CachedToken]],
        *,
        stale_token: str | None,
    ) -> CachedToken:
        async with self.repo.connection() as conn:
            await conn.execute(q("token_lock"), {"app_key": app_key})
            async with conn.transaction():
                row = await (
                    await conn.execute(q("token_select_for_update"), {"app_key": app_key})
                ).fetchone()
                assert row is not None
                current = self._decrypt(app_key, row[0], row[1])
                now = datetime.now(UTC).timestamp()
                if (
                    current is not None
                    and current.access_token != stale_token
                    and current.usable(now)
                ):
                    return current  # another daemon fetched it while we waited for the lock
                recent = len(row[2] or [])
                if recent >= QUOTA_PER_30_DAYS - 5:
                    log.warning(
                        "app %s fetched %d tokens in the last 30 days (platform limit %d)",
                        app_key,
                        recent,
                        QUOTA_PER_30_DAYS,
                    )
                token = await fetch()
                await conn.execute(
                    q("token_store"),
                    {
                        "app_key": app_key,
                        "token": self.keys[app_key].encrypt(token.access_token.encode()),
                        "expires_at": datetime.fromtimestamp(token.expires_at, UTC),
                        "daemon_id": self.repo.daemon_id,
                    },
                )
                return token
