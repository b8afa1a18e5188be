"""Fuzzing the channels at the edge, over a real gateway: CLI requests, Slack events, actions
and commands (signed, so they get past verification), MCP JSON-RPC requests.

No request gets a 5xx, and nothing is half stored: once the turns settle, every stored inbound
message is ``done`` or ``failed`` and each ``done`` one has its reply.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import text

from gateway.mcp_serve import mcp_http
from gateway.settings import SlackSettings
from tests.demo import DemoControlPlane
from tests.e2e.harness import GatewayUnderTest, running_gateway
from tests.e2e.test_slack import ANA, SECRET, slack_policy
from tests.fakes.slack_api import TEAM, FakeSlack, fake_slack
from tests.security.fuzzing import JSON, fuzz_settings, shaped

T = TypeVar("T")
WORDS = [
    "what is pending my approval?",
    "promote google-chrome to pilot",
    "pause firefox",
    "/approve cf_x",
    "/deny",
    "/drift",
    "/rollout zoom 6",
    "why is dev_000001 non-compliant?",
    "\u202e",
    "\x00",
    "é" * 3,
]
TEXTS = st.text(max_size=60) | st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(
    " ".join
)


@pytest.fixture
async def fuzzed(
    shared_demo_cp: DemoControlPlane, tmp_path: Path
) -> AsyncIterator[tuple[GatewayUnderTest, FakeSlack]]:
    """A gateway with CLI, Slack and MCP over the shared control plane (fuzzed requests only
    propose, never confirm, so it stays unchanged), with no message rate limit."""
    data = tmp_path / "gw"
    slack_policy(data)
    policy_file = data / "policy.yaml"
    document = yaml.safe_load(policy_file.read_text())
    document["defaults"]["rate_limit_per_minute"] = 100_000
    policy_file.write_text(yaml.safe_dump(document, sort_keys=False))
    async with fake_slack() as slack_api:
        slack = SlackSettings.model_validate(
            {"signing_secret": SECRET, "bot_token": "xoxb-test", "api_base_url": slack_api.url}
        )
        async with running_gateway(
            data, shared_demo_cp.url, shared_demo_cp.gateway_token, slack=slack
        ) as gw:
            # Fuzzed requests without a valid token would soon block the address (429).
            gw.gateway.turns.sign_in_failures.max_failures = 10**9
            yield gw, slack_api


async def hypothesis_in_thread[T](prop: Callable[[Callable[[Awaitable[T]], T]], None]) -> None:
    """Run a hypothesis property in a worker thread; it awaits on this loop through ``call``."""
    loop = asyncio.get_running_loop()

    def call(work: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, loop).result(timeout=60)  # type: ignore[arg-type]

    await asyncio.to_thread(prop, call)


async def settled(gw: GatewayUnderTest, seconds: float = 30.0) -> None:
    """Wait for every inbound message to finish, then check each done one has its reply."""
    deadline = time.monotonic() + seconds
    while True:
        async with gw.gateway.store.engine.connect() as conn:
            open_ = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM messages WHERE direction = 'in'"
                        " AND status NOT IN ('done', 'failed')"
                    )
                )
            ).scalar_one()
            unanswered = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM messages m WHERE m.direction = 'in'"
                        " AND m.status = 'done' AND NOT EXISTS (SELECT 1 FROM messages r"
                        " WHERE r.direction = 'out' AND r.conversation_id = m.conversation_id"
                        " AND r.id > m.id)"
                    )
                )
            ).scalar_one()
        if open_ == 0:
            assert unanswered == 0
            return
        assert time.monotonic() < deadline, f"{open_} message(s) never finished"
        await asyncio.sleep(0.1)


CLI_BODIES = (
    shaped({"text": "what is pending my approval?", "conversation": "c1", "event_id": "e1"})
    | st.builds(
        lambda t, c: {"text": t, "conversation": c},
        st.lists(st.sampled_from(WORDS[:8]), min_size=1, max_size=3).map(" ".join),
        st.sampled_from(["default", "c1", "c2"]),
    )
    | st.builds(
        lambda t, c: {"text": t, "conversation": c},
        st.lists(st.sampled_from(WORDS[:8]), min_size=1, max_size=3).map(" ".join),
        st.sampled_from(["default", "c1", "c2"]),
    )
    | st.builds(
        lambda t, c, e: {"text": t, "conversation": c, "event_id": e},
        TEXTS,
        st.sampled_from(["default", "c1", "a" * 64, "a" * 65, "../x", ""]),
        st.text(max_size=8) | st.sampled_from(["e1", "e2"]),
    )
    | JSON
)


async def test_cli_requests(fuzzed: tuple[GatewayUnderTest, FakeSlack]) -> None:
    gw, _ = fuzzed
    token = gw.token("ana")

    async def send(path: str, raw: bytes, auth: str | None) -> int:
        headers = {"Content-Type": "application/json"}
        if auth is not None:
            headers["Authorization"] = auth
        async with gw.http.post(f"{gw.url}{path}", data=raw, headers=headers) as r:
            body = await r.read()
            if r.status == 200 and path.endswith("/turns"):
                events = [json.loads(line) for line in body.splitlines() if line.strip()]
                assert events[-1]["type"] in ("done", "error"), events
            return r.status

    @given(
        path=st.sampled_from(["/cli/v1/turns"] * 6 + ["/cli/v1/confirmations/cf_x"])
        | st.text(alphabet="abcdef_%.", max_size=12).map(lambda p: "/cli/v1/confirmations/" + p),
        body=CLI_BODIES.map(lambda b: json.dumps(b).encode()) | st.binary(max_size=60),
        auth=st.sampled_from([f"Bearer {token}"] * 8 + [f"bearer  {token} ", "Bearer", None]),
    )
    @fuzz_settings(120)
    def never_5xx(call: Callable[[Awaitable[int]], int], path: str, body: bytes, auth: Any) -> None:
        status = call(send(path, body, auth))
        assert status < 500, (path, body, auth)

    await hypothesis_in_thread(lambda call: never_5xx(call))
    await settled(gw)


def _event(text_: Any, user: Any, kind: Any, extra: dict[str, Any]) -> dict[str, Any]:
    inner = {"type": kind, "user": user, "text": text_, "ts": "1700000001.000200", "team": TEAM}
    inner |= {"channel": "D0000ANA", "channel_type": "im"} | extra
    return {
        "token": "legacy",
        "team_id": TEAM,
        "type": "event_callback",
        "event_id": f"Ev{abs(hash((str(text_), str(user), str(extra)))) % 10**9}",
        "event": inner,
    }


SLACK_JSON = st.builds(
    _event,
    TEXTS | JSON,
    st.sampled_from([ANA, "UNOBODY", ""]) | JSON,
    st.sampled_from(["message", "app_mention", "reaction_added"]) | JSON,
    st.dictionaries(
        st.sampled_from(["thread_ts", "subtype", "bot_id", "channel"]), JSON, max_size=2
    ),
) | shaped({"type": "event_callback", "team_id": TEAM, "event": {"type": "message"}})
SLACK_FORM = st.builds(
    lambda payload: urllib.parse.urlencode({"payload": json.dumps(payload)}),
    shaped(
        {
            "type": "block_actions",
            "team": {"id": TEAM},
            "user": {"id": ANA, "team_id": TEAM},
            "actions": [{"action_id": "goodbot_confirm", "value": "cf_x:abc", "type": "button"}],
            "channel": {"id": "D0000ANA"},
            "message": {"ts": "1.2", "blocks": []},
            "container": {"message_ts": "1.2", "channel_id": "D0000ANA"},
        }
    ),
) | st.builds(
    lambda t, user, trig: urllib.parse.urlencode(
        {"command": "/goodbot", "text": t, "team_id": TEAM, "user_id": user, "trigger_id": trig}
    ),
    TEXTS,
    st.sampled_from([ANA, "UNOBODY"]),
    st.text(alphabet="0123456789.", min_size=1, max_size=8),
)


async def test_slack_events_actions_and_commands(
    fuzzed: tuple[GatewayUnderTest, FakeSlack],
) -> None:
    gw, _ = fuzzed

    async def send(body: str, form: bool) -> int:
        ts = str(int(time.time()))
        signature = SignatureVerifier(SECRET).generate_signature(timestamp=ts, body=body)
        assert signature is not None
        headers = {
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded" if form else "application/json",
        }
        async with gw.http.post(f"{gw.url}/slack/events", data=body, headers=headers) as r:
            await r.read()
            return r.status

    @given(
        st.tuples(SLACK_JSON.map(json.dumps), st.just(False))
        | st.tuples(SLACK_FORM, st.just(True))
        | st.tuples(st.text(max_size=40), st.booleans())
    )
    @fuzz_settings(120)
    def never_5xx(call: Callable[[Awaitable[int]], int], case: tuple[str, bool]) -> None:
        status = call(send(*case))
        assert status < 500, case

    await hypothesis_in_thread(lambda call: never_5xx(call))
    await settled(gw)


async def test_mcp_requests(fuzzed: tuple[GatewayUnderTest, FakeSlack]) -> None:
    gw, _ = fuzzed
    token = (gw.data_dir / "mcp-tokens" / "ana").read_text().strip()
    async with mcp_http(gw.gateway) as url, aiohttp.ClientSession() as http:
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }

        async def send(body: bytes) -> int:
            async with http.post(url, data=body, headers=headers) as r:
                await r.read()
                return r.status

        tools = ["pending_approvals", "promote_rollout", "decide_approval", "nope"]
        request = st.builds(
            lambda method, params, id_: {
                "jsonrpc": "2.0",
                "id": id_,
                "method": method,
                "params": params,
            },
            st.sampled_from(["initialize", "tools/list", "tools/call", "ping", "x/y"]) | JSON,
            st.builds(
                lambda name, arguments: {"name": name, "arguments": arguments},
                st.sampled_from(tools) | JSON,
                st.dictionaries(
                    st.sampled_from(["app", "to_ring", "approval_id"]), JSON, max_size=3
                )
                | JSON,
            )
            | JSON,
            st.integers() | st.text(max_size=5) | JSON,
        )

        @given(request.map(lambda r: json.dumps(r).encode()) | st.binary(max_size=60))
        @fuzz_settings(80)
        def never_5xx(call: Callable[[Awaitable[int]], int], body: bytes) -> None:
            status = call(send(body))
            assert status < 500, body

        await hypothesis_in_thread(lambda call: never_5xx(call))
    await settled(gw)
