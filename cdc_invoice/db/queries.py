"""Load the named queries of sql/*.sql ("-- name: x" blocks) and whole SQL files, by name.

The SQL files ship inside the wheel as cdc_invoice/sql (see pyproject); in a source checkout
they are read from the top-level sql/ folder.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import LiteralString, cast

_NAME = re.compile(r"^-- name: ([a-z0-9_]+)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    packaged = resources.files("cdc_invoice") / "sql"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "sql"


@cache
def sql_file(name: str) -> LiteralString:
    """The text of sql/<name> (e.g. "schema.sql", "migrations/0001_initial.sql")."""
    # cdc-invoice ships these files and takes responsibility for them: they are our literals.
    text: LiteralString = (sql_dir() / name).read_text(encoding="utf-8")
    return text


def parse_named(text: str) -> dict[str, LiteralString]:
    """Split a file into {name: query}; comments between the name and the query are kept."""
    parts = _NAME.split(text)
    queries: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = cast(LiteralString, body.strip())
    return queries


@cache
def named(file: str = "queries.sql") -> dict[str, LiteralString]:
    return parse_named(sql_file(file))


def q(name: str, file: str = "queries.sql") -> LiteralString:
    """One named query. KeyError names the file, so a typo is easy to find."""
    try:
        return named(file)[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/{file}") from None


def migrations() -> list[tuple[int, str]]:
    """(version, file name) of every migration, in order."""
    found = []
    for path in sorted((sql_dir() / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql")):
        found.append((int(path.name[:4]), f"migrations/{path.name}"))
    versions = [v for v, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migrations must be numbered 0001, 0002, … without gaps: {versions}")
    return found


def latest_version() -> int:
    return migrations()[-1][0]
