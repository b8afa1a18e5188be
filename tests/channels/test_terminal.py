"""The CLI channel's client (channels.terminal) against a fake gateway on 127.0.0.1.

The fake speaks the ``/cli/v1`` protocol as the gateway will: bearer token or 401, plain JSON
errors before a turn, the turn streamed as NDJSON line by line, confirmations decided once.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from channels import terminal, terminal_render
from channels.terminal import Target, TerminalError, locate

Json = dict[str, Any]

LIMIT = 4000
TABLE_REPLY = """Rollout of **google-chrome**:

| ring | devices | healthy |
|------|---------|---------|
| lab | 12 | 12 |
| pilot | 240 | 231 |
"""


def confirmation(cid: str = "c-7f3a") -> Json:
    return {
        "id": cid,
        "tool": "pause_rollout",
        "summary": "Pause the google-chrome rollout in ring pilot",
        "arguments": {"app": "google-chrome", "ring": "pilot", "reason": "crash reports"},
        "arguments_hash": "sha256:ab12cd",
        "expires_at": (datetime.now(UTC) + timedelta(minutes=5)).isoformat(),
        "state": "pending",
    }


NOTIFICATION = {
    "id": "n-1",
    "text": "Rollout 7 reached ring pilot",
    "created_at": "2025-06-01T12:00:00Z",
}


def done(reply: str, calls: list[Json], proposal: Json | None = None) -> Json:
    return {
        "type": "done",
        "result": {
            "reply": reply,
            "tool_calls": calls,
            "confirmation": proposal,
            "message_id": 41,
            "conversation_id": "conv-1",
        },
    }


def status_turn() -> list[Json]:
    call = {"call_id": "t1", "name": "rollout_status", "arguments": {"app": "google-chrome"}}
    return [
        {"type": "accepted", "message_id": 41, "conversation_id": "conv-1", "duplicate": False},
        {"type": "notification", **NOTIFICATION},
        {"type": "tool_call", **call},
        {"type": "thinking", "text": "an event type from the future"},
        {"type": "tool_result", **call, "status": "ok", "text": "2 rings"},
        {"type": "reply", "text": TABLE_REPLY},
        done(TABLE_REPLY, [{**call, "status": "ok", "text": "2 rings"}]),
    ]


def pause_turn(proposal: Json) -> list[Json]:
    call = {"call_id": "t2", "name": "pause_rollout", "arguments": proposal["arguments"]}
    text = "I can pause it; it needs your confirmation."
    result = {**call, "status": "confirmation_required", "text": "needs confirmation"}
    return [
        {"type": "accepted", "message_id": 42, "conversation_id": "conv-1", "duplicate": False},
        {"type": "tool_call", **call},
        {"type": "tool_result", **result},
        {"type": "confirmation", **proposal},
        {"type": "reply", "text": text},
        done(text, [result], proposal),
    ]


@dataclass
class FakeGateway:
    """The gateway's CLI routes, scripted by message text; records what it was sent."""

    token: str
    turns: dict[str, list[Json]] = field(default_factory=dict)
    """Events to stream for a message text (any other text gets an echo)."""
    refusals: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    """(status, code, message) to answer a message text with, before any turn."""
    pending: dict[str, Json] = field(default_factory=dict)
    """Confirmations awaiting a decision, by id."""
    action_status: str = "ok"
    """What a confirmed action reports."""
    drop_turns: int = 0
    """How many turn requests to answer by closing the connection."""
    requests: list[tuple[str, str, Json | None]] = field(default_factory=list)
    decided: dict[str, str] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/cli/v1/turns", self.turn)
        app.router.add_post("/cli/v1/confirmations/{id}", self.decide)
        app.router.add_get("/cli/v1/confirmations", self.list_confirmations)
        app.router.add_get("/cli/v1/notifications", self.notifications)
        app.router.add_get("/cli/v1/whoami", self.whoami)
        return app

    @staticmethod
    def error(status: int, code: str, message: str, **headers: str) -> web.Response:
        body = {"error": {"code": code, "message": message}}
        return web.json_response(body, status=status, headers=headers)

    async def authorized(self, request: web.Request) -> Json | web.Response | None:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path, body))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self.error(401, "unauthorized", "missing or invalid token")
        return body

    async def turn(self, request: web.Request) -> web.StreamResponse:
        body = await self.authorized(request)
        if isinstance(body, web.Response):
            return body
        if not (
            isinstance(body, dict)
            and isinstance(body.get("text"), str)
            and isinstance(body.get("conversation"), str)
            and re.fullmatch(r"[0-9a-f]{32}", str(body.get("event_id")))
        ):
            return self.error(400, "malformed", "text, conversation and event_id are required")
        if self.drop_turns:
            self.drop_turns -= 1
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        text = body["text"]
        if len(text) > LIMIT:
            return self.error(413, "too_large", f"message too large: at most {LIMIT} characters")
        if text in self.refusals:
            status, code, message = self.refusals[text]
            return self.error(
                status, code, message, **({"Retry-After": "7"} if status == 429 else {})
            )
        events = self.turns.get(text) or [
            {"type": "reply", "text": f"echo: {text}"},
            done(f"echo: {text}", []),
        ]
        for event in events:
            if event.get("type") == "confirmation":
                self.pending[event["id"]] = {k: v for k, v in event.items() if k != "type"}
        response = web.StreamResponse()
        response.content_type = "application/x-ndjson"
        await response.prepare(request)
        for event in events:
            await response.write(json.dumps(event).encode() + b"\n")
            await asyncio.sleep(0.005)
        await response.write_eof()
        return response

    async def decide(self, request: web.Request) -> web.Response:
        body = await self.authorized(request)
        if isinstance(body, web.Response):
            return body
        assert isinstance(body, dict)
        cid = request.match_info["id"]
        proposal = self.pending.get(cid)

        def answer(
            status: int, outcome: str, reason: str, result: Json | None = None
        ) -> web.Response:
            document = {
                "outcome": outcome,
                "reason": reason,
                "confirmation": proposal,
                "result": result,
            }
            return web.json_response(document, status=status)

        if cid == "someone-elses":
            return answer(403, "wrong_principal", "this confirmation was proposed to someone else")
        if proposal is None:
            return answer(404, "unknown", "no such confirmation")
        if cid in self.decided:
            return answer(409, "already_decided", f"already {self.decided[cid]}")
        if body.get("arguments_hash", proposal["arguments_hash"]) != proposal["arguments_hash"]:
            return answer(409, "arguments_changed", "the action changed since it was shown")
        if body["decision"] == "deny":
            self.decided[cid] = "denied"
            return answer(200, "denied", "denied by you")
        self.decided[cid] = "confirmed"
        text = "Paused rollout 7 in ring pilot." if self.action_status == "ok" else "Gate failed."
        return answer(
            200,
            "confirmed",
            "confirmed by you",
            {"status": self.action_status, "text": text, "data": {}},
        )

    async def list_confirmations(self, request: web.Request) -> web.Response:
        body = await self.authorized(request)
        if isinstance(body, web.Response):
            return body
        items = [c for cid, c in self.pending.items() if cid not in self.decided]
        return web.json_response({"items": items})

    async def notifications(self, request: web.Request) -> web.Response:
        body = await self.authorized(request)
        if isinstance(body, web.Response):
            return body
        return web.json_response({"items": [NOTIFICATION]})

    async def whoami(self, request: web.Request) -> web.Response:
        body = await self.authorized(request)
        if isinstance(body, web.Response):
            return body
        return web.json_response(
            {
                "principal": "ana",
                "roles": ["operator"],
                "channel": "cli",
                "tools": ["rollout_status"],
            }
        )


