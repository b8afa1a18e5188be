"""Gateway configuration: YAML plus environment, secrets kept out of the file, errors by key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import ConfigError, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "goodbot.yaml"
    path.write_text(text)
    return path


def test_defaults_need_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOODBOT_MODEL__API_KEY", raising=False)
    settings = load(None)
    assert settings.model.route == "rules"
    assert settings.controlplane.url is None  # embedded control plane
    assert settings.secret("model") is None


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "server: {port: 9000, host: gateway.internal}\n")
    monkeypatch.setenv("GOODBOT_SERVER__PORT", "9100")
    settings = load(path)
    assert (settings.server.host, settings.server.port) == ("gateway.internal", 9100)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("server: {prot: 1}", "server.prot", "unknown key"),
        ("colour: red", "colour", "unknown key"),
        ("server: {port: 70000}", "server.port", "less than or equal to 65535"),
        ("model: {route: openai}", "model", "needs model.base_url and model.model"),
        ("model: {api_key: sk-123}", "model.api_key", "GOODBOT_MODEL__API_KEY"),
        ("controlplane: {token: abc}", "controlplane.token", "secrets are not read"),
        ("controlplane: {url: 'ftp://x'}", "controlplane.url", "pattern"),
        ("- a list", "goodbot.yaml", "must be a mapping"),
        ("server: {port: 1\n", "goodbot.yaml:", "not valid YAML"),
        ("model: {api_key_file: /nonexistent/key}", "model.api_key_file", "no such file"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text))
    assert key in caught.value.key, caught.value
    assert reason in caught.value.reason


def test_secrets_come_from_environment_or_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    path = write(
        tmp_path,
        f"model: {{route: openai, base_url: 'http://127.0.0.1:1/v1', "
        f"model: m, api_key_file: '{key_file}'}}\n",
    )
    assert load(path).secret("model") == "sk-from-file"
    monkeypatch.setenv("GOODBOT_MODEL__API_KEY", "sk-from-env")
    assert load(path).secret("model") == "sk-from-env"


def run_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config", "check", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_config_check_command(tmp_path: Path) -> None:
    bad = run_check("--config", str(write(tmp_path, "server: {prot: 1}\n")))
    assert bad.returncode == 2
    assert "config error: server.prot: unknown key" in bad.stderr
    secret = "sk-should-never-be-printed"
    good_path = tmp_path / "good.yaml"
    good_path.write_text("model: {route: openai, base_url: 'http://127.0.0.1:1/v1', model: m}\n")
    good = run_check(
        "--config", str(good_path), env={**os.environ, "GOODBOT_MODEL__API_KEY": secret}
    )
    assert good.returncode == 0, good.stderr
    assert "config OK" in good.stdout and "model key: set" in good.stdout
    assert secret not in good.stdout + good.stderr


def test_replica_settings_from_the_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path, "replicas: {lease_retry_seconds: 5}\ndatabase: {migrate_on_start: true}\n"
    )
    monkeypatch.setenv("GOODBOT_DATABASE__MIGRATE_ON_START", "false")
    monkeypatch.setenv("GOODBOT_REPLICAS__RECOVER_AFTER_SECONDS", "300")
    settings = load(path)
    assert settings.replicas.lease_retry_seconds == 5
    assert settings.replicas.recover_after_seconds == 300
    assert settings.replicas.shared_rate_limit is True
    assert settings.database.migrate_on_start is False
    with pytest.raises(ConfigError) as refused:
        load(write(tmp_path, "replicas: {lease_retry: 5}\n"))
    assert refused.value.key == "replicas.lease_retry"
    with pytest.raises(ConfigError) as refused:
        load(write(tmp_path, "replicas: {lease_retry_seconds: 0}\n"))
    assert refused.value.key == "replicas.lease_retry_seconds"


EMAIL = (
    "email: {address: goodbot@example.com, imap_host: imap.example.com, "
    "smtp_host: smtp.example.com, imap_username: goodbot, trusted_authserv_ids: [mx.example.com]"
)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("email: {imap_password: pw}", "email.imap_password", "GOODBOT_EMAIL__IMAP_PASSWORD"),
        ("email: {smtp_password: pw}", "email.smtp_password", "secrets are not read"),
        ("email: {code_secret: k}", "email.code_secret", "GOODBOT_EMAIL__CODE_SECRET"),
        (EMAIL + "}", "email.imap_password", "GOODBOT_EMAIL__IMAP_PASSWORD"),
        (
            EMAIL.replace("trusted_authserv_ids: [mx.example.com]", "imap_port: 993") + "}",
            "email.trusted_authserv_ids",
            "Authentication-Results",
        ),
        (EMAIL + ", imap_tls: none}", "email", "only for a loopback host"),
        (EMAIL + ", smtp_tls: none}", "email", "only for a loopback host"),
        (EMAIL + ", smtp_tls: maybe}", "email.smtp_tls", "'tls', 'starttls' or 'none'"),
        (EMAIL + ", imap_tls: starttls}", "email.imap_tls", "'tls' or 'none'"),
        ("email: {address: not-an-address}", "email.address", "pattern"),
        (EMAIL + ", imap_password_file: /nonexistent}", "email.imap_password_file", "no such"),
    ],
)
def test_email_errors_name_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, key: str, reason: str
) -> None:
    monkeypatch.delenv("GOODBOT_EMAIL__IMAP_PASSWORD", raising=False)
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text + "\n"))
    assert key in caught.value.key, caught.value
    assert reason in caught.value.reason


def test_email_settings_from_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not load(None).email.enabled  # off by default: `make run` is unchanged
    monkeypatch.setenv("GOODBOT_EMAIL__IMAP_PASSWORD", "imap-secret")
    monkeypatch.setenv("GOODBOT_EMAIL__SMTP_PASSWORD", "smtp-secret")
    settings = load(write(tmp_path, EMAIL + ", smtp_username: goodbot}\n"))
    mail = settings.email
    assert mail.enabled and (mail.imap_port, mail.imap_tls) == (993, "tls")
    assert (mail.smtp_port, mail.smtp_tls) == (587, "starttls")
    assert mail.password("imap") == "imap-secret" and mail.password("smtp") == "smtp-secret"
    assert mail.password("code") is None
    assert "imap-secret" not in repr(settings)
    loopback = load(write(tmp_path, "email: {imap_host: 127.0.0.1, imap_tls: none}\n"))
    assert loopback.email.imap_tls == "none"
