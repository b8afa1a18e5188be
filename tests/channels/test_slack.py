"""Slack channel pieces: its settings and secrets, mrkdwn, the confirmation's Block Kit."""

from __future__ import annotations

from pathlib import Path

import pytest

from channels.base import DecisionReport
from channels.slack import ACTIONS_BLOCK, confirmation_blocks, final_state, mrkdwn
from gateway.settings import ConfigError, describe, load


def test_slack_is_off_until_both_secrets_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOODBOT_SLACK__BOT_TOKEN", raising=False)
    monkeypatch.setenv("GOODBOT_SLACK__SIGNING_SECRET", "s3cret-signing")
    assert not load(None).slack.enabled
    monkeypatch.setenv("GOODBOT_SLACK__BOT_TOKEN", "xoxb-s3cret")
    settings = load(None)
    assert settings.slack.enabled
    assert settings.secret("slack", "signing_secret") == "s3cret-signing"
    assert settings.secret("slack", "bot_token") == "xoxb-s3cret"
    summary = "\n".join(describe(settings))
    assert "slack: enabled" in summary
    assert "s3cret" not in summary and "s3cret" not in repr(settings)


def test_slack_secrets_come_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SIGNING_SECRET", "BOT_TOKEN"):
        monkeypatch.delenv(f"GOODBOT_SLACK__{name}", raising=False)
    (tmp_path / "signing").write_text("from-a-file\n")
    (tmp_path / "bot").write_text("xoxb-from-a-file\n")
    config = tmp_path / "goodbot.yaml"
    signing, bot = tmp_path / "signing", tmp_path / "bot"
    config.write_text(f"slack: {{signing_secret_file: {signing}, bot_token_file: {bot}}}")
    settings = load(config)
    assert settings.slack.enabled
    assert settings.secret("slack", "signing_secret") == "from-a-file"
    assert settings.secret("slack", "bot_token") == "xoxb-from-a-file"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("slack: {signing_secret: oops}", "slack.signing_secret"),
        ("slack: {bot_token: xoxb-oops}", "slack.bot_token"),
        ("slack: {bot_token_file: /no/such/file}", "slack.bot_token_file"),
    ],
)
def test_slack_secrets_are_refused_in_the_file(tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "goodbot.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(config)
    assert caught.value.key == key


def test_mrkdwn() -> None:
    assert mrkdwn("**zoom** waits") == "*zoom* waits"
    assert mrkdwn("[docs](https://example.com/a)") == "<https://example.com/a|docs>"
    assert mrkdwn("a <b> & c") == "a &lt;b&gt; &amp; c"


def test_confirmation_blocks_carry_the_id_hash_and_exact_arguments() -> None:
    confirmation = {
        "id": "cf_1",
        "tool": "promote_rollout",
        "summary": "Promote google-chrome from ring 1 to ring 2",
        "arguments": {"rollout_id": "ro_9", "from_ring": 1, "to_ring": 2},
        "arguments_hash": "ab" * 32,
        "expires_at": "2026-12-01T08:00:00Z",
        "state": "pending",
    }
    blocks = confirmation_blocks(confirmation, "UANA")
    (actions,) = [b for b in blocks if b.get("block_id") == ACTIONS_BLOCK]
    values = {e["action_id"]: e["value"] for e in actions["elements"]}
    assert values == {
        "goodbot_confirm": f"cf_1|{'ab' * 32}|UANA",
        "goodbot_deny": f"cf_1|{'ab' * 32}|UANA",
    }
    text = "".join(str(b.get("text", "")) for b in blocks)
    assert '"to_ring": 2' in text and '"rollout_id": "ro_9"' in text


def test_final_states() -> None:
    def report(outcome: str, result: dict[str, object] | None = None) -> DecisionReport:
        return DecisionReport(outcome, "why", None, result, "")  # type: ignore[arg-type]

    assert "and done" in (final_state(report("confirmed", {"status": "ok"}), "U1") or "")
    failed = final_state(report("confirmed", {"status": "error", "text": "ring locked"}), "U1")
    assert failed is not None and "failed: ring locked" in failed
    assert "Denied by <@U1>" in (final_state(report("denied"), "U1") or "")
    assert "Expired" in (final_state(report("expired"), "U1") or "")
    assert final_state(report("already_decided"), "U1") is None
