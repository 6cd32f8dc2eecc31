"""A fresh clone passes alone (issue 16): nothing in the package, the tests or the docs points
outside the repository, and the run-time guard in tests/repo_guard.py tells outside from inside."""

from __future__ import annotations

import re
from pathlib import Path

from repo_guard import REPO, OutsideReads, allowed_roots, is_outside

# A path into the reference folder that sits beside the repository on the developers' machine.
OUTSIDE_PATH = re.compile(r"""(\.\./|/work/|["'`(]|parents\[\d\]\s*/\s*["'])shared/""")


def scanned() -> list[Path]:
    files = [*REPO.glob("cdc_invoice/**/*.py"), *REPO.glob("tests/**/*.py")]
    files += [
        *REPO.glob("docs/*.md"),
        REPO / "README.md",
        REPO / "Makefile",
        *REPO.glob("sql/**/*.sql"),
    ]
    return [f for f in files if f.resolve() != Path(__file__).resolve()]


def test_no_source_names_a_path_outside_the_repository() -> None:
    hits = [
        f"{f.relative_to(REPO)}:{n}: {line.strip()}"
        for f in scanned()
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE_PATH.search(line)
    ]
    assert hits == [], "paths outside the repository:\n" + "\n".join(hits)


def test_the_scan_recognises_the_old_northwind_path() -> None:
    # The two lines that failed a fresh clone before the Northwind SQL was vendored.
    assert OUTSIDE_PATH.search(
        'NORTHWIND = Path(__file__).parents[3] / "shared/data/northwind/x.sql"'
    )
    assert OUTSIDE_PATH.search("`../shared/data/northwind/northwind.sql`")
    assert not OUTSIDE_PATH.search("the shared token store")


def test_the_guard_tells_outside_from_inside(tmp_path: Path) -> None:
    roots = allowed_roots()
    # (not REPO.parent / "shared/…": a checkout under /tmp, as CI's may be, has its sibling
    # under an allowed root; the source scan above covers such paths)
    assert is_outside("/srv/elsewhere/data.sql", roots)
    assert not is_outside(str(REPO / "sql/schema.sql"), roots)
    assert not is_outside(str(tmp_path / "x"), roots)
    # A symlink inside the repository or /tmp that points outside is outside.
    link = tmp_path / "link.sql"
    link.symlink_to("/srv/elsewhere/data.sql")
    assert is_outside(str(link), roots)


def test_the_guard_records_an_outside_open() -> None:
    guard = OutsideReads()
    guard.hook("open", ("/srv/elsewhere/data.sql", "r", 0))
    guard.hook("open", (str(REPO / "README.md"), "r", 0))
    guard.hook("open", (3, "r", 0))
    assert guard.take() == ["/srv/elsewhere/data.sql"]
    assert guard.take() == []
