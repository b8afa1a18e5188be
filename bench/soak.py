"""Soak: mixed traffic over every channel for a while, memory growth and error counts.

One gateway (rules route, SQLite, Slack on a loopback fake Slack, Teams on a loopback Bot
Connector, MCP over streamable HTTP) in
this process, over a demo control plane in its own; ``--workers`` loops per channel, each
sending one request after another until ``--minutes`` are up:

- CLI: a read ("what is pending my approval?", drift, a rollout's status), or a proposal
  ("promote google-chrome to pilot") that is then denied;
- Slack: a signed direct message (its reply goes to the fake Slack);
- MCP: a ``tools/call`` of ``pending_approvals`` with the SDK's client;
- Teams: a signed personal message from a loopback Bot Connector (its reply goes back there).

Every 30 s it samples this process's RSS (``VmRSS``; the load generators share the process
and are small) and prints a line; at the end the counts per channel, the errors by kind, the
RSS after warm-up and at the end, the messages still open and the audit chain's verdict.

    .venv/bin/python -m bench.soak [--minutes 30] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest
import yaml
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import text

from bench.common import machine
from gateway.mcp_serve import mcp_http
from gateway.settings import SlackSettings
from tests.demo import start, stop
from tests.e2e.harness import GatewayUnderTest, running_gateway
from tests.e2e.test_slack import ANA, SECRET, slack_policy
from tests.e2e.test_teams import teams_policy, teams_settings
from tests.fakes.bot_connector import BotConnector, bot_connector, jwks_seam
from tests.fakes.slack_api import TEAM, fake_slack

READS = ("what is pending my approval?", "show drift for engineering", "how is chrome doing?")


def rss_kb() -> int:
    """This process's resident set size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _reason(text: str) -> str:
    """An error's sentence without its request id, so equal errors count together."""
    lines = [line for line in text.splitlines() if line and not line.startswith("<")]
    said = lines[-1] if lines else text
    return re.sub(r"\(request id [0-9a-f]+\)", "", said)[:120].strip()


class Tally:
    """Requests and errors per channel."""

    def __init__(self) -> None:
        self.sent: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()

    def error(self, channel: str, kind: str) -> None:
        self.errors[f"{channel}: {kind}"] += 1


async def cli_worker(gw: GatewayUnderTest, tally: Tally, until: float, n: int) -> None:
    step = 0
    while time.monotonic() < until:
        step += 1
        try:
            if step % 5 == 0:
                turn = await gw.turn("ana", "promote google-chrome to pilot", conversation=f"w{n}")
                if turn.status == 200 and turn.result["confirmation"] is not None:
                    status, _ = await gw.decide("ana", turn.confirmation["id"], "deny")
                    if status != 200:
                        tally.error("cli", f"deny {status}")
            else:
                turn = await gw.turn("ana", READS[step % 3], conversation=f"w{n}")
            tally.sent["cli"] += 1
            if turn.status != 200:
                tally.error("cli", f"HTTP {turn.status}")
            elif turn.of("error"):
                tally.error("cli", "turn error")
            else:
                for call in turn.result["tool_calls"]:
                    if call["status"] == "error":
                        tally.error("cli", "tool error: " + _reason(call["text"]))
        except Exception as exc:  # a soak counts what breaks and goes on
            tally.error("cli", type(exc).__name__)


async def slack_worker(
    gw: GatewayUnderTest, tally: Tally, until: float, posted: Callable[[], int], workers: int
) -> None:
    while time.monotonic() < until:
        # Closed loop: Slack's turns run after the answer, so wait until the replies have
        # caught up (at most one in flight per worker) before sending the next.
        for _ in range(600):
            if posted() >= tally.sent["slack"] - workers + 1:
                break
            await asyncio.sleep(0.05)
        body = json.dumps(
            {
                "token": "legacy",
                "team_id": TEAM,
                "type": "event_callback",
                "event_id": f"Ev{uuid.uuid4().hex}",
                "event": {
                    "type": "message",
                    "channel_type": "im",
                    "channel": "D0000ANA",
                    "user": ANA,
                    "text": READS[tally.sent["slack"] % 3],
                    "ts": f"{time.time():.6f}",
                    "team": TEAM,
                },
            }
        )
        ts = str(int(time.time()))
        signature = SignatureVerifier(SECRET).generate_signature(timestamp=ts, body=body)
        headers = {
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": signature or "",
            "Content-Type": "application/json",
        }
        try:
            async with gw.http.post(f"{gw.url}/slack/events", data=body, headers=headers) as r:
                await r.read()
                tally.sent["slack"] += 1
                if r.status != 200:
                    tally.error("slack", f"HTTP {r.status}")
        except Exception as exc:
            tally.error("slack", type(exc).__name__)


async def teams_worker(
    gw: GatewayUnderTest,
    connector: BotConnector,
    answered: Callable[[], int],
    tally: Tally,
    until: float,
    workers: int,
) -> None:
    while time.monotonic() < until:
        for _ in range(600):  # closed loop, as for Slack: replies go out after the 202
            if answered() >= tally.sent["teams"] - workers + 1:
                break
            await asyncio.sleep(0.05)
        try:
            text_ = READS[tally.sent["teams"] % 3]
            status, _ = await connector.post(gw.http, gw.url, connector.message(text_))
            tally.sent["teams"] += 1
            if status != 202:
                tally.error("teams", f"HTTP {status}")
        except Exception as exc:
            tally.error("teams", type(exc).__name__)


