"""Operations and finance commands: status, health, report, systemd-unit."""

from __future__ import annotations

import csv
import json
import re
import sys
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import click
import psycopg
from psycopg import sql

from cdc_invoice.commands.common import dsn_option

OPS = "ops_queries.sql"
DATE_TYPES = ("date", "timestamp with time zone", "timestamp without time zone")
UNORDERABLE = ("json", "xml", "point")
# A heartbeat comes every 10 s; three missed ones and the daemon is presumed dead.
STALE_SECONDS = 30


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, timedelta):
        return _age(v.total_seconds())
    if isinstance(v, datetime):
        return v.isoformat(sep=" ", timespec="seconds")
    if isinstance(v, Decimal):
        return format(v, "f")  # exact, never 1E+1
    return str(v)


def _age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


# --- status ---------------------------------------------------------------------------------


def gather_status(dsn: str) -> dict[str, Any]:
    from psycopg.rows import dict_row

    from cdc_invoice.db.queries import q
    from cdc_invoice.errors import CdcInvoiceError

    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        out: dict[str, Any] = {}
        try:
            for key in ("backlog", "failures", "waiting", "daemons", "unserved", "tokens"):
                cur.execute(q(f"status_{key}", OPS))
                out[key] = cur.fetchall()
            cur.execute(q("status_throughput", OPS))
            out["throughput"] = cur.fetchone()
            cur.execute(q("archive_counts", "archive_queries.sql"))
            out["archive"] = cur.fetchone()
        except psycopg.errors.InsufficientPrivilege as exc:
            raise CdcInvoiceError(
                f"status reads the queue tables: {exc.diag.message_primary}",
                hint="use a login with the cdc_invoice_daemon role, or read the views: "
                "cdc-invoice report backlog / report failures",
            ) from exc
    return out


