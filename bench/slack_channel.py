"""Benchmark: the Slack channel's acknowledgement latency and turn rate, beside an echo server.

Three processes, as deployed: the demo control plane, the gateway (``bench.gateway_process``
with the Slack channel on, its Web API pointed at this process), and this one, which is the
load generator and Slack's Web API (``tests.fakes.slack_api``, recording each
``chat.postMessage``). Each delivery is an ``event_callback`` direct message signed with
Slack's v0 algorithm, from one of 64 people, asking "what is pending my approval" (one
control-plane read).

Open loop at each of ``--rates`` deliveries a second for ``--seconds``: each delivery has a
scheduled send time, and its acknowledgement latency runs from it (Slack wants the HTTP
answer within 3 s and retries after that). A turn is complete when its reply reaches the Web
API; turns/s is completed turns over the time from the first send to the last reply. The
baseline is a bare aiohttp echo (no signature check, no storage) driven by the same signed
deliveries at the same rate, in the same run.

    .venv/bin/python -m bench.slack_channel [--rates 100 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import aiohttp
import yaml
from slack_sdk.signature import SignatureVerifier

from bench.common import LoadResult, echo_server, free_port, machine, subprocess_server
from bench.gateway_pipeline import open_loop as pipeline_open_loop
from bench.gateway_process import CREDENTIAL_ENV, bench_policy, child_cpu_seconds, pct
from tests.fakes.slack_api import BOT_TOKEN, TEAM, FakeSlack, fake_slack

CONTROL_PLANE: Final = (sys.executable, "-m", "gateway.cli", "controlplane", "serve", "--demo")
GATEWAY: Final = (sys.executable, "-m", "bench.gateway_process")
PEOPLE: Final = 64
SECRET: Final = "bench-signing-secret-0123456789ab"  # noqa: S105  (a bench-only secret)
TARGET_ACK_P99_MS: Final = 3000.0
"""Slack's own limit: no answer within 3 s means a retry."""

Send = Callable[[int], Awaitable[bool]]


def user(i: int) -> str:
    return f"UB{i % PEOPLE:04d}"


def slack_policy(data_dir: Path) -> None:
    """The bench policy (rate limits raised) with Slack open and a Slack identity per person."""
    bench_policy(data_dir, PEOPLE, ("ana", "li"))
    path = data_dir / "policy.yaml"
    document = yaml.safe_load(path.read_text())
    document["channels"]["slack"] = {}
    for n in range(PEOPLE):
        document["principals"][f"bench-{n:03d}"]["identities"].append(
            {"channel": "slack", "id": f"{TEAM}:{user(n)}"}
        )
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def delivery(i: int, tag: str) -> str:
    """Delivery ``i``: a direct message from person ``i`` mod 64, with its own event id."""
    return json.dumps(
        {
            "token": "legacy",
            "team_id": TEAM,
            "api_app_id": "A0001",
            "type": "event_callback",
            "event_id": f"Ev{tag}{i:07d}",
            "event_time": int(time.time()),
            "event": {
                "type": "message",
                "channel_type": "im",
                "channel": f"D{user(i)}",
                "user": user(i),
                "team": TEAM,
                "text": "what is pending my approval",
                "ts": f"1700000000.{i:06d}",
            },
        }
    )


def signed_post(http: aiohttp.ClientSession, url: str, tag: str) -> Send:
    verifier = SignatureVerifier(SECRET)

    async def send(i: int) -> bool:
        body = delivery(i, tag)
        ts = str(int(time.time()))
        headers = {
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": verifier.generate_signature(timestamp=ts, body=body) or "",
            "Content-Type": "application/json",
        }
        try:
            async with http.post(f"{url}/slack/events", data=body, headers=headers) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    return send


async def open_loop(send: Send, rate: float, seconds: float) -> tuple[LoadResult, float]:
    """``bench.gateway_pipeline.open_loop``, and when it started (to time the last reply from)."""
    start = time.perf_counter()
    return await pipeline_open_loop(send, rate, seconds), start


