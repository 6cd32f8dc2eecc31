"""An embedded PostgreSQL (the pgserver wheel) for the demo and for tests without a server."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def start(datadir: Path, *, keep: bool = False) -> tuple[str, Any]:
    """Start (or reuse) a server whose data lives in ``datadir``; returns (dsn, handle).

    With keep=False the server stops and its data is deleted when the process exits.
    """
    # pgserver asks platformdirs for a runtime dir, which warns when XDG_RUNTIME_DIR is unset
    # (root shells, CI): harmless, and not the user's concern.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    try:
        import pgserver
    except ImportError as exc:  # pragma: no cover - the demo extra installs it
        raise RuntimeError(
            "the embedded PostgreSQL needs pgserver: pip install 'cdc-invoice[demo]'"
        ) from exc
    datadir.mkdir(parents=True, exist_ok=True)
    mode = None if keep else "delete"
    server = pgserver.get_server(str(datadir), cleanup_mode=mode)  # type: ignore[attr-defined]
    dsn = str(server.get_uri())
    log.debug("embedded PostgreSQL at %s", datadir)
    return dsn, server
