"""Benchmark: the Teams channel's acknowledgement latency and turn rate, beside an echo server.

Three processes, as deployed: the demo control plane, the gateway (``bench.teams_process``:
``bench.gateway_process`` with the Teams channel on and the SDK's key lookup pointed here), and
this one, which is the load generator and the Bot Connector (``tests.fakes.bot_connector``:
the JWKS, the HTTPS token endpoint msal asks for outbound tokens, and the serviceUrl that
records every reply). Each activity is a Teams personal-chat message from one of 64 people,
"what is pending my approval" (one control-plane read), with its own RS256 token signed by the
emulator's key (signed before the run, so signing does not slow the generator), verified in
full by the gateway: key id, signature, expiry, issuer, audience, service URL, tenant.

Open loop at each of ``--rates`` activities a second for ``--seconds``: each activity has a
scheduled send time, and its acknowledgement latency runs from it (Teams retries a slow
request). A turn is complete when its reply reaches the connector; turns/s is completed turns
over the time from the first send to the last reply. The baseline is a bare aiohttp echo (no
token check, no storage) driven by the same requests at the same rate, in the same run.

    .venv/bin/python -m bench.teams_ingress [--rates 100 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import aiohttp
import yaml

from bench.common import LoadResult, echo_server, free_port, machine, subprocess_server
from bench.gateway_process import CREDENTIAL_ENV, bench_policy, child_cpu_seconds, pct
from bench.slack_channel import Send, open_loop
from bench.teams_process import JWKS_ENV
from tests.fakes.bot_connector import APP_ID, SECRET, TENANT, BotConnector, bot_connector

CONTROL_PLANE: Final = (sys.executable, "-m", "gateway.cli", "controlplane", "serve", "--demo")
GATEWAY: Final = (sys.executable, "-m", "bench.teams_process")
PEOPLE: Final = 64
TARGET_ACK_P99_MS: Final = 50.0
"""The issue's target for the acknowledgement at 200 activities a second."""


def oid(i: int) -> str:
    """Person ``i``'s Entra object id."""
    return f"00000000-0000-4000-8000-{i % PEOPLE:012d}"


def teams_policy(data_dir: Path) -> None:
    """The bench policy (rate limits raised) with Teams open and a Teams identity per person."""
    bench_policy(data_dir, PEOPLE, ("ana", "li"))
    path = data_dir / "policy.yaml"
    document = yaml.safe_load(path.read_text())
    document["channels"]["teams"] = {}
    for n in range(PEOPLE):
        document["principals"][f"bench-{n:03d}"]["identities"].append(
            {"channel": "teams", "id": f"{TENANT}:{oid(n)}"}
        )
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def activity(connector: BotConnector, i: int, tag: str) -> dict[str, Any]:
    """Activity ``i``: a personal-chat message from person ``i`` mod 64, with its own id."""
    return connector.message(
        "what is pending my approval",
        user=oid(i),
        name=f"Bench {i % PEOPLE}",
        conversation=f"a:bench-{i % PEOPLE}",
        activity_id=f"{tag}{i:07d}",
    )


def signed_post(
    http: aiohttp.ClientSession, url: str, connector: BotConnector, tag: str, count: int
) -> Send:
    """Sends of ``count`` activities, each with a token signed now (before the clock runs)."""
    bodies = [json.dumps(activity(connector, i, tag)) for i in range(count)]
    tokens = [connector.sign() for _ in range(count)]

    async def send(i: int) -> bool:
        headers = {"Authorization": f"Bearer {tokens[i]}", "Content-Type": "application/json"}
        try:
            async with http.post(f"{url}/api/messages", data=bodies[i], headers=headers) as r:
                await r.read()
                return r.status in (200, 202)
        except (aiohttp.ClientError, TimeoutError):
            return False

    return send


