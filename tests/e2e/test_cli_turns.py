"""CLI end to end with the rules route: the demo questions, refusals, policy, audit, faults."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from channels.base import InboundMessage, RefusedError
from gateway.admin import verify
from tests.demo import DemoControlPlane
from tests.e2e.harness import GatewayUnderTest, running_gateway


async def test_what_is_pending_my_approval(gw: GatewayUnderTest) -> None:
    turn = await gw.turn("ana", "what is pending my approval?")
    assert turn.status == 200
    assert [c["name"] for c in turn.result["tool_calls"]] == ["pending_approvals"]
    assert "zoom" in turn.reply and "crowdstrike-falcon" in turn.reply
    assert turn.of("accepted")[0]["duplicate"] is False


async def test_drift_for_a_demo_team(gw: GatewayUnderTest) -> None:
    turn = await gw.turn("ana", "show drift for the web team")
    (call,) = turn.result["tool_calls"]
    assert call["name"] == "scope_drift" and call["status"] == "ok", call
    assert "missing_required" in turn.reply or "missing required" in turn.reply.lower()


async def test_status_of_a_demo_rollout(gw: GatewayUnderTest) -> None:
    turn = await gw.turn("ana", "how is the firefox 132 rollout doing?")
    (call,) = turn.result["tool_calls"]
    assert call["name"] == "rollout_status" and call["status"] == "ok", call
    assert "Paused" in turn.reply or "paused" in turn.reply
    assert "install_success_rate" in turn.reply


async def test_slash_commands_bypass_the_route(gw: GatewayUnderTest) -> None:
    help_turn = await gw.turn("vera", "/help")
    assert "/pending" in help_turn.reply
    assert "promote" not in help_turn.reply.lower()  # vera (viewer) is offered no changes
    who = await gw.turn("vera", "/whoami")
    assert "vera" in who.reply and "viewer" in who.reply
    drift = await gw.turn("ana", "/drift engineering")
    assert drift.result["tool_calls"][0]["name"] == "scope_drift"
    unknown = await gw.turn("ana", "/frobnicate")
    assert "/help" in unknown.reply


async def test_not_understood_offers_help(gw: GatewayUnderTest) -> None:
    turn = await gw.turn("ana", "sing me a song about tulips")
    assert turn.result["tool_calls"] == []
    assert "/help" in turn.reply


@pytest.mark.parametrize(
    ("principal", "text", "status", "rule"),
    [
        ("ana", "promote google-chrome to pilot", "confirmation_required", "roles.operator"),
        ("vera", "promote google-chrome to pilot", "denied", "default:deny"),  # no rule grants
        ("vera", "what is pending my approval", "denied", "default:deny"),
        ("li", "what is pending my approval", "ok", "roles.approver"),
        ("sam", "recent events for mac-00001", "denied", "default:deny"),
        ("aud", "recent events for mac-00001", "ok", "roles.auditor"),
        ("omar", "show drift for engineering", "ok", "roles.viewer"),
    ],
)
async def test_policy_table(
    gw: GatewayUnderTest, principal: str, text: str, status: str, rule: str
) -> None:
    turn = await gw.turn(principal, text)
    (call,) = turn.result["tool_calls"]
    assert call["status"] == status, call
    records = [line async for line in gw.gateway.store.export_audit() if call["call_id"] in line]
    assert len(records) == 1 and rule in records[0]
    if status == "denied":
        assert '"tool.denied"' in records[0]
        assert "Not allowed" in call["text"]


async def test_bad_and_missing_tokens_are_refused_and_nothing_is_stored(
    gw: GatewayUnderTest,
) -> None:
    missing = await gw.turn(None, "what is pending my approval")
    forged = await gw.turn(None, "what is pending my approval", token="gbc_forged")
    assert (missing.status, forged.status) == (401, 401)
    async with gw.gateway.store.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT count(*) FROM messages"))).scalar_one()
    assert stored == 0


async def test_oversized_and_malformed_messages(gw: GatewayUnderTest) -> None:
    big = await gw.turn("ana", "x" * 9000)
    assert big.status == 413
    assert "8192" in big.error["message"]  # type: ignore[index]
    bad = await gw.turn("ana", "", body={"text": 5})
    assert bad.status == 400
    extra = await gw.turn("ana", "", body={"text": "hi", "colour": "red"})
    assert extra.status == 400 and "colour" in extra.error["message"]  # type: ignore[index]
    async with gw.gateway.store.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT count(*) FROM messages"))).scalar_one()
    assert stored == 0
    refused = [line async for line in gw.gateway.store.export_audit() if "message.refused" in line]
    assert len(refused) == 1 and "limits.size" in refused[0]


async def test_a_retried_delivery_is_answered_once(gw: GatewayUnderTest) -> None:
    first = await gw.turn("ana", "show drift for engineering", event_id="evt-1")
    again = await gw.turn("ana", "show drift for engineering", event_id="evt-1")
    assert again.of("accepted")[0]["duplicate"] is True
    assert again.reply == first.reply
    async with gw.gateway.store.engine.connect() as conn:
        inbound = (
            await conn.execute(text("SELECT count(*) FROM messages WHERE direction = 'in'"))
        ).scalar_one()
    assert inbound == 1


async def test_a_pasted_secret_reaches_neither_the_audit_nor_the_log(
    gw: GatewayUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    caplog.set_level("DEBUG")
    turn = await gw.turn("ana", f"my token is {secret} - show drift for engineering")
    assert turn.status == 200
    audit = "".join([line async for line in gw.gateway.store.export_audit()])
    assert "REDACTED" in audit
    assert secret not in audit
    assert secret not in caplog.text
    async with gw.gateway.store.engine.connect() as conn:
        texts = (await conn.execute(text("SELECT text FROM messages"))).scalars().all()
    assert all(secret not in t for t in texts)


async def test_audit_verify_and_tamper_detection(
    gw: GatewayUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    await gw.turn("ana", "what is pending my approval?")
    settings = gw.gateway.settings
    assert await verify(settings) == 0
    assert "audit chain OK" in capsys.readouterr().out
    async with gw.gateway.store.engine.begin() as conn:
        await conn.execute(text("UPDATE audit_records SET principal_id = 'mallory' WHERE seq = 2"))
    assert await verify(settings) == 1
    assert "BROKEN at seq 2" in capsys.readouterr().out


async def test_policy_reload_refuses_an_invalid_file_and_keeps_the_last(
    gw: GatewayUnderTest,
) -> None:
    source = gw.gateway.policy
    before = source.current.revision
    good = source.path.read_text()
    source.path.write_text(
        good.replace("roles:\n", "roles:\n  broken: {grants: [Not An Action]}\n", 1)
    )
    assert source.reload_if_changed() is False
    assert source.last_error is not None and "broken" in source.last_error.where
    assert source.current.revision == before
    _, body = await gw.get("/readyz")
    assert body["policy"] == before and "broken" in body["policy_refused"]["where"]
    turn = await gw.turn("ana", "what is pending my approval?")
    assert turn.result["tool_calls"][0]["status"] == "ok"  # the old policy still works
    # A valid edit takes effect: vera becomes an approver.
    source.path.write_text(
        good.replace("  vera:\n    roles:\n    - viewer", "  vera:\n    roles:\n    - approver")
    )
    assert source.reload_if_changed() is True
    turn = await gw.turn("vera", "what is pending my approval?")
    assert turn.result["tool_calls"][0]["status"] == "ok"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_control_plane_down_gets_a_clear_answer(
    demo_cp: DemoControlPlane, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    async with running_gateway(tmp_path / "gw", url, demo_cp.gateway_token) as gw:
        turn = await gw.turn("ana", "show drift for engineering")
        assert turn.status == 200
        (call,) = turn.result["tool_calls"]
        assert call["status"] == "error"
        assert "not available" in call["text"] or "not answering" in call["text"]
        async with gw.gateway.store.engine.connect() as conn:
            status = (
                await conn.execute(text("SELECT status FROM messages WHERE direction = 'in'"))
            ).scalar_one()
        assert status == "done"
        ready, body = await gw.get("/readyz")
        assert ready == 503 and body["checks"]["controlplane"].startswith("failing")


async def test_health_and_metrics(gw: GatewayUnderTest) -> None:
    await gw.turn("ana", "show drift for engineering")
    assert (await gw.get("/healthz"))[0] == 200
    ready, body = await gw.get("/readyz")
    assert ready == 200 and body["checks"] == {"database": "ok", "controlplane": "ok"}
    status, metrics = await gw.get("/metrics")
    assert status == 200
    assert 'goodbot_messages_total{channel="cli",outcome="accepted"} 1.0' in metrics
    assert 'goodbot_tool_seconds_count{status="ok",tool="scope_drift"} 1.0' in metrics


async def test_a_busy_database_is_waited_for_and_nothing_is_lost(gw: GatewayUnderTest) -> None:
    """Another process holds SQLite's write lock while a message arrives: the message waits
    (busy timeout) instead of failing, and is stored and answered once the lock is released."""
    database = gw.data_dir / "gateway.db"
    assert database.exists()
    other = sqlite3.connect(database, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        turn = asyncio.create_task(gw.turn("ana", "show drift for engineering"))
        await asyncio.sleep(0.5)
        assert not turn.done()  # held up by the lock, not failed
        other.execute("COMMIT")
    finally:
        other.close()
    answered = await turn
    assert answered.status == 200 and answered.result["tool_calls"][0]["status"] == "ok"
    history = await gw.gateway.store.history(answered.result["conversation_id"])
    assert [m.direction for m in history] == ["in", "out"]


async def test_an_unknown_sender_is_denied_and_audited(gw: GatewayUnderTest) -> None:
    """A channel that verified a sender the policy does not know (say, a valid Teams user
    who is not a principal) gets a refusal; the attempt is audited, the text is not stored."""
    stranger = InboundMessage("cli", "sha256:" + "0" * 64, "evt-x", "cli:x:default", "hello")
    with pytest.raises(RefusedError) as refused:
        await gw.gateway.turns.admit(stranger)
    assert refused.value.status == 403 and refused.value.code == "unknown_sender"
    (record,) = [line async for line in gw.gateway.store.export_audit() if "evt-x" in line]
    assert "default:unknown-sender" in record and "hello" not in record