@pytest.fixture
def token() -> str:
    return "tok-" + uuid.uuid4().hex


@pytest.fixture
async def fake(token: str) -> AsyncIterator[tuple[FakeGateway, Target]]:
    gateway = FakeGateway(token=token)
    gateway.turns["status chrome"] = status_turn()
    gateway.turns["pause chrome"] = pause_turn(confirmation())
    runner = web.AppRunner(gateway.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield gateway, Target(url=f"http://{host}:{port}", token=token)
    finally:
        await runner.cleanup()


Fake = tuple[FakeGateway, Target]


def turn_texts(gateway: FakeGateway) -> list[str]:
    return [body["text"] for _, path, body in gateway.requests if path == "/cli/v1/turns" and body]


async def test_ask_prints_notifications_trace_and_a_table(fake: Fake) -> None:
    _, target = fake
    out, err = io.StringIO(), io.StringIO()

    code = await terminal.ask(target, "status chrome", json_output=False, out=out, err=err)

    text = out.getvalue()
    assert code == 0, err.getvalue()
    assert err.getvalue() == ""
    assert "\x1b" not in text
    assert "Rollout 7 reached ring pilot" in text
    assert "→ rollout_status(app=google-chrome)" in text
    assert text.index("Rollout 7 reached") < text.index("→ rollout_status")
    assert "|------" not in text
    assert re.search(r"ring\s+devices\s+healthy", text)
    assert re.search(r"pilot\s+240\s+231", text)
    assert "─" in text
    assert "an event type from the future" not in text
    assert all(len(line) <= 100 and line == line.rstrip() for line in text.splitlines())


async def test_ask_json_prints_one_document_the_done_result(fake: Fake) -> None:
    _, target = fake
    out, err = io.StringIO(), io.StringIO()

    code = await terminal.ask(target, "status chrome", json_output=True, out=out, err=err)

    assert code == 0
    expected = {**status_turn()[-1]["result"], "notifications": [NOTIFICATION]}
    assert json.loads(out.getvalue()) == expected
    assert err.getvalue() == ""


async def test_ask_shows_a_proposed_action_with_its_id_and_commands(fake: Fake) -> None:
    _, target = fake
    out = io.StringIO()

    code = await terminal.ask(target, "pause chrome", json_output=False, out=out)

    text = out.getvalue()
    assert code == 0
    assert "Pause the google-chrome rollout in ring pilot" in text
    assert re.search(r'ring\s+"pilot"', text)
    assert re.search(r'reason\s+"crash reports"', text)
    assert "c-7f3a" in text
    assert re.search(r"UTC \(in [45] min\)", text)
    assert "confirm with: goodbot confirm c-7f3a   (or deny with: goodbot deny c-7f3a)" in text
    assert text.index("needs your confirmation") < text.index("confirmation required")


async def test_ask_json_carries_the_proposal(fake: Fake) -> None:
    _, target = fake
    out = io.StringIO()

    assert await terminal.ask(target, "pause chrome", json_output=True, out=out) == 0

    document = json.loads(out.getvalue())
    assert document["confirmation"]["id"] == "c-7f3a"
    assert document["notifications"] == []


@pytest.mark.parametrize(
    ("status", "code", "message", "exit_code"),
    [
        (400, "malformed", "conversation name too long", 2),
        (403, "forbidden", "policy denies rollout.pause to ana: not on call", 3),
        (429, "rate_limited", "too many messages", 4),
        (503, "unavailable", "the gateway is shutting down", 5),
    ],
)
@pytest.mark.parametrize("json_output", [False, True])
async def test_refusals_go_to_stderr_with_their_exit_code(
    fake: Fake, status: int, code: str, message: str, exit_code: int, json_output: bool
) -> None:
    gateway, target = fake
    gateway.refusals["do it"] = (status, code, message)
    out, err = io.StringIO(), io.StringIO()

    assert (
        await terminal.ask(target, "do it", json_output=json_output, out=out, err=err) == exit_code
    )

    assert out.getvalue() == ""
    assert message in err.getvalue()
    if status == 429:
        assert "try again in 7 s" in err.getvalue()


async def test_too_large_names_the_limit(fake: Fake) -> None:
    _, target = fake
    err = io.StringIO()

    code = await terminal.ask(
        target, "x" * (LIMIT + 1), json_output=False, out=io.StringIO(), err=err
    )

    assert code == 2
    assert f"at most {LIMIT} characters" in err.getvalue()


async def test_a_bad_token_exits_3_without_showing_it(fake: Fake) -> None:
    gateway, target = fake
    wrong = Target(url=target.url, token="wrong-" + uuid.uuid4().hex)
    out, err = io.StringIO(), io.StringIO()

    assert await terminal.ask(wrong, "status chrome", json_output=False, out=out, err=err) == 3

    assert "missing or invalid token" in err.getvalue()
    assert wrong.token not in err.getvalue() + out.getvalue()
    assert turn_texts(gateway) == ["status chrome"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_gateway_exits_5() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    err = io.StringIO()

    code = await terminal.ask(Target(url, "t"), "hi", json_output=True, out=io.StringIO(), err=err)

    assert code == 5
    assert f"cannot reach the gateway at {url}" in err.getvalue()


async def test_a_turn_is_resent_once_with_the_same_event_id(fake: Fake) -> None:
    gateway, target = fake
    gateway.drop_turns = 1
    out = io.StringIO()

    assert await terminal.ask(target, "hello", json_output=True, out=out) == 0

    ids = [
        body["event_id"] for _, path, body in gateway.requests if path == "/cli/v1/turns" and body
    ]
    assert len(ids) == 2
    assert ids[0] == ids[1]
    assert json.loads(out.getvalue())["reply"] == "echo: hello"


async def test_a_turn_is_not_resent_twice(fake: Fake) -> None:
    gateway, target = fake
    gateway.drop_turns = 2
    err = io.StringIO()

    assert await terminal.ask(target, "hello", json_output=True, out=io.StringIO(), err=err) == 5

    assert len(turn_texts(gateway)) == 2
    assert "cannot reach the gateway" in err.getvalue()


async def test_each_message_gets_its_own_event_id(fake: Fake) -> None:
    gateway, target = fake
    for _ in range(2):
        assert await terminal.ask(target, "hello", json_output=True, out=io.StringIO()) == 0
    ids = {body["event_id"] for _, _, body in gateway.requests if body}
    assert len(ids) == 2


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (
            [{"type": "error", "error": {"code": "model", "message": "the model timed out"}}],
            "the model timed out",
        ),
        ([{"type": "reply", "text": "half an answer"}], "without a result"),
    ],
)
async def test_a_failed_or_truncated_turn_exits_5(
    fake: Fake, events: list[Json], message: str
) -> None:
    gateway, target = fake
    gateway.turns["hi"] = events
    out, err = io.StringIO(), io.StringIO()

    assert await terminal.ask(target, "hi", json_output=True, out=out, err=err) == 5

    assert out.getvalue() == ""
    assert message in err.getvalue()


