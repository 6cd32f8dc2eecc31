"""Typed settings: a TOML file, overridden by CDC_INVOICE_<SECTION>__<KEY> environment variables.

    [database]
    dsn = "postgresql://cdc_invoice@db/inventory"   # libpq; multi-host + target_session_attrs
    [provider]
    kind = "nuonuo"
    base_url = "http://127.0.0.1:8708"                # the sandbox; production: https://sdk.nuonuo.com
    token_url = "http://127.0.0.1:8708/accessToken"   # default: https://open.nuonuo.com/accessToken
    [provider.credentials.main]                     # keyed by cdc_invoice.seller.seller_id
    app_key = "…"
    app_secret_file = "/run/credentials/cdc-invoice/main"   # or app_secret_env = "VAR_NAME"
    [daemon]
    concurrency = 32

Secrets are never values in the file or in argv: only the path of a file (or the name of an
environment variable) that holds them. ``describe()`` renders the reference docs of every key.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from cdc_invoice.errors import ConfigError

ENV_PREFIX = "CDC_INVOICE_"


@dataclass(slots=True)
class DatabaseConfig:
    dsn: str = field(default="", metadata={"doc": "libpq connection string; empty = PG* variables"})
    pool_size: int = field(default=4, metadata={"doc": "connections for claims and writes"})


@dataclass(slots=True)
class CredentialConfig:
    app_key: str = field(default="", metadata={"doc": "the app key (not secret)"})
    app_secret_file: str = field(default="", metadata={"doc": "file holding the app secret"})
    app_secret_env: str = field(default="", metadata={"doc": "or: env variable holding it"})

    def load_secret(self, seller_id: str) -> str:
        if self.app_secret_file:
            return read_secret_file(self.app_secret_file, f"provider.credentials.{seller_id}")
        if self.app_secret_env:
            value = os.environ.get(self.app_secret_env, "")
            if not value:
                raise ConfigError(
                    f"environment variable {self.app_secret_env} (provider.credentials.{seller_id}"
                    ".app_secret_env) is empty or unset"
                )
            return value
        raise ConfigError(
            f"provider.credentials.{seller_id} has no app_secret_file or app_secret_env",
            hint="put the secret in a file readable only by the daemon (chmod 600) and name it",
        )


@dataclass(slots=True)
class ProviderConfig:
    kind: str = field(default="nuonuo", metadata={"doc": "platform adapter (nuonuo)"})
    base_url: str = field(
        default="http://127.0.0.1:8708",
        metadata={"doc": "gateway base, e.g. https://sdk.nuonuo.com or the sandbox"},
    )
    token_url: str = field(
        default="https://open.nuonuo.com/accessToken",
        metadata={"doc": "token endpoint (创建应用 doc); the sandbox's is {its url}/accessToken"},
    )
    timeout_seconds: float = field(default=10.0, metadata={"doc": "per HTTP call"})
    ca_file: str = field(default="", metadata={"doc": "CA bundle for TLS; empty = system CAs"})
    token_key_file: str = field(
        default="",
        metadata={
            "doc": "key for the token stored in the database; empty = derived from the secret"
        },
    )
    max_connections: int = field(
        default=16,  # a small pool: httpcore bookkeeping grows with it (encode/httpcore#1035)
        metadata={"doc": "keep-alive connections to the platform"},
    )
    max_requests_per_second: float = field(
        default=0.0,
        metadata={
            "doc": "platform calls per second per app key, shared by every daemon of the "
            "database (issue and query alike); 0 = no cap"
        },
    )
    quota_probe_seconds: float = field(
        default=60.0,
        metadata={"doc": "a seller paused for monthly quota is probed this often"},
    )
    credentials: dict[str, CredentialConfig] = field(default_factory=dict)


@dataclass(slots=True)
class DaemonConfig:
    daemon_id: str = field(default="", metadata={"doc": "unique name; empty = host:pid"})
    concurrency: int = field(default=32, metadata={"doc": "requests in flight per process"})
    poll_interval: float = field(
        default=1.0, metadata={"doc": "seconds between sweeps without NOTIFY"}
    )
    lease_seconds: float = field(default=60.0, metadata={"doc": "a claim expires after this"})
    result_poll_seconds: float = field(
        default=0.5, metadata={"doc": "first wait before asking the platform for a result"}
    )
    max_backoff_seconds: float = field(default=300.0, metadata={"doc": "cap of the retry backoff"})
    max_attempts: int = field(
        default=30,
        metadata={"doc": "retries of one request before it fails with its last error"},
    )
    shutdown_grace_seconds: float = field(
        default=20.0, metadata={"doc": "SIGTERM: time to finish in-flight work"}
    )
    metrics_listen: str = field(default="", metadata={"doc": "host:port for /metrics, /healthz"})
    buyer_slip_poll_seconds: float = field(
        default=300.0,
        metadata={"doc": "how often to copy red-letter slips buyers applied for; 0 = never"},
    )
    callback: bool = field(
        default=False,
        metadata={"doc": "accept platform callbacks at /nuonuo/callback (on metrics_listen)"},
    )
    log_format: str = field(default="text", metadata={"doc": "text or json"})
    log_level: str = field(
        default="", metadata={"doc": "warning, info or debug; empty = from -v (SIGHUP reloads)"}
    )
    archive_files: bool = field(
        default=True,
        metadata={"doc": "fetch each invoice's XML/PDF/OFD into the archive (invoice_file)"},
    )
    archive_dir: str = field(
        default="",
        metadata={"doc": "keep archived files in this directory; empty = in the database"},
    )
    archive_max_attempts: int = field(
        default=12, metadata={"doc": "fetches of one file before it is listed as failed"}
    )
    archive_retry_seconds: float = field(
        default=5.0, metadata={"doc": "first wait before fetching a file again (doubles)"}
    )


@dataclass(slots=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    provider: ProviderConfig = field(default_factory=ProviderConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)


def read_secret_file(path: str, what: str) -> str:
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read secret file {path}: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{what}: secret file {path} is readable by group or others "
            f"(mode {stat.filemode(st.st_mode)})",
            hint=f"chmod 600 {path}",
        )
    value = p.read_text(encoding="utf-8").strip()
    if not value:
        raise ConfigError(f"{what}: secret file {path} is empty")
    return value


def load(path: str | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any), then apply CDC_INVOICE_* overrides, then validate."""
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"config file {path} does not exist",
                hint="`cdc-invoice config-reference` lists every key; docs/operator-guide.md "
                "has a complete example",
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and "__" in name:
            keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
            node = raw
            for k in keys[:-1]:
                node = node.setdefault(k, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{name}: {'.'.join(keys[:-1])} is not a section")
            node[keys[-1]] = value
    config: Config = _build(Config, raw, "")
    _validate(config)
    return config


def _build(cls: type[Any], raw: Mapping[str, Any], where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{where}] must be a table")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(sorted(unknown))} in [{where or 'top level'}]",
            hint=f"known keys: {', '.join(sorted(known))}",
        )
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        key = f"{where}.{f.name}" if where else f.name
        hint = hints[f.name]
        value = raw[f.name]
        if is_dataclass(hint):
            values[f.name] = _build(hint, value, key)  # type: ignore[arg-type]
        elif f.name == "credentials":
            if not isinstance(value, Mapping):
                raise ConfigError(f"[{key}] must be a table of sellers")
            values[f.name] = {
                seller: _build(CredentialConfig, sub, f"{key}.{seller}")
                for seller, sub in value.items()
            }
        else:
            values[f.name] = _coerce(hint, value, key)
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a {hint.__name__}, got {value!r}") from None
    return value


