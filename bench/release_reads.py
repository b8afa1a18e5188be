"""Benchmark: "pending my approvals" and "rollout status" reads through HTTP, on the demo.

Starts the README's main job (``goodbot controlplane serve --demo``) in its own process, then
drives ``GET /api/v1/approvals/pending`` (as ana, a CAB approver) and ``GET
/api/v1/rollouts/{id}`` (live gate measurement of each demo rollout, as omar) with a
closed-loop load, beside a bare aiohttp echo handler measured in the same run.

    .venv/bin/python -m bench.release_reads [--seconds 10] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import aiohttp

from bench.common import closed_loop, echo_server, free_port, machine, subprocess_server


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    results = []
    with (
        tempfile.TemporaryDirectory() as data,
        subprocess_server(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "controlplane",
                "serve",
                "--demo",
                "--data-dir",
                data,
                "--port",
                str(free_port()),
            ],
            {
                "GOODBOT_CP_RATE_LIMIT_PER_SECOND": "1000000",
                "GOODBOT_CP_RATE_LIMIT_BURST": "1000000",
                "GOODBOT_CP_SIMULATOR_ENABLED": "false",
            },
            "control plane:",
        ) as url,
    ):
        tokens = json.loads((Path(data) / "demo-tokens.json").read_text())["tokens"]
        ana = {"Authorization": f"Bearer {tokens['ana']['token']}"}
        omar = {"Authorization": f"Bearer {tokens['omar']['token']}"}
        async with (
            aiohttp.ClientSession(headers=omar) as http,
            http.get(f"{url}/api/v1/rollouts") as resp,
        ):
            rollouts = [r["id"] for r in (await resp.json())["items"]]
        runs = (
            ("GET /approvals/pending (ana)", [f"{url}/api/v1/approvals/pending"], ana),
            (
                f"GET /rollouts/{{id}} ({len(rollouts)} rollouts)",
                [f"{url}/api/v1/rollouts/{r}" for r in rollouts],
                omar,
            ),
        )
        for label, urls, headers in runs:
            await closed_loop(urls, headers, 1.0, args.concurrency)
            results.append(
                (label, await closed_loop(urls, headers, args.seconds, args.concurrency))
            )
    with echo_server() as echo:
        await closed_loop([echo + "/x"], {}, 1.0, args.concurrency)
        baseline = await closed_loop([echo + "/x"], {}, args.seconds, args.concurrency)
    print(f"demo tenant, {args.concurrency} concurrent clients, {args.seconds:g} s each")
    print(baseline.line("baseline: bare aiohttp echo"))
    for label, result in results:
        print(result.line(label))


if __name__ == "__main__":
    asyncio.run(main())
