"""The test run reads nothing outside the repository (issue 16: a fresh clone passes alone).

An audit hook sees every file the test process opens (``open``, ``io.open_code``) and records
the ones outside the repository, the Python installation and venv, the temporary directory and
the system's own directories. conftest.py fails the test that opened one. Child processes (the
daemon, psql) are not audited; the source scan in tests/unit/core/test_self_contained.py covers
the paths they are given.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Read-only system locations a process legitimately opens (locale, zoneinfo, certificates, /proc).
SYSTEM = ("/usr", "/lib", "/lib64", "/etc", "/proc", "/sys", "/dev", "/run", "/var/lib/locales")


def allowed_roots() -> tuple[str, ...]:
    roots = {
        str(REPO),
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        tempfile.gettempdir(),
        "/tmp",
        *SYSTEM,
    }
    return tuple(sorted(os.path.realpath(r) for r in roots))


def is_outside(path: str, roots: tuple[str, ...]) -> bool:
    """True when ``path`` (made absolute, symlinks resolved) is under none of ``roots``."""
    real = os.path.realpath(path)
    return not any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


class OutsideReads:
    """Records opens outside the allowed roots; ``take()`` returns and clears them."""

    def __init__(self) -> None:
        self.roots = allowed_roots()
        self.seen: list[str] = []

    def hook(self, event: str, args: tuple[object, ...]) -> None:
        if event != "open" or not args:
            return
        path = args[0]
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            return  # a file descriptor
        if is_outside(path, self.roots):  # realpath opens nothing: no re-entry
            self.seen.append(os.path.realpath(path))

    def take(self) -> list[str]:
        found, self.seen = self.seen, []
        return found
