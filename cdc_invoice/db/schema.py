"""Install, upgrade, verify and uninstall the cdc_invoice schema (sync: these are admin commands).

Install is one transaction under an advisory lock:
  fresh database  -> schema.sql                      (tables of the current version)
  older version   -> migrations/NNNN_*.sql > version (forward-only)
  then always     -> api.sql, ops.sql, lifecycle.sql, records.sql, archive.sql, reports.sql,
                     roles.sql
                     (CREATE OR REPLACE: functions, guard triggers when missing, roles, views)
  then, only after an upgrade or when a function changed -> reattach() (regenerate capture)

A no-op install (same version, same functions) touches no inventory table: re-attaching drops
and creates triggers (AccessExclusiveLock on the order tables, queued behind any open order
transaction), and the daemons' units run install at every start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import psycopg
from psycopg.rows import dict_row

from cdc_invoice.db.queries import latest_version, migrations, q, sql_file
from cdc_invoice.errors import (
    ConfigError,
    InstallationCopied,
    SchemaNotInstalled,
    SchemaVersionMismatch,
)

# roles.sql last: it grants on every view and function the others define.
REPLACEABLE = (
    "api.sql",
    "ops.sql",
    "lifecycle.sql",
    "records.sql",
    "archive.sql",
    "reports.sql",
    "roles.sql",
)
DEFAULT_ROLE_PREFIX = "cdc_invoice_"
_ROLE_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,40}")


def check_role_prefix(prefix: str) -> str:
    if not _ROLE_PREFIX.fullmatch(prefix):
        raise ConfigError(
            f"role prefix {prefix!r} is not usable",
            hint="lower-case letters, digits and _ (up to 41 characters), e.g. inventory_invoice_",
        )
    return prefix


def _role_prefix_setting(prefix: str) -> str:
    # Validated above: lower-case letters, digits and _ only, so it is safe as a literal.
    return f"SET LOCAL cdc_invoice.role_prefix = '{check_role_prefix(prefix)}';"


def install_script(role_prefix: str | None = None) -> str:
    """The whole fresh install as one script, for `cdc-invoice sql | psql`."""
    parts = [f"-- cdc-invoice install script (schema version {latest_version()})", "BEGIN;"]
    if role_prefix is not None:
        parts.append(_role_prefix_setting(role_prefix))
    parts += [f"-- ===== sql/{name}\n{sql_file(name)}" for name in ("schema.sql", *REPLACEABLE)]
    parts.append("COMMIT;")
    return "\n\n".join(parts) + "\n"


def upgrade_script(from_version: int) -> str:
    """The upgrade from ``from_version`` as one script, for a DBA who reviews SQL first
    (`cdc-invoice sql --from-version N | psql`): what ``install`` runs on such a database."""
    latest = latest_version()
    if not 1 <= from_version <= latest:
        raise ConfigError(
            f"--from-version {from_version}: this program knows schema versions 1 to {latest}",
            hint="SELECT max(version) FROM cdc_invoice.schema_version shows the installed one",
        )
    steps = [name for version, name in migrations() if version > from_version]
    parts = [
        f"-- cdc-invoice upgrade script: schema version {from_version} -> {latest}",
        "BEGIN;",
        sql_query("install_lock"),
        # Refuse to run on any other version: the migrations assume exactly this one.
        sql_query("require_version").replace("%(version)s", str(from_version)),
    ]
    parts += [f"-- ===== sql/{name}\n{sql_file(name)}" for name in (*steps, *REPLACEABLE)]
    if steps:  # what install does after an upgrade (locks the attached order tables briefly)
        parts.append(sql_query("reattach_all"))
    parts.append("COMMIT;")
    return "\n\n".join(parts) + "\n"


def sql_query(name: str) -> str:
    return f"-- {name}\n{q(name, 'admin.sql').strip().rstrip(';')};"


@dataclass(frozen=True, slots=True)
class InstallResult:
    before: int | None  # version found, None for a fresh install
    after: int
    applied: list[str]
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return "; ".join([self._headline(), *self.notes])

    def _headline(self) -> str:
        if self.before is None:
            return f"installed cdc_invoice schema version {self.after}"
        if self.before == self.after:
            return f"cdc_invoice schema {self.after} is current (functions, views refreshed)"
        return (
            f"upgraded cdc_invoice schema {self.before} -> {self.after} ({', '.join(self.applied)})"
        )


def installed_version(conn: psycopg.Connection[tuple[object, ...]]) -> int | None:
    row = conn.execute(q("schema_exists", "admin.sql")).fetchone()
    if not row or not row[0]:
        return None
    ver = conn.execute(q("schema_version")).fetchone()
    return int(str(ver[0])) if ver and ver[0] is not None else None


def install(dsn: str, role_prefix: str | None = None) -> InstallResult:
    """Install or upgrade; ``role_prefix`` names this database's roles (first install only,
    kept in cdc_invoice.installation; default cdc_invoice_)."""
    if role_prefix is not None:
        check_role_prefix(role_prefix)
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute(q("install_lock", "admin.sql"))
        if role_prefix is not None:
            conn.execute(_role_prefix_setting(role_prefix))
        return _install_in(conn)


def _install_in(conn: psycopg.Connection[tuple[object, ...]]) -> InstallResult:
    before = installed_version(conn)
    latest = latest_version()
    applied: list[str] = []
    if before is None:
        conn.execute(sql_file("schema.sql"))
        applied.append("schema.sql")
    elif before > latest:
        raise SchemaVersionMismatch(
            f"the database has cdc_invoice schema version {before}, newer than this program's "
            f"{latest}",
            hint="upgrade cdc-invoice on this machine; never downgrade the schema",
        )
    else:
        for version, name in migrations():
            if version > before:
                conn.execute(sql_file(name))
                applied.append(name)
    functions_before = _functions_fingerprint(conn)
    for name in REPLACEABLE:
        conn.execute(sql_file(name))
    notes = []
    if before is not None and (
        before != latest or _functions_fingerprint(conn) != functions_before
    ):
        notes = _reattach(conn)
    missing = [str(r[0]) for r in conn.execute(q("sellers_without_clerk", "admin.sql")).fetchall()]
    if missing:
        notes.append(
            f"seller {', '.join(missing)} has no clerk (开票人): set the issuing account's "
            f"开票员 name before orders come: UPDATE cdc_invoice.seller SET clerk = '<开票员姓名>' "
            f"WHERE seller_id = '{missing[0]}';"
        )
    return InstallResult(before, latest, applied, notes)


def _functions_fingerprint(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    row = conn.execute(q("functions_fingerprint", "admin.sql")).fetchone()
    return str(row[0]) if row else ""


def _reattach(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    """Regenerate attached sources' capture functions with this version's code.

    Creating triggers needs the order tables' owner; when the installer is not, the install
    still succeeds and says what the owner must run.
    """
    try:
        with conn.transaction():
            done = [str(r[0]) for r in conn.execute(q("reattach_all", "admin.sql")).fetchall()]
    except psycopg.errors.InsufficientPrivilege as exc:
        return [
            f"attached sources were not refreshed ({exc.diag.message_primary}): "
            "as the order tables' owner run SELECT * FROM cdc_invoice.reattach()"
        ]
    # A source attached before attach() required a unique order key keeps capturing, with a
    # warning in its line: passed on, so the DBA sees it at the upgrade.
    warnings = [line for line in done if "WARNING:" in line]
    return ([f"refreshed capture of {len(done)} attached source(s)"] if done else []) + warnings


def check_version(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """The daemon's start-up check: the installed version must be the one it was built for."""
    version = installed_version(conn)
    if version is None:
        raise SchemaNotInstalled(
            hint="run `cdc-invoice install --dsn …` (or `cdc-invoice sql | psql`)"
        )
    if version != latest_version():
        raise SchemaVersionMismatch(
            f"installed cdc_invoice schema version {version}, this daemon needs {latest_version()}",
            hint="run `cdc-invoice install --dsn …` to upgrade"
            if version < latest_version()
            else "upgrade the cdc-invoice package on this machine",
        )
    return version


