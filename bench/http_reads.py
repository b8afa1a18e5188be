"""Benchmark: device-compliance reads through HTTP on one control plane process.

Prints requests/s and latency for ``GET /api/v1/devices/{id}/compliance`` beside a bare
aiohttp echo handler measured in the same run on the same machine, both as separate server
processes driven by this process over loopback.

    .venv/bin/python bench/http_reads.py [--devices 200] [--seconds 10] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid

import aiohttp

from bench.common import closed_loop, echo_server, free_port, machine, subprocess_server


async def seed(url: str, boot: str, devices: int) -> tuple[str, list[str]]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/api/v1/tenants",
            json={"name": "bench"},
            headers={"Authorization": f"Bearer {boot}"},
        ) as r:
            tenant = await r.json()
        auth = {"Authorization": f"Bearer {tenant['owner_token']}"}
        root = tenant["root_scope_id"]
        async with http.post(
            f"{url}/api/v1/scopes",
            headers=auth,
            json={"parent_id": root, "level": "department", "name": "eng"},
        ) as r:
            dept = (await r.json())["id"]
        async with http.post(
            f"{url}/api/v1/policies",
            headers=auth,
            json={
                "bundle": {
                    "policy_id": "base",
                    "policy_version": 1,
                    "scope_bindings": [root],
                    "required_packages": [{"manager": "brew", "name": "git"}],
                    "denied_packages": [{"manager": "brew", "name": "telnet"}],
                }
            },
        ) as r:
            r.raise_for_status()
        ids = []
        for n in range(devices):
            async with http.post(
                f"{url}/api/v1/devices",
                headers=auth,
                json={"name": f"mac-{n}", "platform": "macos", "scope_ids": [dept]},
            ) as r:
                device = await r.json()
            packages = [
                {"manager": "brew", "name": f"pkg-{i}", "version": "1.0"} for i in range(200)
            ]
            if n % 2:
                packages.append({"manager": "brew", "name": "git", "version": "2.47.0"})
            async with http.post(
                f"{url}/api/v1/devices/{device['id']}/inventory",
                headers=auth,
                json={"sequence": 1, "packages": packages},
            ) as r:
                r.raise_for_status()
            ids.append(device["id"])
    return tenant["owner_token"], ids


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    boot = "boot-" + uuid.uuid4().hex
    with (
        tempfile.TemporaryDirectory() as data,
        subprocess_server(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "controlplane",
                "serve",
                "--data-dir",
                data,
                "--port",
                str(free_port()),
            ],
            {
                "GOODBOT_CP_BOOTSTRAP_TOKEN": boot,
                "GOODBOT_CP_RATE_LIMIT_PER_SECOND": "1000000",
                "GOODBOT_CP_RATE_LIMIT_BURST": "1000000",
            },
            "control plane:",
        ) as url,
    ):
        token, ids = await seed(url, boot, args.devices)
        urls = [f"{url}/api/v1/devices/{d}/compliance" for d in ids]
        await closed_loop(urls, {"Authorization": f"Bearer {token}"}, 1.0, args.concurrency)
        result = await closed_loop(
            urls, {"Authorization": f"Bearer {token}"}, args.seconds, args.concurrency
        )
    with echo_server() as echo:
        await closed_loop([echo + "/x"], {}, 1.0, args.concurrency)
        baseline = await closed_loop([echo + "/x"], {}, args.seconds, args.concurrency)
    print(f"{args.devices} devices, {args.concurrency} concurrent clients, {args.seconds:g} s each")
    print(baseline.line("baseline: bare aiohttp echo"))
    print(result.line("GET /devices/{id}/compliance"))
    print(f"ratio: compliance reads run at {result.rps / baseline.rps:.0%} of the echo rate")


if __name__ == "__main__":
    asyncio.run(main())
