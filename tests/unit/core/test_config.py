"""Configuration: TOML, environment overrides, and errors that point at the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc_invoice import config
from cdc_invoice.errors import ConfigError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_file_then_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[database]\ndsn = "host=a"\n[daemon]\nconcurrency = 8\n'
        '[provider.credentials.main]\napp_key = "k"\napp_secret_file = "/s"\n',
    )
    cfg = config.load(
        path,
        {
            "CDC_INVOICE_DAEMON__CONCURRENCY": "16",
            "CDC_INVOICE_PROVIDER__CREDENTIALS__SHOP2__APP_KEY": "k2",
            "UNRELATED": "x",
        },
    )
    assert cfg.database.dsn == "host=a"
    assert cfg.daemon.concurrency == 16
    assert cfg.provider.credentials["main"].app_secret_file == "/s"
    assert cfg.provider.credentials["shop2"].app_key == "k2"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[daemon]\nconcurency = 3\n", {}, "unknown key(s) concurency in [daemon]"),
        ("[daemon]\nconcurrency = 'many'\n", {}, "daemon.concurrency must be a int"),
        ("[daemon]\nconcurrency = 0\n", {}, "daemon.concurrency must be 1..1000"),
        ("[daemon\n", {}, "is not valid TOML"),
        ("", {"CDC_INVOICE_DAEMON__LOG_FORMAT": "xml"}, "daemon.log_format must be text or json"),
        ("[provider]\nkind = 'baiwang'\n", {}, "provider.kind 'baiwang' is not supported"),
        ("[daemon]\nlease_seconds = 5.0\n", {}, "lease_seconds must be well above"),
        ("database = 3\n", {}, "[database] must be a table"),
    ],
)
def test_bad_config_says_what_and_where(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        config.load(write(tmp_path, text), env)
    assert message in str(exc.value)


def test_missing_file_suggests_the_reference(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        config.load(str(tmp_path / "nope.toml"), {})
    assert "does not exist" in str(exc.value)


def test_secret_files_must_be_private(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t\n")
    secret.chmod(0o644)
    cred = config.CredentialConfig(app_key="k", app_secret_file=str(secret))
    with pytest.raises(ConfigError) as exc:
        cred.load_secret("main")
    assert exc.value.hint == f"chmod 600 {secret}"
    assert "s3cr3t" not in str(exc.value)
    secret.chmod(0o600)
    assert cred.load_secret("main") == "s3cr3t"
    with pytest.raises(ConfigError, match="no app_secret_file or app_secret_env"):
        config.CredentialConfig(app_key="k").load_secret("main")


def test_reference_lists_every_key_with_its_variable() -> None:
    text = config.describe()
    assert "CDC_INVOICE_DAEMON__CONCURRENCY" in text
    assert "CDC_INVOICE_PROVIDER__CREDENTIALS__MAIN__APP_SECRET_FILE" in text
    assert "[daemon]" in text and "[provider.credentials.<seller_id>]" in text


def test_a_missing_config_file_names_a_command_that_exists(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cdc_invoice.cli import main

    with pytest.raises(ConfigError) as info:
        config.load(str(tmp_path / "missing.toml"))
    hint = info.value.hint or ""
    command = hint.split("`cdc-invoice ")[1].split("`")[0]
    assert CliRunner().invoke(main, [command]).exit_code == 0, command
