"""Benchmark: the full pipeline with one and two gateway replicas on PostgreSQL.

The same message as ``bench.gateway_pipeline`` (``what is pending my approval``: CLI HTTP →
admission with the shared rate limit → rules route → one control-plane read → reply stored
and audited), measured in one run, on one machine, for:

- the bare aiohttp NDJSON echo (the baseline: what HTTP alone costs here);
- one gateway on SQLite (the single-process default);
- one gateway on PostgreSQL;
- one gateway on PostgreSQL with the message rate kept in the process (what the shared,
  PostgreSQL-held rate limit costs);
- two gateways on one PostgreSQL schema, the client spreading messages over both;
- the same two behind the suite's round-robin balancer (``tests.fakes.balancer``), one more
  process and one more hop, as a load balancer adds in a deployment.

Each: the highest rate (closed loop, ``--concurrency`` clients) with the gateways' CPU per
message, then p50/p99 at half that rate (open loop, latency from the scheduled send; the echo
at the SQLite gateway's half rate). ``--rounds`` repeats every configuration on fresh
processes and prints the medians, since this machine's figures move between runs. The demo
control plane (SQLite) serves every configuration. Every process shares this machine's CPUs,
PostgreSQL included.

    .venv/bin/python -m bench.replicas [--seconds 6] [--concurrency 32] [--rounds 3]
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


async def echo(args: argparse.Namespace, rate: float) -> tuple[LoadResult, LoadResult]:
    """The baseline through the same client code: a bare aiohttp NDJSON echo process, its
    highest rate, and its latency at ``rate`` (the SQLite gateway's half rate, since this
    generator cannot hold half the echo's own rate on a schedule)."""
    port = free_port()
    with subprocess_server([sys.executable, "-c", NDJSON_ECHO, str(port), "0"], {}, "echo:") as url:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
        ) as http:
            send = turns(http, url, ["unused"], TEXT, "echo")
            highest = await closed_loop(send, args.seconds, args.concurrency)
            at = await open_loop(send, rate, args.seconds)
    return highest, at


Run = tuple[str, LoadResult, LoadResult, float]
"""A configuration's label, highest rate, latency at half of it, gateway CPU ms per message."""


def one_round(
    tmp: Path, cp_url: str, credential: dict[str, str], tokens: list[str], args: argparse.Namespace
) -> list[Run]:
    """Every configuration once, each on fresh processes (and a fresh schema)."""
    policy = (tmp / "gw" / "policy.yaml").read_bytes()
    runs: list[Run] = []

    def gateway(data: Path, env: dict[str, str]) -> contextlib.AbstractContextManager[str]:
        data.mkdir(exist_ok=True)
        (data / "policy.yaml").write_bytes(policy)
        return subprocess_server(
            [*GATEWAY, "--data-dir", str(data), "--cp-url", cp_url],
            {**credential, **env},
            "gateway:",
        )

    def run(label: str, urls: list[str]) -> None:
        CPU.clear()
        highest, half = asyncio.run(measure(urls, tokens, args, "gw"))
        runs.append((label, highest, half, CPU.get("gw", float("nan"))))

    tag = uuid.uuid4().hex[:6]
    with gateway(tmp / f"sqlite-{tag}", {}) as url:
        run("one gateway, SQLite", [url])
    with pg_schema() as env, gateway(tmp / f"pg1-{tag}", env) as url:
        run("one gateway, PostgreSQL", [url])
    local_rate = {"GOODBOT_REPLICAS__SHARED_RATE_LIMIT": "false"}
    with pg_schema() as env, gateway(tmp / f"pg0-{tag}", {**env, **local_rate}) as url:
        run("one gateway, PostgreSQL, rate in process", [url])
    with (
        pg_schema() as env,
        gateway(tmp / f"pg2a-{tag}", env) as first,
        gateway(tmp / f"pg2b-{tag}", env) as second,
    ):
        run("two gateways, PostgreSQL, client spreads", [first, second])
        balancer = [sys.executable, "-m", "tests.fakes.balancer", first, second]
        with subprocess_server(balancer, {}, "balancer:") as lb:
            run("two gateways, PostgreSQL, via balancer", [lb])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="every configuration, this often")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    one, five, _ = os.getloadavg()
    print(f"load average before the run: {one:.2f} (1 min), {five:.2f} (5 min)")
    rounds: list[list[Run]] = []
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
            for _ in range(args.rounds):
                runs = one_round(Path(tmp), cp_url, credential, tokens, args)
                echo_highest, echo_at = asyncio.run(echo(args, runs[0][1].rps / 2))
                baseline = ("baseline: bare aiohttp NDJSON echo", echo_highest, echo_at, 0.0)
                rounds.append([baseline, *runs])
    one, five, _ = os.getloadavg()
    print(f"load average after the run: {one:.2f} (1 min), {five:.2f} (5 min)")
    print(
        f"message {TEXT!r} (one control-plane read); {PRINCIPALS} principals; demo control "
        f"plane on SQLite; every process on these {os.cpu_count()} CPUs; {args.rounds} rounds, "
        f"each configuration on fresh processes"
    )
    for n, runs in enumerate(rounds, 1):
        print(
            f"round {n}: highest rate ({args.concurrency} clients, closed loop, {args.seconds:g} s)"
        )
        for label, highest, _, cpu in runs:
            extra = f"   gateway CPU {cpu:.1f} ms/msg" if cpu else ""
            print(rate_line(label, highest) + extra)
        print(f"round {n}: at half the highest rate (open loop, from the scheduled send)")
        for label, highest, half, _ in runs:
            at = runs[1][1] if label.startswith("baseline") else highest
            print(latency_line(f"{label} at {at.rps / 2:.0f}/s"[:46], half))
    print("median over the rounds: highest rate, and p99 at half of it")
    for i, (label, *_) in enumerate(rounds[0]):
        rates = sorted(r[i][1].rps for r in rounds)
        p99s = sorted(r[i][2].pct(0.99) for r in rounds)
        rate, p99 = rates[len(rates) // 2], p99s[len(p99s) // 2]
        print(
            f"{label:<46} {rate:>7.0f} msg/s (range {rates[0]:.0f}-{rates[-1]:.0f})"
            f"   p99 {p99:8.2f} ms (range {p99s[0]:.0f}-{p99s[-1]:.0f})"
        )


if __name__ == "__main__":
    main()
