"""Where an archived file's bytes go: the database row itself, or a file under archive_dir.

Files are written once and never replaced: the name carries the content's hash
(``YYYY-MM/<number>.<sha256[:16]>.<kind>``), so a retry after a lost commit writes the same name
with the same bytes, and nothing ever overwrites a file a row already points at.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cdc_invoice.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Kept:
    bytes: bytes | None  # in the database
    path: str | None  # or in the directory
    size: int
    sha256: str


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def check_directory(directory: str) -> None:
    """At start: the archive directory exists (or can be made) and the daemon may write there."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"daemon.archive_dir {directory}: cannot write there: {exc.strerror}",
            hint="create it, owned by the daemon's user (e.g. StateDirectory= in the unit), "
            "or leave archive_dir empty to keep the files in the database",
        ) from exc


def in_database(body: bytes) -> Kept:
    return Kept(body, None, len(body), digest(body))


def in_directory(directory: str, month: str, number: str, kind: str, body: bytes) -> Kept:
    """Write ``body`` durably (temp file, fsync, rename, fsync the folder); blocking."""
    sha = digest(body)
    folder = Path(directory) / month
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{number}.{sha[:16]}.{kind}"
    if not target.exists():
        fd, tmp = tempfile.mkstemp(prefix=f".{number}.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return Kept(None, str(target), len(body), sha)