async def test_a_server_that_is_not_a_gateway_exits_5(fake: Fake) -> None:
    _, target = fake
    err = io.StringIO()
    elsewhere = Target(url=target.url + "/nowhere", token=target.token)

    assert await terminal.ask(elsewhere, "hi", json_output=False, out=io.StringIO(), err=err) == 5

    assert "HTTP 404 (is this a goodbot gateway" in err.getvalue()


async def test_chat_confirms_with_the_shown_hash(fake: Fake) -> None:
    gateway, target = fake
    stdin = io.StringIO("status chrome\npause chrome\ny\n/quit\nnever sent\n")
    out, err = io.StringIO(), io.StringIO()

    assert await terminal.chat(target, stdin=stdin, out=out, err=err) == 0

    assert turn_texts(gateway) == ["status chrome", "pause chrome"]
    decisions = [
        (path, body)
        for method, path, body in gateway.requests
        if path.startswith("/cli/v1/confirmations/")
    ]
    assert decisions == [
        ("/cli/v1/confirmations/c-7f3a", {"decision": "confirm", "arguments_hash": "sha256:ab12cd"})
    ]
    text = out.getvalue()
    assert re.search(r"pilot\s+240\s+231", text)
    assert "Confirm? [y/N] y\n" in text
    assert "confirmed and done" in text
    assert "Paused rollout 7 in ring pilot." in text
    assert "goodbot confirm c-7f3a" not in text
    assert err.getvalue() == ""


