"""Start-up options (fixed for the process) and runtime knobs (``POST /_sandbox/config``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

DEFAULT_MONTHLY_QUOTA = Decimal("100000000000")  # 1000亿: "large" unless a test lowers it
TOKEN_TTL_S = 86400  # 24 h, §2.2
TOKEN_LIMIT = 50  # token calls per app per 30 days, §2.2
TOKEN_WINDOW_S = 30 * 86400
# ASSUMPTION: the real timestamp tolerance is undocumented (§2.4); ±300 s is a common choice.
TIMESTAMP_WINDOW_S = 300


@dataclass(slots=True)
class RuntimeConfig:
    """What a test or a chaos run may change while the sandbox runs."""

    latency_ms: float = 0.0
    issue_delay_ms: float = 500.0
    fault_5xx: float = 0.0
    fault_timeout: float = 0.0
    fault_lost_response: float = 0.0
    fault_garbage: float = 0.0
    fault_issue_fail: float = 0.0  # accepted, then status 22 "injected failure"
    fault_sign_failed: float = 0.0  # issued (number, date), then status 24 签章失败
    timeout_fault_s: float = 60.0  # how long a "timeout" fault stalls: longer than any client
    monthly_quota: Decimal = DEFAULT_MONTHLY_QUOTA
    red_requires_confirmation: bool = False  # blue "used" by the buyer: slips wait for 04
    # Gateway calls per app key per second (sliding 1 s window); over it: E9429. 0 = no limit.
    rate_limit_per_s: float = 0.0

    _RATES = ("fault_5xx", "fault_timeout", "fault_lost_response", "fault_garbage")

    def validate(self) -> None:
        for name in (*self._RATES, "fault_issue_fail", "fault_sign_failed"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if sum(getattr(self, name) for name in self._RATES) > 1.0:
            raise ValueError("the four gateway fault rates must add up to at most 1")
        for name in ("latency_ms", "issue_delay_ms", "timeout_fault_s", "rate_limit_per_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.monthly_quota < 0:
            raise ValueError("monthly_quota must not be negative")

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a JSON object of changes; unknown keys and bad values raise ValueError."""
        known = {f.name: f for f in fields(self)}
        candidate = RuntimeConfig(**asdict(self))
        for key, value in changes.items():
            if key not in known or key.startswith("_"):
                raise ValueError(f"unknown setting {key!r}; known: {sorted(known)}")
            setattr(candidate, key, _coerce(key, value))
        candidate.validate()
        for f in fields(self):
            setattr(self, f.name, getattr(candidate, f.name))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["monthly_quota"] = str(self.monthly_quota)
        return out


def _coerce(key: str, value: Any) -> Any:
    if key == "red_requires_confirmation":
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"{key} must be a number")
    try:
        if key == "monthly_quota":
            return Decimal(str(value))
        return float(value)
    except (ValueError, InvalidOperation) as exc:
        raise ValueError(f"{key} must be a number") from exc


@dataclass(slots=True)
class SandboxOptions:
    """Everything ``start_sandbox`` needs; the CLI builds one from its flags."""

    app_key: str
    app_secret: str = field(repr=False)
    seller_tax_numbers: tuple[str, ...]
    state_path: Path
    host: str = "127.0.0.1"
    port: int = 8708
    seed: int = 0
    token_ttl_s: int = TOKEN_TTL_S
    token_limit: int = TOKEN_LIMIT
    timestamp_window_s: int = TIMESTAMP_WINDOW_S
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    tls_cert: Path | None = None  # serve HTTPS with this certificate chain (PEM) …
    tls_key: Path | None = None  # … and its private key (PEM)
    callback_url: str | None = None  # opt-in: POST results there (callbacks.py)


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8708`` for IPv6); port 0 picks a free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen wants HOST:PORT, got {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)
