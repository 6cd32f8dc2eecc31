"""Nuonuo open platform (诺诺开放平台, 诺税通 nuonuo.OpeMplatform.*) adapter.

``NuonuoProvider`` implements ``cdc_invoice.providers.base.Provider``; ``Credentials`` are per
seller; a ``TokenStore`` shares access tokens between processes (``MemoryTokenStore`` for one).
"""

from cdc_invoice.providers.nuonuo.adapter import NuonuoProvider
from cdc_invoice.providers.nuonuo.client import Credentials
from cdc_invoice.providers.nuonuo.token import CachedToken, MemoryTokenStore, TokenStore

__all__ = ["CachedToken", "Credentials", "MemoryTokenStore", "NuonuoProvider", "TokenStore"]