@pytest.mark.parametrize("answer", ["n", "no", "", "maybe"])
async def test_chat_denies_unless_told_yes(fake: Fake, answer: str) -> None:
    gateway, target = fake
    out = io.StringIO()

    code = await terminal.chat(target, stdin=io.StringIO(f"pause chrome\n{answer}\n"), out=out)

    assert code == 0
    assert gateway.decided == {"c-7f3a": "denied"}
    assert "denied" in out.getvalue()
    assert "Paused rollout" not in out.getvalue()


async def test_chat_sends_other_slash_commands_and_ends_at_eof(fake: Fake) -> None:
    gateway, target = fake
    out = io.StringIO()

    assert await terminal.chat(target, stdin=io.StringIO("/help\n\n/exit\n"), out=out) == 0

    assert turn_texts(gateway) == ["/help"]
    assert "echo: /help" in out.getvalue()


async def test_chat_keeps_going_after_a_refusal(fake: Fake) -> None:
    gateway, target = fake
    gateway.refusals["pause everything"] = (403, "forbidden", "policy denies rollout.pause")
    out, err = io.StringIO(), io.StringIO()

    code = await terminal.chat(
        target, stdin=io.StringIO("pause everything\nhello\n"), out=out, err=err
    )

    assert code == 0
    assert "policy denies rollout.pause" in err.getvalue()
    assert "echo: hello" in out.getvalue()