async def replies(slack: FakeSlack, expected: int, within: float) -> tuple[int, float]:
    """Wait for ``expected`` replies (at most ``within`` s); how many came, when the last did."""
    deadline = time.perf_counter() + within
    seen, last = 0, time.perf_counter()
    while time.perf_counter() < deadline:
        now = len(slack.of("chat.postMessage"))
        if now != seen:
            seen, last = now, time.perf_counter()
        if seen >= expected:
            break
        await asyncio.sleep(0.02)
    return seen, last


def ack_line(label: str, result: LoadResult) -> str:
    lat = result.latencies_ms
    return (
        f"{label}: {result.requests} deliveries, {result.errors} not acknowledged with 200; "
        f"acknowledgement p50 {pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms, "
        f"max {max(lat):.1f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 200.0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    one, five, _ = os.getloadavg()
    print(f"load average before the run: {one:.2f} (1 min), {five:.2f} (5 min)")
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    with tempfile.TemporaryDirectory() as tmp:
        cp_dir, gw_dir = Path(tmp) / "cp", Path(tmp) / "gw"
        gw_dir.mkdir()
        slack_policy(gw_dir)
        with subprocess_server(
            [*CONTROL_PLANE, "--data-dir", str(cp_dir), "--port", str(free_port())],
            {
                "GOODBOT_CP_RATE_LIMIT_PER_SECOND": "1000000",
                "GOODBOT_CP_RATE_LIMIT_BURST": "1000000",
                "GOODBOT_CP_SIMULATOR_ENABLED": "false",
            },
            "control plane:",
        ) as cp_url:
            demo = json.loads((cp_dir / "demo-tokens.json").read_text())["tokens"]
            async with fake_slack() as slack:
                env = {
                    CREDENTIAL_ENV: demo["goodbot-gateway"]["token"],
                    "GOODBOT_SLACK__SIGNING_SECRET": SECRET,
                    "GOODBOT_SLACK__BOT_TOKEN": BOT_TOKEN,
                    "GOODBOT_SLACK__API_BASE_URL": slack.url,
                }
                with subprocess_server(
                    [*GATEWAY, "--data-dir", str(gw_dir), "--cp-url", cp_url], env, "gateway:"
                ) as gw_url:
                    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                        # Warm up: connections, the policy, the first control-plane reads.
                        warm = signed_post(http, gw_url, "warm")
                        await asyncio.gather(*(warm(i) for i in range(PEOPLE)))
                        await replies(slack, PEOPLE, 60)
                        runs = []
                        for rate in args.rates:
                            slack.calls.clear()
                            cpu_before = child_cpu_seconds("bench.gateway_process")
                            load, start = await open_loop(
                                signed_post(http, gw_url, f"r{rate:g}-"), rate, args.seconds
                            )
                            done, last = await replies(slack, load.requests, 120)
                            cpu = child_cpu_seconds("bench.gateway_process") - cpu_before
                            runs.append((rate, load, done, last - start, cpu))
    echoes = []
    async with aiohttp.ClientSession(timeout=timeout) as http:
        with echo_server() as echo_url:
            send = signed_post(http, echo_url, "echo")
            await open_loop(send, args.rates[0], 1.0)
            for rate in args.rates:
                echoes.append((await open_loop(send, rate, args.seconds))[0])

    print(
        f"demo control plane, gateway (rules route, SQLite, Slack channel) and this load "
        f"generator with Slack's Web API: three processes sharing {os.cpu_count()} CPUs; "
        f"{PEOPLE} people, one conversation each"
    )
    for (rate, load, done, span, cpu), echo in zip(runs, echoes, strict=True):
        print(f"open loop at {rate:g} deliveries/s for {args.seconds:g} s")
        print(ack_line("  gateway /slack/events", load))
        print(ack_line("  echo baseline        ", echo))
        print(
            f"  turns completed: {done}/{load.requests} replies posted, {done / span:.1f} "
            f"turns/s (first send to last reply {span:.1f} s); gateway CPU "
            f"{cpu * 1000 / max(1, done):.1f} ms per turn"
        )
        p99 = pct(load.latencies_ms, 0.99)
        verdict = "met" if p99 <= TARGET_ACK_P99_MS else "MISSED"
        print(f"  acknowledgement p99 within Slack's 3 s at this rate: {verdict}")


if __name__ == "__main__":
    asyncio.run(main())