async def replies(connector: BotConnector, expected: int, within: float) -> tuple[int, float]:
    """Wait for ``expected`` replies (at most ``within`` s); how many came, when the last did."""
    deadline = time.perf_counter() + within
    seen, last = 0, time.perf_counter()
    while time.perf_counter() < deadline:
        now = len(connector.sent())
        if now != seen:
            seen, last = now, time.perf_counter()
        if seen >= expected:
            break
        await asyncio.sleep(0.02)
    return seen, last


def ack_line(label: str, result: LoadResult) -> str:
    lat = result.latencies_ms
    return (
        f"{label}: {result.requests} activities, {result.errors} not acknowledged with 2xx; "
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
    timeout = aiohttp.ClientTimeout(total=60)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        cp_dir, gw_dir = Path(tmp) / "cp", Path(tmp) / "gw"
        gw_dir.mkdir()
        teams_policy(gw_dir)
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
            async with bot_connector(Path(tmp) / "connector") as connector:
                env = {
                    CREDENTIAL_ENV: demo["goodbot-gateway"]["token"],
                    JWKS_ENV: connector.keys_url,
                    "GOODBOT_TEAMS__APP_ID": APP_ID,
                    "GOODBOT_TEAMS__TENANT_ID": TENANT,
                    "GOODBOT_TEAMS__CLIENT_SECRET": SECRET,
                    "GOODBOT_TEAMS__AUTHORITY_HOST": connector.idp_url,
                    "GOODBOT_TEAMS__CA_FILE": str(connector.ca_file),
                }
                with subprocess_server(
                    [*GATEWAY, "--data-dir", str(gw_dir), "--cp-url", cp_url], env, "gateway:"
                ) as gw_url:
                    connector_pool = aiohttp.TCPConnector(limit=0)
                    async with aiohttp.ClientSession(
                        connector=connector_pool, timeout=timeout
                    ) as http:
                        # Warm up: connections, keys, tokens, the first control-plane reads.
                        warm = signed_post(http, gw_url, connector, "warm", PEOPLE)
                        await asyncio.gather(*(warm(i) for i in range(PEOPLE)))
                        await replies(connector, PEOPLE, 60)
                        for rate in args.rates:
                            count = max(1, int(rate * args.seconds))
                            send = signed_post(http, gw_url, connector, f"r{rate:g}-", count)
                            connector.received.clear()
                            cpu_before = child_cpu_seconds("bench.teams_process")
                            load, start = await open_loop(send, rate, args.seconds)
                            done, last = await replies(connector, load.requests, 120)
                            cpu = child_cpu_seconds("bench.teams_process") - cpu_before
                            runs.append((rate, load, done, last - start, cpu))
                echoes = []
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    with echo_server() as echo_url:
                        warm = signed_post(http, echo_url, connector, "echo-warm", 100)
                        await open_loop(warm, 100, 1.0)
                        for rate in args.rates:
                            count = max(1, int(rate * args.seconds))
                            send = signed_post(http, echo_url, connector, "echo", count)
                            echoes.append((await open_loop(send, rate, args.seconds))[0])

    print(
        f"demo control plane, gateway (rules route, SQLite, Teams channel) and this load "
        f"generator with the Bot Connector emulator: three processes sharing "
        f"{os.cpu_count()} CPUs; {PEOPLE} people, one personal chat each"
    )
    for (rate, load, done, span, cpu), echo in zip(runs, echoes, strict=True):
        print(f"open loop at {rate:g} activities/s for {args.seconds:g} s")
        print(ack_line("  gateway /api/messages", load))
        print(ack_line("  echo baseline        ", echo))
        print(
            f"  turns completed: {done}/{load.requests} replies at the connector, "
            f"{done / span:.1f} turns/s (first send to last reply {span:.1f} s); gateway CPU "
            f"{cpu * 1000 / max(1, done):.1f} ms per turn"
        )
        p99 = pct(load.latencies_ms, 0.99)
        verdict = "met" if p99 <= TARGET_ACK_P99_MS else "MISSED"
        print(f"  acknowledgement p99 <= {TARGET_ACK_P99_MS:g} ms at this rate: {verdict}")


if __name__ == "__main__":
    asyncio.run(main())
