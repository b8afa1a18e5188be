"""Teams channel pieces: settings and secrets, the ingress checks, Teams Markdown and splitting,
the confirmation and notification cards, and the development flag."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from microsoft_agents.activity import Activity
from microsoft_agents.hosting.core.authorization import ClaimsIdentity

from channels.teams_auth import IngressRefusal, check_activity, precheck, same_service_url
from channels.teams_cards import (
    CONFIRM,
    DENY,
    MESSAGE_UNITS,
    card_texts,
    confirmation_card,
    final_card,
    final_line,
    notification_card,
    split_message,
    teams_markdown,
)
from gateway.serve import teams_mode
from gateway.settings import ConfigError, describe, load

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
ISSUERS = frozenset({"https://api.botframework.com"})


def _token(headers: dict[str, Any] | None = None, **claims: Any) -> str:
    body = {"iss": "https://api.botframework.com", "aud": "app", **claims}
    return jwt.encode(body, "k" * 32, algorithm="HS256", headers=headers)


# Settings.


def test_teams_is_off_until_an_app_id_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOODBOT_TEAMS__APP_ID", raising=False)
    assert not load(None).teams.enabled
    monkeypatch.setenv("GOODBOT_TEAMS__APP_ID", "app-1")
    monkeypatch.setenv("GOODBOT_TEAMS__TENANT_ID", TENANT.upper())
    monkeypatch.setenv("GOODBOT_TEAMS__CLIENT_SECRET", "s3cret-teams")
    settings = load(None)
    assert settings.teams.enabled and settings.teams.secret() == "s3cret-teams"
    assert settings.teams.tenants() == {TENANT}
    summary = "\n".join(describe(settings))
    assert "teams: app app-1" in summary and "s3cret" not in summary
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("teams: {client_secret: oops}", "teams.client_secret"),
        ("teams: {client_secret_file: /no/such/file}", "teams.client_secret_file"),
        ("teams: {app_id: a}", "teams.tenant_id"),
        ("teams: {authority_host: 'http://login'}", "teams.authority_host"),
    ],
)
def test_teams_settings_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "goodbot.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(config)
    assert caught.value.key == key


def test_serve_refuses_teams_without_credentials_unless_developing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GOODBOT_TEAMS__CLIENT_SECRET", raising=False)
    config = tmp_path / "goodbot.yaml"
    config.write_text(f"server: {{host: 0.0.0.0}}\nteams: {{app_id: a, tenant_id: {TENANT}}}\n")
    settings = load(config)
    with pytest.raises(ConfigError) as caught:
        teams_mode(settings, development=False)
    assert caught.value.key == "teams.client_secret"
    developing = teams_mode(settings, development=True)
    assert developing.server.host == "127.0.0.1"
    said = capsys.readouterr().out
    assert "DEVELOPMENT MODE" in said and "127.0.0.1 only" in said and "still verified" in said
    untouched = load(None)
    assert teams_mode(untouched, development=False) is untouched  # Teams not configured


# Ingress.


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "no Authorization header"),
        ("Basic abc", "not a bearer token"),
        ("Bearer", "not a bearer token"),
        ("Bearer a b", "not a bearer token"),
        ("Bearer not-a-jwt", "not a JWT"),
        ("Bearer " + _token({"kid": "k1"}), "not signed with RS256"),
        ("Bearer " + jwt.encode({"iss": "x"}, "", algorithm="none"), "not signed with RS256"),
    ],
)
def test_precheck_refuses_what_the_sdk_mishandles(header: str | None, reason: str) -> None:
    with pytest.raises(IngressRefusal) as caught:
        precheck(header, ISSUERS)
    assert caught.value.status == 401 and reason in caught.value.reason


def test_precheck_needs_a_key_id_and_a_known_issuer() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def rs256(headers: dict[str, Any] | None, iss: str = "https://api.botframework.com") -> str:
        return "Bearer " + jwt.encode({"iss": iss}, key, algorithm="RS256", headers=headers)

    precheck(rs256({"kid": "k1"}), ISSUERS)
    with pytest.raises(IngressRefusal, match="no key id"):
        precheck(rs256(None), ISSUERS)
    with pytest.raises(IngressRefusal, match="issuer is not accepted"):
        precheck(rs256({"kid": "k1"}, "https://evil.example"), ISSUERS)


@pytest.mark.parametrize(
    ("claimed", "actual", "same"),
    [
        ("https://smba.trafficmanager.net/amer/", "https://smba.trafficmanager.net/amer/", True),
        ("https://SMBA.trafficmanager.net/amer", "https://smba.trafficmanager.net/amer/", True),
        ("https://smba.trafficmanager.net/amer/", "https://smba.trafficmanager.net/emea/", False),
        ("https://smba.trafficmanager.net/amer/", "https://evil.example/amer/", False),
        ("https://smba.trafficmanager.net/", "http://smba.trafficmanager.net/", False),
        ("https://smba.trafficmanager.net/", "https://smba.trafficmanager.net:8443/", False),
        ("/relative", "/relative", False),
    ],
)
def test_service_urls_match_exactly(claimed: str, actual: str, same: bool) -> None:
    assert same_service_url(claimed, actual) is same


def _activity(tenant: str | None = TENANT, conversation_tenant: str | None = None) -> Activity:
    return Activity.model_validate(
        {
            "type": "message",
            "serviceUrl": "https://smba.trafficmanager.net/amer/",
            "channelId": "msteams",
            "conversation": {"id": "a:1", "tenantId": conversation_tenant or tenant},
            "channelData": {"tenant": {"id": tenant}} if tenant else {},
        }
    )


def test_check_activity_binds_the_service_url_and_the_tenant() -> None:
    signed = ClaimsIdentity({"serviceurl": "https://smba.trafficmanager.net/amer/"})
    assert check_activity(signed, _activity(), frozenset({TENANT})) == TENANT
    with pytest.raises(IngressRefusal) as caught:
        check_activity(ClaimsIdentity({}), _activity(), frozenset({TENANT}))
    assert caught.value.status == 401
    elsewhere = ClaimsIdentity({"serviceurl": "https://smba.trafficmanager.net/emea/"})
    with pytest.raises(IngressRefusal):
        check_activity(elsewhere, _activity(), frozenset({TENANT}))
    for activity in (_activity("other"), _activity(TENANT, "other"), _activity(None)):
        with pytest.raises(IngressRefusal) as caught:
            check_activity(signed, activity, frozenset({TENANT}))
        assert caught.value.status == 403


# Rendering.


def test_teams_markdown_has_no_headings_or_tables() -> None:
    reply = (
        "## Pending\n\n| approval | app | ring |\n|---|---|---|\n| apr_1 | zoom | pilot |\n"
        "| apr_2 | crowd\\|strike | canary |\n\n```\n| kept | as | is |\n```\n- a list stays"
    )
    out = teams_markdown(reply)
    assert out.splitlines()[0] == "**Pending**"
    assert "- **apr_1** · app: zoom · ring: pilot" in out
    assert "- **apr_2** · app: crowd\\|strike · ring: canary" in out
    assert "| kept | as | is |" in out  # code is left alone
    assert "- a list stays" in out
    assert "|---|" not in out


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def test_long_replies_split_within_the_limit_at_paragraphs() -> None:
    paragraphs = [f"paragraph {n} " + "word " * 400 for n in range(40)]
    text = "\n\n".join(paragraphs)
    parts = split_message(text)
    assert len(parts) > 1
    assert all(_units(p) <= MESSAGE_UNITS for p in parts)
    assert " ".join(" ".join(p.split()) for p in parts) == " ".join(text.split())
    assert all(p.startswith("paragraph") for p in parts)


def test_a_split_code_block_is_closed_and_reopened() -> None:
    code = "```\n" + "\n".join(f"line {n} " + "x" * 60 for n in range(400)) + "\n```"
    parts = split_message(code, limit=4000)
    assert len(parts) > 1
    for part in parts:
        assert part.count("```") == 2, part[:40]
        assert _units(part) <= 4000


def test_one_huge_line_and_wide_characters_still_fit() -> None:
    parts = split_message("😀" * 20_000, limit=1000)
    assert all(_units(p) <= 1000 for p in parts)
    assert "".join(parts) == "😀" * 20_000
    assert split_message("short") == ["short"]


CONFIRMATION = {
    "id": "cf_1",
    "tool": "promote_rollout",
    "summary": "Promote google-chrome from canary (ring 1) to pilot (ring 2)",
    "arguments": {"rollout_id": "ro_9", "from_ring": 1, "to_ring": 2, "note": 'a "b"'},
    "arguments_hash": "ab" * 32,
    "expires_at": "2026-12-01T08:00:00Z",
    "state": "pending",
}


def test_the_confirmation_card_carries_the_exact_arguments_and_universal_actions() -> None:
    card = confirmation_card(CONFIRMATION, owner="Ana Lima", conversation="t:a:1")
    assert card["version"] == "1.5" and card["type"] == "AdaptiveCard"
    (facts,) = [b for b in card["body"] if b["type"] == "FactSet"]
    values = {f["title"]: json.loads(f["value"]) for f in facts["facts"]}
    assert values == CONFIRMATION["arguments"]
    actions = {a["verb"]: a for a in card["actions"]}
    assert set(actions) == {CONFIRM, DENY}
    assert all(a["type"] == "Action.Execute" for a in actions.values())
    assert actions[CONFIRM]["data"] == {
        "confirmation_id": "cf_1",
        "arguments_hash": "ab" * 32,
        "conversation": "t:a:1",
        "owner": "Ana Lima",
    }
    assert "For Ana Lima" in " ".join(card_texts(card))


@pytest.mark.parametrize(
    ("state", "result", "expected"),
    [
        ("executed", {"status": "ok", "text": "Promoted."}, "Confirmed by Ana and done."),
        ("failed", {"status": "error", "text": "ring locked"}, "but it failed: ring locked"),
        ("denied", None, "Denied by Ana"),
        ("expired", None, "Expired before it was confirmed"),
        ("executing", None, "running"),
    ],
)
def test_final_states(state: str, result: dict[str, Any] | None, expected: str) -> None:
    line = final_line(state, result, "Ana")
    assert line is not None and expected in line[0]
    card = final_card({**CONFIRMATION, "state": state}, owner="Ana", line=line, note="n")
    assert "actions" not in card
    assert expected in " ".join(card_texts(card))
    assert final_line("pending", None, "Ana") is None


def test_notification_cards_offer_the_topic_s_actions() -> None:
    card = notification_card(
        {
            "topic": "approval.requested",
            "text": "CAB approval apr_1 waits",
            "data": {"approval_id": "apr_1"},
        }
    )
    assert "CAB approval apr_1 waits" in card_texts(card)
    (action,) = card["actions"]
    assert action["type"] == "Action.Execute" and action["data"]["text"]
    plain = notification_card({"topic": "exception.expiring", "text": "x", "data": {}})
    assert "actions" not in plain
    paused = notification_card(
        {
            "topic": "rollout.paused",
            "text": "Rollout of firefox 132.0.0 paused in canary: install success 90 % "
            "(needs 98 %). Details: /rollout firefox 132.0.0 (ro_1)",
            "data": {"rollout_id": "ro_1"},
        }
    )
    (show,) = paused["actions"]
    assert show["data"]["text"] == "/rollout firefox 132.0.0"