def check_installation(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    """The installation tag, if it is bound to this cluster and database; else
    ``InstallationCopied``: a restored or cloned copy would reuse production's order numbers."""
    row = conn.execute(q("installation_binding")).fetchone()
    if row is None:
        raise SchemaNotInstalled(hint="run `cdc-invoice install --dsn …`")
    tag, sysid, dbname, here_sysid, here_db = row
    if (sysid, dbname) != (here_sysid, here_db):
        bound = f"database {dbname} of cluster {sysid}" if sysid else "nothing (unbound)"
        raise InstallationCopied(
            f"this database is a copy: installation tag {tag} (the prefix of every platform "
            f"order number) is bound to {bound}, this is database {here_db} of cluster "
            f"{here_sysid}; running here would reuse the original's order numbers",
            hint="if this is a copy (restore, clone, staging), give it a tag of its own as the "
            "schema owner: SELECT cdc_invoice.retag(); if the original was moved here (dump and "
            "restore, pg_upgrade) and no longer runs, the same command is safe",
            tag=str(tag),
            bound_to=bound,
            here=f"database {here_db} of cluster {here_sysid}",
        )
    return str(tag)


def catalogue(
    conn: psycopg.Connection[tuple[object, ...]], schema: str
) -> dict[tuple[str, str], str]:
    """{(kind, name): definition} of every object in ``schema``, schema name replaced by '@'."""

    def neutral(text: object) -> str:
        # Literals may name the schema too (e.g. 'cdc_invoice.retry(…)' in a view).
        return str(text).replace(schema + ".", "@.").replace("cdc_invoice.", "@.")

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(q("catalogue", "admin.sql"), {"schema": schema})
        return {(r["kind"], neutral(r["name"])): neutral(r["definition"]) for r in cur.fetchall()}


def diff_catalogues(
    actual: dict[tuple[str, str], str], expected: dict[tuple[str, str], str]
) -> list[str]:
    lines = []
    for key in sorted(expected.keys() - actual.keys()):
        lines.append(f"missing {key[0]} {key[1]}: {expected[key]}")
    for key in sorted(actual.keys() - expected.keys()):
        lines.append(f"unexpected {key[0]} {key[1]}: {actual[key]}")
    for key in sorted(actual.keys() & expected.keys()):
        if actual[key] != expected[key]:
            lines.append(
                f"changed {key[0]} {key[1]}: found {actual[key]!r}, expected {expected[key]!r}"
            )
    return lines


def verify(dsn: str) -> list[str]:
    """Differences between the installed schema and a fresh install of this version.

    Builds the fresh install beside the real one inside a transaction that is rolled back
    (DDL is transactional), so nothing changes; the schema is locked for those milliseconds.
    """
    with psycopg.connect(dsn) as conn:
        version = installed_version(conn)
        if version is None:
            return ["cdc_invoice schema is not installed: run `cdc-invoice install`"]
        problems = []
        if version != latest_version():
            problems.append(
                f"schema version {version} installed, {latest_version()} expected: "
                "run `cdc-invoice install`"
            )
        try:
            with conn.transaction():
                conn.execute(q("rename_schema_aside", "admin.sql"))
                conn.execute(sql_file("schema.sql"))
                for name in REPLACEABLE:
                    conn.execute(sql_file(name))
                expected = catalogue(conn, "cdc_invoice")
                actual = catalogue(conn, "cdc_invoice_verify_installed")
                problems += diff_catalogues(actual, expected)
                raise _Rollback
        except _Rollback:
            pass
        return problems


class _Rollback(Exception):
    """Leaves verify's transaction without committing."""


def uninstall(dsn: str) -> list[str]:
    """Detach every source (drops their triggers) and drop the schema. Roles are kept."""
    with psycopg.connect(dsn) as conn, conn.transaction():
        if installed_version(conn) is None:
            return []
        sources = [str(r[0]) for r in conn.execute(q("attached_sources", "admin.sql")).fetchall()]
        for source in sources:
            conn.execute("SELECT cdc_invoice.detach(%s)", (source,))
        conn.execute(q("drop_schema", "admin.sql"))
        return sources