async def test_chat_with_a_bad_token_exits_3(fake: Fake) -> None:
    _, target = fake
    wrong = Target(url=target.url, token="nope")
    err = io.StringIO()

    assert await terminal.chat(wrong, stdin=io.StringIO("hello\n"), out=io.StringIO(), err=err) == 3

    assert "missing or invalid token" in err.getvalue()


async def test_confirm_runs_the_action_and_prints_its_result(fake: Fake) -> None:
    gateway, target = fake
    gateway.pending["c-7f3a"] = confirmation()
    out = io.StringIO()

    assert await terminal.decide(target, "c-7f3a", "confirm", out=out) == 0

    assert "Paused rollout 7 in ring pilot." in out.getvalue()
    assert gateway.requests[-1][2] == {"decision": "confirm"}


async def test_confirm_of_a_failing_action_exits_1(fake: Fake) -> None:
    gateway, target = fake
    gateway.pending["c-7f3a"] = confirmation()
    gateway.action_status = "error"
    out = io.StringIO()

    assert await terminal.decide(target, "c-7f3a", "confirm", out=out) == 1

    assert "action failed" in out.getvalue()
    assert "Gate failed." in out.getvalue()


async def test_deny_exits_0(fake: Fake) -> None:
    gateway, target = fake
    gateway.pending["c-7f3a"] = confirmation()
    out = io.StringIO()

    assert await terminal.decide(target, "c-7f3a", "deny", out=out) == 0

    assert "denied" in out.getvalue()
    assert gateway.decided == {"c-7f3a": "denied"}


@pytest.mark.parametrize(
    ("cid", "decided", "exit_code", "message"),
    [
        ("c-404", False, 2, "no such confirmation"),
        ("someone-elses", False, 3, "proposed to someone else"),
        ("c-7f3a", True, 1, "already denied"),
    ],
)
async def test_a_decision_that_cannot_be_made(
    fake: Fake, cid: str, decided: bool, exit_code: int, message: str
) -> None:
    gateway, target = fake
    gateway.pending["c-7f3a"] = confirmation()
    if decided:
        gateway.decided["c-7f3a"] = "denied"
    out, err = io.StringIO(), io.StringIO()

    assert await terminal.decide(target, cid, "confirm", out=out, err=err) == exit_code

    assert out.getvalue() == ""
    assert message in err.getvalue()


