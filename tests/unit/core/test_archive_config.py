"""The archive's settings: checked at load, with what to do about them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc_invoice import config
from cdc_invoice.archive import keep
from cdc_invoice.errors import ConfigError


def test_defaults_keep_the_files_in_the_database() -> None:
    d = config.load(None, environ={}).daemon
    assert (d.archive_files, d.archive_dir, d.archive_max_attempts) == (True, "", 12)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ARCHIVE_DIR", "archive", "must be an absolute path"),
        ("ARCHIVE_MAX_ATTEMPTS", "0", "at least 1"),
        ("ARCHIVE_RETRY_SECONDS", "0", "above 0"),
    ],
)
def test_bad_values_are_refused(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(None, environ={f"CDC_INVOICE_DAEMON__{key}": value})


def test_an_archive_dir_the_daemon_cannot_write_is_a_clear_error(tmp_path: Path) -> None:
    keep.check_directory(str(tmp_path / "new" / "archive"))  # made if missing
    (tmp_path / "file").write_text("x")  # a file where the directory should be (as root, too)
    with pytest.raises(ConfigError, match="cannot write there") as exc:
        keep.check_directory(str(tmp_path / "file"))
    assert exc.value.hint and "archive_dir empty" in exc.value.hint


def test_files_are_written_once_under_their_hash(tmp_path: Path) -> None:
    first = keep.in_directory(str(tmp_path), "2026-11", "26330000000000000001", "xml", b"<a/>")
    again = keep.in_directory(str(tmp_path), "2026-11", "26330000000000000001", "xml", b"<a/>")
    other = keep.in_directory(str(tmp_path), "2026-11", "26330000000000000001", "xml", b"<b/>")
    assert first == again and first.path != other.path
    assert first.path is not None and Path(first.path).read_bytes() == b"<a/>"
    assert sorted(p.name for p in (tmp_path / "2026-11").iterdir()) == sorted(
        [Path(first.path).name, Path(str(other.path)).name]
    )