def check_dsn(dsn: str, what: str) -> None:
    """A malformed connection string is a clear one-line error, not psycopg's traceback. The
    message names the problem, never the string itself (it may hold a password)."""
    import psycopg

    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        # libpq quotes the URI in some messages; it may hold a password.
        problem = re.sub(r'in URI: ".*"$', "in the URI", " ".join(str(exc).split()))
        raise ConfigError(
            f"{what} is not a libpq connection string: {problem}",
            hint="give a URI (postgresql://user@host:5432/dbname) or key=value pairs "
            "(host=db dbname=inventory), quoted in the shell",
        ) from None


def _validate(config: Config) -> None:
    check_dsn(config.database.dsn, "database.dsn")
    d = config.daemon
    if d.concurrency < 1 or d.concurrency > 1000:
        raise ConfigError(f"daemon.concurrency must be 1..1000, got {d.concurrency}")
    if d.max_attempts < 1:
        raise ConfigError(
            f"daemon.max_attempts must be at least 1, got {d.max_attempts}",
            hint="the default, 30, is about 1.5 hours of backoff at max_backoff_seconds = 300",
        )
    if d.lease_seconds < 5 * config.provider.timeout_seconds / 2:
        raise ConfigError(
            "daemon.lease_seconds must be well above provider.timeout_seconds "
            f"(at least 2.5x; got {d.lease_seconds} vs {config.provider.timeout_seconds})",
            hint="a claim must outlive the platform call it protects",
        )
    if d.log_format not in ("text", "json"):
        raise ConfigError(f"daemon.log_format must be text or json, got {d.log_format!r}")
    if d.callback and not d.metrics_listen:
        raise ConfigError(
            "daemon.callback needs daemon.metrics_listen: the callback is served there",
            hint='set metrics_listen = "0.0.0.0:9464" (behind a reverse proxy) or callback = false',
        )
    if d.log_level not in ("", "warning", "info", "debug"):
        raise ConfigError(f"daemon.log_level must be warning, info or debug, got {d.log_level!r}")
    if d.archive_max_attempts < 1:
        raise ConfigError(
            f"daemon.archive_max_attempts must be at least 1, got {d.archive_max_attempts}"
        )
    if d.archive_retry_seconds <= 0:
        raise ConfigError(
            f"daemon.archive_retry_seconds must be above 0, got {d.archive_retry_seconds}"
        )
    if d.archive_dir and not os.path.isabs(d.archive_dir):
        raise ConfigError(
            f"daemon.archive_dir must be an absolute path, got {d.archive_dir!r}",
            hint="the rows keep the path; a relative one would depend on the daemon's cwd",
        )
    if config.provider.max_requests_per_second < 0:
        raise ConfigError(
            "provider.max_requests_per_second must not be negative",
            hint="the calls per second your Nuonuo app is allowed, or 0 for no cap",
        )
    if config.provider.quota_probe_seconds <= 0:
        raise ConfigError(
            "provider.quota_probe_seconds must be positive", hint="e.g. quota_probe_seconds = 60"
        )
    if config.provider.kind != "nuonuo":
        raise ConfigError(f"provider.kind {config.provider.kind!r} is not supported (nuonuo)")


def describe() -> str:
    """Reference of every key, generated from the dataclasses (used by the operator guide)."""
    out = []
    for section, cls in (
        ("database", DatabaseConfig),
        ("provider", ProviderConfig),
        ("provider.credentials.<seller_id>", CredentialConfig),
        ("daemon", DaemonConfig),
    ):
        out.append(f"[{section}]")
        for f in fields(cls):
            if f.name == "credentials":
                continue
            default = f.default if f.default is not MISSING else ""
            env = ENV_PREFIX + "__".join(section.replace("<seller_id>", "MAIN").split(".")).upper()
            out.append(
                f"  {f.name} = {default!r}  # {f.metadata.get('doc', '')}"
                f" (env {env}__{f.name.upper()})"
            )
    return "\n".join(out)