async def test_a_changed_action_is_refused(fake: Fake) -> None:
    gateway, target = fake
    gateway.pending["c-7f3a"] = confirmation()
    out = io.StringIO()

    code = await terminal.decide(
        target, "c-7f3a", "confirm", arguments_hash="sha256:other", json_output=True, out=out
    )

    assert code == 1
    assert json.loads(out.getvalue())["outcome"] == "arguments_changed"
    assert gateway.decided == {}


async def test_a_malformed_confirmation_id_is_not_sent(fake: Fake) -> None:
    gateway, target = fake
    err = io.StringIO()

    assert await terminal.decide(target, "../whoami", "confirm", out=io.StringIO(), err=err) == 2

    assert gateway.requests == []
    assert "not a confirmation id" in err.getvalue()


async def test_notifications_lists_items_and_pending_confirmations(fake: Fake) -> None:
    gateway, target = fake
    gateway.pending["c-7f3a"] = confirmation()
    out = io.StringIO()

    assert await terminal.notifications(target, out=out) == 0

    text = out.getvalue()
    assert "Rollout 7 reached ring pilot" in text
    assert "goodbot confirm c-7f3a" in text
    json_out = io.StringIO()
    assert await terminal.notifications(target, json_output=True, out=json_out) == 0
    assert json.loads(json_out.getvalue()) == {
        "items": [NOTIFICATION],
        "confirmations": [gateway.pending["c-7f3a"]],
    }


async def test_whoami(fake: Fake) -> None:
    _, target = fake
    out = io.StringIO()

    assert await terminal.whoami(target, out=out) == 0

    assert "ana at http://127.0.0.1" in out.getvalue()
    assert "roles: operator" in out.getvalue()


async def test_the_token_never_shows(fake: Fake, caplog: pytest.LogCaptureFixture) -> None:
    gateway, target = fake
    caplog.set_level(logging.DEBUG)
    gateway.drop_turns = 1
    gateway.pending["c-7f3a"] = confirmation()
    out, err = io.StringIO(), io.StringIO()

    await terminal.ask(target, "status chrome", json_output=False, out=out, err=err)
    await terminal.ask(target, "pause chrome", json_output=True, out=out, err=err)
    await terminal.chat(target, stdin=io.StringIO("pause chrome\ny\n"), out=out, err=err)
    await terminal.decide(target, "c-7f3a", "deny", out=out, err=err)
    await terminal.notifications(target, out=out, err=err)
    await terminal.whoami(target, json_output=True, out=out, err=err)

    assert target.token not in repr(target)
    assert target.token not in str(target)
    assert target.token not in out.getvalue() + err.getvalue()
    assert target.token not in caplog.text
    assert all(target.token not in str(record.__dict__) for record in caplog.records)


def write_data_dir(base: Path, url: str = "http://127.0.0.1:8080") -> None:
    base.mkdir(parents=True, exist_ok=True)
    (base / "gateway.json").write_text(json.dumps({"url": url + "/", "pid": 4242}))
    (base / "cli-token").write_text("tok-local\n")
    (base / "cli-tokens").mkdir()
    (base / "cli-tokens" / "ben").write_text("tok-ben")


def test_locate_reads_the_data_dir(tmp_path: Path) -> None:
    write_data_dir(tmp_path)

    assert locate(tmp_path, None, None) == Target("http://127.0.0.1:8080", "tok-local")
    assert locate(tmp_path, None, None).data_dir == tmp_path
    assert locate(tmp_path, None, None, as_principal="ben") == Target(
        "http://127.0.0.1:8080", "tok-ben"
    )