@click.command()
@dsn_option
@click.option("--json", "as_json", is_flag=True, help="one JSON document instead of tables")
def status(dsn: str, as_json: bool) -> None:
    """The queue at a glance: backlog, throughput, failures by reason, requests waiting on the
    platform's limits (quota pauses, throttling), daemons, tokens."""
    data = gather_status(dsn)
    if as_json:
        click.echo(json.dumps(data, default=_json_default, ensure_ascii=False, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from cdc_invoice.commands.render import print_rows

    console = Console(highlight=False)

    backlog = Table(
        "source", "kind", "state", "requests", "due", "oldest", "max attempt", title="Backlog"
    )
    for r in data["backlog"]:
        backlog.add_row(
            escape(r["source"]),
            r["kind"],
            r["state"],
            str(r["requests"]),
            str(r["due"]),
            _cell(r["oldest_age"]),
            str(r["max_attempt"]),
        )
    console.print(backlog if data["backlog"] else "Backlog: empty")

    t = data["throughput"]
    through = Table("window", "invoices", "per minute", title="Invoices recorded")
    for label, n, minutes in (
        ("1 min", t["last_1m"], 1),
        ("5 min", t["last_5m"], 5),
        ("15 min", t["last_15m"], 15),
    ):
        through.add_row(label, str(n), f"{n / minutes:.1f}")
    console.print(through)

    if data["failures"]:
        print_rows(
            console,
            ("code", "requests", "example", "fix"),
            [
                [r["error_code"], str(r["requests"]), r["example"], r["hint"] or ""]
                for r in data["failures"]
            ],
            title="Failures by reason",
            show_lines=True,
        )
        console.print(
            "  list them: cdc-invoice failures · once fixed: cdc-invoice retry --all (or ID)"
        )
    else:
        console.print("Failures: none")

    if data["waiting"]:
        waiting = Table(
            "source",
            "reason",
            "requests",
            "oldest",
            "detail",
            "fix",
            title="Waiting on the platform's limits (not failed; they resume by themselves)",
            show_lines=True,
        )
        for r in data["waiting"]:
            reason = {"QUOTA_PAUSED": "quota exhausted", "E9429": "throttled"}.get(
                r["error_code"], r["error_code"]
            )
            waiting.add_row(
                r["source"],
                reason,
                str(r["requests"]),
                _cell(r["oldest_age"]),
                r["example"],
                r["hint"] or "",
            )
        console.print(waiting)

    daemons = Table("daemon", "host", "pid", "version", "sellers", "started", "heartbeat", "state")
    for r in data["daemons"]:
        age = r["heartbeat_age"].total_seconds()
        state = (
            "stopped"
            if r["stopped_at"]
            else ("live" if age <= STALE_SECONDS else "[red]no heartbeat[/]")
        )
        daemons.add_row(
            escape(r["daemon_id"]),
            escape(r["host"]),
            str(r["pid"]),
            escape(r["version"]),
            # the sellers it takes work for (NULL: a daemon that does not say, i.e. any)
            escape(", ".join(r["sellers"])) if r["sellers"] is not None else "any",
            _cell(r["started_at"]),
            f"{_age(age)} ago",
            state,
        )
    daemons.title = "Daemons"
    console.print(daemons if data["daemons"] else "[red]Daemons: none running[/]")

    if data["unserved"]:
        unserved = Table(
            "seller", "source", "requests", "oldest", title="[red]Work no live daemon can take[/]"
        )
        for r in data["unserved"]:
            unserved.add_row(  # names are the DBA's: never rich markup
                escape(r["seller_id"]),
                escape(r["source"]),
                str(r["requests"]),
                _cell(r["oldest_age"]),
            )
        console.print(unserved)
        console.print(
            "  no live daemon has credentials for these sellers: add "
            "[provider.credentials.<seller_id>] to a daemon's config and restart it"
        )

    tokens = Table(
        "app key", "token expires", "fetched", "by", "fetches (30 days, max 50)", title="Tokens"
    )
    for r in data["tokens"]:
        tokens.add_row(
            escape(r["app_key"]),
            _cell(r["expires_at"]) or "none yet",
            _cell(r["fetched_at"]),
            r["fetched_by"] if r["fetched_at"] else "",
            str(r["fetches_30d"]),
        )
    console.print(tokens if data["tokens"] else "Tokens: none fetched yet")

    a = data["archive"]
    console.print(
        f"Invoice files: {a['verified']} verified, {a['pending']} pending, {a['failed']} failed"
        + (f", [red]{a['mismatched']} not matching their invoice[/]" if a["mismatched"] else "")
        + (" (cdc-invoice report archive_open)" if a["failed"] else "")
    )


def _json_default(o: object) -> object:
    if isinstance(o, timedelta):
        return o.total_seconds()
    if isinstance(o, datetime | date):
        return o.isoformat()
    if isinstance(o, Decimal):
        return str(o)
    raise TypeError(type(o).__name__)


# --- health ---------------------------------------------------------------------------------


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="CDC_INVOICE_CONFIG",
    help="the daemon's TOML file (env overrides apply, as for `run`)",
)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table")
def health(config_path: str | None, as_json: bool) -> None:
    """Check what the daemon needs: database, schema, LISTEN round trip, platform, tokens.

    Exit 0 when nothing failed (warnings allowed), 1 otherwise. Never fetches a platform
    token (they are limited to 50 per 30 days).
    """
    from cdc_invoice import config as cfg
    from cdc_invoice.daemon import health as h
    from cdc_invoice.errors import ConfigError

    try:
        checks = h.run_checks(cfg.load(config_path))
    except ConfigError as exc:
        checks = [h.Check("config", h.FAIL, exc.message, fix=exc.hint)]
    overall = h.worst([c.status for c in checks])
    if as_json:
        click.echo(
            json.dumps(
                {"status": overall, "checks": [c.to_json() for c in checks]},
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        colour = {h.OK: "green", h.WARN: "yellow", h.FAIL: "red"}
        table = Table("check", "status", "time", "detail", show_lines=True)
        for c in checks:
            detail = c.detail + (f"\nfix: {c.fix}" if c.fix else "")
            took = f"{c.seconds * 1000:.0f} ms" if c.seconds is not None else ""
            table.add_row(Text(c.name), Text(c.status, style=colour[c.status]), took, Text(detail))
        console = Console(highlight=False)
        console.print(table)
        console.print(f"overall: [{colour[overall]}]{overall}[/]")
    sys.exit(1 if overall == h.FAIL else 0)


# --- report ---------------------------------------------------------------------------------


def report_views(conn: psycopg.Connection[Any]) -> dict[str, str]:
    from cdc_invoice.db.queries import q

    return {str(n): str(d) for n, d in conn.execute(q("report_views", OPS)).fetchall()}


def report_query(
    conn: psycopg.Connection[Any], name: str, since: date | None
) -> tuple[str, sql.Composed, list[Any], list[str]]:
    """The view's name, the SELECT for it (``name`` validated), its parameters and columns."""
    from cdc_invoice.db.queries import q

    views = report_views(conn)
    view = name if name in views else f"report_{name}"
    if view not in views:
        raise click.UsageError(
            f"no report {name!r}; reports: "
            + ", ".join(v.removeprefix("report_") for v in sorted(views))
        )
    columns = conn.execute(q("report_columns", OPS), {"view": view}).fetchall()
    names = [str(c[0]) for c in columns]
    query = sql.SQL("SELECT * FROM {}.{}").format(
        sql.Identifier("cdc_invoice"), sql.Identifier(view)
    )
    params: list[Any] = []
    date_col = next((str(c[0]) for c in columns if str(c[1]) in DATE_TYPES), None)
    if since is not None:
        if date_col is None:
            raise click.UsageError(f"report {view} has no date column to filter with --since")
        bound = (
            sql.SQL("date_trunc('month', %s::date)")
            if date_col == "month"  # --since 2024-03-15 keeps March
            else sql.SQL("%s::date")
        )
        query += sql.SQL(" WHERE {} >= ").format(sql.Identifier(date_col)) + bound
        params.append(since)
    order = [
        sql.Literal(i)
        for i, c in enumerate(columns, start=1)
        if not str(c[1]).startswith(UNORDERABLE)
    ]
    if order:
        query += sql.SQL(" ORDER BY ") + sql.SQL(", ").join(order)
    return view, query, params, names


@click.command()
@dsn_option
@click.argument("name", required=False)
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="only rows whose date column (day, month, issued_at …) is on or after DATE "
    "(China time, Asia/Shanghai)",
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True
)
def report(dsn: str, name: str | None, since: datetime | None, fmt: str) -> None:
    """Print a report view (cdc_invoice.report_NAME); without NAME, list them.

    \b
    cdc-invoice report monthly --since 2025-01-01
    cdc-invoice report register --format csv > invoices.csv
    """
    with psycopg.connect(dsn) as conn:
        # China time whatever the server's or the login's time zone: --since D means the
        # invoice date D (as report_daily counts it), and timestamps print with +08:00.
        conn.execute("SET TIME ZONE 'Asia/Shanghai'")
        if name is None:
            for view, description in report_views(conn).items():
                click.echo(f"{view.removeprefix('report_'):<12} {description}")
            return
        view, query, params, names = report_query(conn, name, since.date() if since else None)
        rows = conn.execute(query, params).fetchall()
    if fmt == "csv":
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(names)
        for r in rows:
            out.writerow([_cell(v) for v in r])
        return
    from rich.console import Console

    from cdc_invoice.commands.render import print_rows

    print_rows(
        Console(highlight=False),
        names,
        [[_cell(v) for v in r] for r in rows],
        title=f"cdc_invoice.{view} ({len(rows)} rows)",
    )


# --- systemd-unit ---------------------------------------------------------------------------

_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


@click.command("systemd-unit")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="the config the service runs with (its secret files become LoadCredential=)",
)
@click.option("--user", default="cdc-invoice", show_default=True, help="the service's OS user")
def systemd_unit(config_path: str | None, user: str) -> None:
    """Print a systemd unit (Type=notify, watchdog, hardening, secrets as credentials).

    \b
    cdc-invoice systemd-unit --config /etc/cdc-invoice/cdc-invoice.toml \\
        > /etc/systemd/system/cdc-invoice.service
    """
    from cdc_invoice import config as cfg
    from cdc_invoice.daemon import systemd

    if not _USER.match(user):
        raise click.UsageError(f"--user {user!r} is not a valid user name")
    config = cfg.load(config_path) if config_path else cfg.Config()
    click.echo(systemd.unit_file(config, config_path, user), nl=False)


COMMANDS = [status, health, report, systemd_unit]
