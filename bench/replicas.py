"""Benchmark: the full pipeline with one and two gateway replicas on PostgreSQL.

The same message as ``bench.gateway_pipeline`` (``what is pending my approval``: CLI HTTP →
admission with the shared rate limit → rules route → one control-plane read → reply stored
and audited), measured in one run, on one machine, for:

- the bare aiohttp NDJSON echo (the baseline: what HTTP alone costs here);
- one gateway on SQLite (the single-process default);
- one gateway on PostgreSQL;
- two gateways on one PostgreSQL schema, the client spreading messages over both;
- the same two behind the suite's round-robin balancer (``tests.fakes.balancer``), one more
  process and one more hop, as a load balancer adds in a deployment.

Each: the highest rate (closed loop, ``--concurrency`` clients), then p50/p99 at half that
rate (open loop, latency from the scheduled send). The demo control plane (SQLite) serves
every configuration. Every process shares this machine's CPUs, PostgreSQL included.

    .venv/bin/python -m bench.replicas [--seconds 6] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import aiohttp
import asyncpg

from bench.common import LoadResult, free_port, machine, subprocess_server
from bench.gateway_pipeline import closed_loop, latency_line, open_loop, rate_line, turns
from bench.gateway_process import CREDENTIAL_ENV, NDJSON_ECHO, bench_policy

PG_URL: Final = os.environ.get("GOODBOT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEXT: Final = "what is pending my approval"
PRINCIPALS: Final = 64
CONTROL_PLANE: Final = (sys.executable, "-m", "gateway.cli", "controlplane", "serve", "--demo")
GATEWAY: Final = (sys.executable, "-m", "bench.gateway_process")
CPU: dict[str, float] = {}
"""Gateway CPU milliseconds per message at the highest rate, by run tag (all replicas)."""


async def _pg(sql: str) -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def pg_schema() -> Iterator[dict[str, str]]:
    """A fresh schema migrated by ``goodbot migrate``; the gateway environment for it."""
    schema = f"gbbench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg(f"CREATE SCHEMA {schema}"))  # our own generated identifier
    env = {
        "GOODBOT_DATABASE__URL": PG_URL.replace("postgresql://", "postgresql+asyncpg://"),
        "GOODBOT_DATABASE__SCHEMA_NAME": schema,
        "GOODBOT_DATABASE__MIGRATE_ON_START": "false",
    }
    try:
        subprocess.run(
            [sys.executable, "-m", "gateway.cli", "migrate"],
            env={**os.environ, **env},
            check=True,
            capture_output=True,
        )
        yield env
    finally:
        asyncio.run(_pg(f"DROP SCHEMA {schema} CASCADE"))


def children_cpu(marker: str) -> float:
    """CPU seconds (user + system) of every child process whose command line holds ``marker``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def measure(
    urls: list[str], tokens: list[str], args: argparse.Namespace, tag: str
) -> tuple[LoadResult, LoadResult]:
    """Highest rate over ``urls`` (message i to url i mod n), then latency at half of it."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
    ) as http:
        sends = [turns(http, url, tokens, TEXT, f"{tag}-{n}") for n, url in enumerate(urls)]

        async def send(i: int) -> bool:
            return await sends[i % len(sends)](i // len(sends))

        for i in range(2 * len(urls)):  # warm each process's pools
            await send(i)
        before = children_cpu("bench.gateway_process")
        highest = await closed_loop(send, args.seconds, args.concurrency)
        used = children_cpu("bench.gateway_process") - before
        if used:
            CPU[tag] = used * 1000 / max(1, highest.requests)
        half = await open_loop(send, max(1.0, highest.rps / 2), args.seconds)
    return highest, half


async def echo(args: argparse.Namespace) -> tuple[LoadResult, LoadResult]:
    """The baseline through the same client code: a bare aiohttp NDJSON echo process."""
    port = free_port()
    with subprocess_server([sys.executable, "-c", NDJSON_ECHO, str(port), "0"], {}, "echo:") as url:
        return await measure([url], ["unused"], args, "echo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    one, five, _ = os.getloadavg()
    print(f"load average before the run: {one:.2f} (1 min), {five:.2f} (5 min)")
    results: list[tuple[str, str, LoadResult, LoadResult]] = []
    results.append(("baseline: bare aiohttp NDJSON echo", "echo", *asyncio.run(echo(args))))
    with tempfile.TemporaryDirectory() as tmp:
        cp_dir, gw_dir = Path(tmp) / "cp", Path(tmp) / "gw"
        gw_dir.mkdir()
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
            credential = {CREDENTIAL_ENV: demo["goodbot-gateway"]["token"]}
            tokens = bench_policy(gw_dir, PRINCIPALS, ("ana", "li"))

            def gateway(data: Path, env: dict[str, str]) -> contextlib.AbstractContextManager[str]:
                data.mkdir(exist_ok=True)
                (data / "policy.yaml").write_bytes((gw_dir / "policy.yaml").read_bytes())
                return subprocess_server(
                    [*GATEWAY, "--data-dir", str(data), "--cp-url", cp_url],
                    {**credential, **env},
                    "gateway:",
                )

            with gateway(Path(tmp) / "sqlite", {}) as url:
                sqlite = asyncio.run(measure([url], tokens, args, "s"))
                results.append(("one gateway, SQLite", "s", *sqlite))
            with pg_schema() as env, gateway(Path(tmp) / "pg1", env) as url:
                results.append(
                    (
                        "one gateway, PostgreSQL",
                        "p",
                        *asyncio.run(measure([url], tokens, args, "p")),
                    )
                )
            with (
                pg_schema() as env,
                gateway(Path(tmp) / "pg2a", env) as first,
                gateway(Path(tmp) / "pg2b", env) as second,
            ):
                pair = [first, second]
                results.append(
                    (
                        "two gateways, PostgreSQL, client spreads",
                        "q",
                        *asyncio.run(measure(pair, tokens, args, "q")),
                    )
                )
                balancer = [sys.executable, "-m", "tests.fakes.balancer", *pair]
                with subprocess_server(balancer, {}, "balancer:") as lb:
                    results.append(
                        (
                            "two gateways, PostgreSQL, via balancer",
                            "r",
                            *asyncio.run(measure([lb], tokens, args, "r")),
                        )
                    )
    print(
        f"message {TEXT!r} (one control-plane read); {PRINCIPALS} principals; demo control "
        f"plane on SQLite; every process on these {os.cpu_count()} CPUs"
    )
    print(f"highest rate: {args.concurrency} clients, closed loop, {args.seconds:g} s")
    for label, tag, highest, _ in results:
        cpu = f"   gateway CPU {CPU[tag]:.1f} ms/msg" if tag in CPU else ""
        print(rate_line(label, highest) + cpu)
    print(
        f"at half the highest rate: open loop, latency from the scheduled send, {args.seconds:g} s"
    )
    for label, _, highest, half in results:
        print(latency_line(f"{label} at {highest.rps / 2:.0f}/s"[:46], half))


if __name__ == "__main__":
    main()