async def mcp_worker(url: str, token: str, tally: Tally, until: float) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        while time.monotonic() < until:
            try:
                result = await client.call_tool("pending_approvals", {})
                tally.sent["mcp"] += 1
                if result.is_error:
                    said = " ".join(getattr(c, "text", "") for c in result.content)
                    tally.error("mcp", "tool error: " + _reason(said))
            except Exception as exc:
                tally.error("mcp", type(exc).__name__)


async def soak(minutes: float, workers: int, root: Path) -> None:
    """Run the traffic and print the figures."""
    # One person sends all of it: lift the control plane's per-principal limit (200/s), which
    # would otherwise answer a share of the tool calls with 429 (correctly, and clearly).
    os.environ["GOODBOT_CP_RATE_LIMIT_PER_SECOND"] = "100000"
    os.environ["GOODBOT_CP_RATE_LIMIT_BURST"] = "100000"
    stop(start(root / "template", demo=True))
    shutil.copytree(root / "template", root / "cp")
    cp = start(root / "cp", demo=False)
    data = root / "gw"
    slack_policy(data)
    teams_policy(data)
    policy_file = data / "policy.yaml"
    document = yaml.safe_load(policy_file.read_text())
    document["defaults"]["rate_limit_per_minute"] = 1_000_000
    policy_file.write_text(yaml.safe_dump(document, sort_keys=False))
    tally = Tally()
    seam = pytest.MonkeyPatch()
    try:
        async with fake_slack() as slack_api, bot_connector(root / "connector") as connector:
            jwks_seam(seam, connector.keys_url)
            slack = SlackSettings.model_validate(
                {"signing_secret": SECRET, "bot_token": "xoxb-test", "api_base_url": slack_api.url}
            )
            teams = teams_settings(connector)
            async with (
                running_gateway(data, cp.url, cp.gateway_token, slack=slack, teams=teams) as gw,
                mcp_http(gw.gateway) as mcp_url,
            ):
                token = (data / "mcp-tokens" / "ana").read_text().strip()
                started = time.monotonic()
                until = started + minutes * 60
                jobs = [cli_worker(gw, tally, until, n) for n in range(workers)]

                trimmed = collections.Counter[str]()

                def posted() -> int:
                    return trimmed["slack"] + len(slack_api.of("chat.postMessage"))

                def answered() -> int:
                    return trimmed["teams"] + len(connector.sent())

                def trim() -> None:
                    # The fakes record every call; drop them so RSS shows the gateway's growth.
                    trimmed["slack"] += len(slack_api.of("chat.postMessage"))
                    trimmed["teams"] += len(connector.sent())
                    slack_api.calls.clear()
                    connector.received.clear()

                jobs += [slack_worker(gw, tally, until, posted, workers) for _ in range(workers)]
                jobs += [mcp_worker(mcp_url, token, tally, until) for _ in range(workers)]
                jobs += [
                    teams_worker(gw, connector, answered, tally, until, workers)
                    for _ in range(workers)
                ]
                running = asyncio.gather(*jobs)
                samples: list[tuple[float, int]] = [(0.0, rss_kb())]
                while not running.done():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(running), 30)
                    trim()
                    samples.append((time.monotonic() - started, rss_kb()))
                    print(
                        f"{samples[-1][0]:7.0f} s  rss {samples[-1][1] / 1024:7.1f} MiB  "
                        f"sent {dict(tally.sent)}  errors {sum(tally.errors.values())}",
                        flush=True,
                    )
                await running
                drained = time.monotonic()
                for _ in range(1200):  # the last turns finish (at most 60 s)
                    async with gw.gateway.store.engine.connect() as conn:
                        open_ = (
                            await conn.execute(
                                text(
                                    "SELECT count(*) FROM messages WHERE direction = 'in'"
                                    " AND status NOT IN ('done', 'failed')"
                                )
                            )
                        ).scalar_one()
                    if not open_:
                        break
                    await asyncio.sleep(0.05)
                drained = time.monotonic() - drained
                verdict = await gw.gateway.store.verify_audit()
                replies, teams_replies = posted(), answered()
    finally:
        seam.undo()
        stop(cp)
    warm = next((kb for t, kb in samples if t >= 60), samples[-1][1])
    print(f"\nsoak: {minutes:g} min, {workers} worker(s) per channel")
    print(f"requests: {dict(tally.sent)} (replies posted: Slack {replies}, Teams {teams_replies})")
    print(f"errors: {dict(tally.errors) or 'none'}")
    print(
        f"rss: start {samples[0][1] / 1024:.1f} MiB, after 1 min {warm / 1024:.1f} MiB, "
        f"end {samples[-1][1] / 1024:.1f} MiB (growth after warm-up "
        f"{(samples[-1][1] - warm) / 1024:+.1f} MiB)"
    )
    print(f"messages left open: {open_} (after {drained:.1f} s); audit chain: {verdict}")


def main() -> None:
    """Parse the arguments and soak."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="goodbot-soak-") as tmp:
        asyncio.run(soak(args.minutes, args.workers, Path(tmp)))


if __name__ == "__main__":
    main()
