"""Operator commands through the console script's ``main``: policy explain, audit, retention."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.bootstrap import demo_policy
from gateway.cli import main, parse_age
from sessions.db import sqlite_url
from sessions.store import SessionStore


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("GOODBOT_CONFIG", raising=False)
    demo_policy(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("principal", "tool", "channel", "code", "rule"),
    [
        ("ana", "promote_rollout", "cli", 0, "roles.operator.grants["),
        ("ana", "ring.promote", "cli", 0, "roles.operator.grants["),
        ("vera", "promote_rollout", "cli", 1, "default:deny"),
        ("ana", "promote_rollout", "slack", 1, "default:deny"),  # not enabled in the file
        ("nobody", "scope_drift", "cli", 1, "default:unknown-sender"),
    ],
)
def test_policy_explain_names_the_deciding_rule(
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    principal: str,
    tool: str,
    channel: str,
    code: int,
    rule: str,
) -> None:
    argv = ["policy", "explain", "--data-dir", str(data_dir), "--principal", principal]
    assert main([*argv, "--tool", tool, "--channel", channel]) == code
    out = capsys.readouterr().out
    assert f"rule: {rule}" in out
    assert out.startswith("allowed" if code == 0 else "denied")


def test_policy_explain_refuses_unknown_tools_and_missing_files(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["policy", "explain", "--principal", "ana"]
    assert main([*argv, "--data-dir", str(data_dir), "--tool", "format_disk"]) == 2
    assert "no tool named 'format_disk'" in capsys.readouterr().err
    assert main([*argv, "--data-dir", str(tmp_path / "empty"), "--tool", "scope_drift"]) == 2
    assert "no policy file" in capsys.readouterr().err


async def _fill(data_dir: Path) -> None:
    store = await SessionStore.open(sqlite_url(data_dir))
    try:
        admitted = await store.admit("cli", "e1", "cli:ana", "ana", "hello")
        await store.record_reply(admitted.conversation_id, "hi", in_reply_to=admitted.message_id)
        await store.audit("message.received", "ana", "cli", admitted.conversation_id, {"n": 1})
    finally:
        await store.close()


def test_audit_verify_export_and_purge(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(_fill(data_dir))
    assert main(["audit", "verify", "--data-dir", str(data_dir)]) == 0
    assert "audit chain OK: 1 records" in capsys.readouterr().out
    assert main(["audit", "export", "--data-dir", str(data_dir), "--format", "jsonl"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record["type"] == "message.received" and len(record["hash"]) == 64
    assert main(["sessions", "purge", "--data-dir", str(data_dir), "--older-than", "1s"]) == 0
    out = capsys.readouterr().out
    assert "purged 0 messages" in out and "0 delivered notifications" in out  # all too young
    assert main(["sessions", "purge", "--data-dir", str(data_dir), "--older-than", "soon"]) == 2
    assert "not a duration" in capsys.readouterr().err


def test_ages() -> None:
    assert parse_age("30d").days == 30
    assert parse_age("90m").total_seconds() == 5400
    with pytest.raises(ValueError, match="not a duration"):
        parse_age("3 weeks")


def test_policy_demo_writes_the_shared_policy_and_the_gateways_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GOODBOT_CONFIG", raising=False)
    tokens = tmp_path / "demo-tokens.json"
    tokens.write_text(json.dumps({"tokens": {"goodbot-gateway": {"token": "gbt_secret"}}}))
    shared = tmp_path / "shared"
    args = ["policy", "demo", "--data-dir", str(shared), "--controlplane-tokens", str(tokens)]
    assert main(args) == 0
    credential = shared / "controlplane-token"
    assert credential.read_text().strip() == "gbt_secret"
    assert credential.stat().st_mode & 0o777 == 0o600
    assert (shared / "policy.yaml").exists() and (shared / "cli-tokens" / "ana").exists()
    assert "gbt_secret" not in capsys.readouterr().out  # the secret is never printed
    policy = (shared / "policy.yaml").read_text()
    credential.write_text("rotated\n")
    assert main(args) == 0  # never overwrites: an operator's edits and rotations stay
    assert (shared / "policy.yaml").read_text() == policy
    assert credential.read_text() == "rotated\n"


def test_migrate_brings_the_store_up_to_date_and_says_to_which_revision(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gateway schema is up to date (revision ") and "None" not in out
    assert (data_dir / "gateway.db").exists()