def test_flags_win(tmp_path: Path) -> None:
    write_data_dir(tmp_path)

    assert locate(tmp_path, "https://gw.example/", "tok-flag") == Target(
        "https://gw.example", "tok-flag"
    )
    assert locate(tmp_path, "https://gw.example", None).token == "tok-local"
    assert locate(tmp_path, None, "tok-flag", as_principal="ben").token == "tok-flag"


def test_locate_defaults_to_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_data_dir(tmp_path / "elsewhere", "http://10.0.0.5:9000")
    monkeypatch.setenv("GOODBOT_DATA_DIR", str(tmp_path / "elsewhere"))

    assert locate(None, None, None).url == "http://10.0.0.5:9000"


def test_locate_defaults_to_dot_goodbot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOODBOT_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)

    with pytest.raises(
        TerminalError, match=r"no gateway found in \.goodbot: start one with `goodbot serve`"
    ):
        locate(None, None, None)


def test_locate_without_a_token_file(tmp_path: Path) -> None:
    write_data_dir(tmp_path)

    with pytest.raises(TerminalError, match="no CLI token for cleo") as caught:
        locate(tmp_path, None, None, as_principal="cleo")
    assert caught.value.exit_code == 3


@pytest.mark.parametrize(
    ("gateway", "as_principal", "message"),
    [
        ("ftp://gw", None, "not a gateway URL"),
        (None, "../cli-token", "not a principal name"),
        (None, "ben/../../x", "not a principal name"),
    ],
)
def test_locate_refuses_bad_input(
    tmp_path: Path, gateway: str | None, as_principal: str | None, message: str
) -> None:
    write_data_dir(tmp_path)

    with pytest.raises(TerminalError, match=message) as caught:
        locate(tmp_path, gateway, None, as_principal)
    assert caught.value.exit_code == 2


def test_a_broken_gateway_json(tmp_path: Path) -> None:
    write_data_dir(tmp_path)
    (tmp_path / "gateway.json").write_text("{not json")

    with pytest.raises(TerminalError, match=r"gateway\.json is not JSON"):
        locate(tmp_path, None, None)


async def test_text_from_the_gateway_cannot_drive_the_terminal(fake: Fake) -> None:
    gateway, target = fake
    proposal = {**confirmation(), "summary": "Pause \u202eniarts\u202c chrome\x1b]0;pwned\x07"}
    gateway.turns["sneaky"] = [
        {"type": "reply", "text": "ok\x1b[2J\rdone"},
        *pause_turn(proposal)[3:],
    ]
    out = io.StringIO()

    assert await terminal.ask(target, "sneaky", json_output=False, out=out) == 0

    text = out.getvalue()
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", text)
    assert "ok\ufffd[2J\ufffddone" in text
    assert "confirm with: goodbot confirm c-7f3a" in text


async def test_ctrl_c_cancels_the_running_turn_only() -> None:
    before = signal.getsignal(signal.SIGINT)
    asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGINT)

    assert await terminal_render.until_interrupted(asyncio.sleep(10), enabled=True) is False
    assert await terminal_render.until_interrupted(asyncio.sleep(0), enabled=True) is True
    assert signal.getsignal(signal.SIGINT) is before


def test_expiry_reads_as_a_time_and_a_countdown() -> None:
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

    assert terminal_render.describe_expiry("2025-06-01T12:04:00Z", now) == (
        "2025-06-01 12:04:00 UTC (in 4 min)"
    )
    assert terminal_render.describe_expiry("2025-06-01T11:59:00+00:00", now).endswith("(expired)")
    assert terminal_render.describe_expiry("soon", now) == "soon"


def test_target_refuses_a_token_that_could_inject_headers() -> None:
    with pytest.raises(ValueError, match="malformed") as caught:
        Target("http://127.0.0.1:1", "tok\r\nX-Admin: 1")
    assert "X-Admin" not in str(caught.value)
