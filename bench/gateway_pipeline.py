"""Benchmark: the gateway's whole pipeline on one process, beside a bare aiohttp NDJSON echo.

One message goes CLI HTTP (``POST /cli/v1/turns``, bearer token, NDJSON back) → admission
(principal, size, rate limit; stored and audited) → rules route → the tool's read-only
control-plane calls over HTTP → reply stored and audited. Three processes, as deployed: the
demo control plane (``goodbot controlplane serve --demo``, simulator off), the gateway
(``bench.gateway_process``: ``build_gateway``/``build_app``, rules route, SQLite), and this
one, the load generator. They share the machine's CPUs, which the figures show per message.

For each message: the highest rate (closed loop, ``--concurrency`` clients), then latency at
half that rate (open loop: each message has a scheduled send time and its latency runs from
it, so a stall is not hidden by sending later). The echo baseline is driven the same way, at
its own highest rate and at the gateway's half rate. Then the gateway's own share of a turn:
the turn handler's time in the gateway minus the route's and the tools' time from
``TurnResult``, one client at a time and at half the highest rate.

    .venv/bin/python -m bench.gateway_pipeline [--seconds 8] [--concurrency 32]
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
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp

from bench.common import LoadResult, free_port, machine, subprocess_server
from bench.gateway_process import (
    CREDENTIAL_ENV,
    NDJSON_ECHO,
    ProcessStats,
    bench_policy,
    child_cpu_seconds,
    fetch_stats,
    own_cpu_seconds,
    pct,
    post_turn,
    reset_stats,
)

Send = Callable[[int], Awaitable[bool]]
"""Sends message ``i`` (a client's number, or a scheduled message's) and says if it worked."""

CONTROL_PLANE: Final = (sys.executable, "-m", "gateway.cli", "controlplane", "serve", "--demo")
GATEWAY: Final = (sys.executable, "-m", "bench.gateway_process")
PRINCIPALS: Final = 64
CONVERSATIONS: Final = 512
MESSAGES: Final = (
    (
        "show drift for engineering",
        "scope_drift: GET /scopes?name=engineering, GET /scopes/{id}/compliance (2 calls)",
    ),
    (
        "what is pending my approval",
        "pending_approvals: GET /approvals/pending (1 call)",
    ),
)
TARGET_RATE: Final = 500.0
TARGET_P99_MS: Final = 50.0
TARGET_OWN_P95_MS: Final = 10.0


async def closed_loop(send: Send, seconds: float, concurrency: int) -> LoadResult:
    """``concurrency`` clients, each sending its next message as soon as the last is answered."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            if not await send(i):
                errors += 1
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return LoadResult(len(latencies), errors, time.perf_counter() - started, latencies)


async def open_loop(send: Send, rate: float, seconds: float) -> LoadResult:
    """``rate * seconds`` messages on a fixed schedule; latency counts from the scheduled send."""
    count = max(1, int(rate * seconds))
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()

    async def one(k: int) -> None:
        nonlocal errors
        if not await send(k):
            errors += 1
        latencies.append((time.perf_counter() - (start + k / rate)) * 1000)

    tasks = []
    for k in range(count):
        wait = start + k / rate - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(k)))
    async with asyncio.timeout(seconds + 120):
        await asyncio.gather(*tasks)
    return LoadResult(count, errors, time.perf_counter() - start, latencies)


def turns(http: aiohttp.ClientSession, url: str, tokens: list[str], text: str, tag: str) -> Send:
    """Message ``i`` from principal ``i`` mod 64 in conversation ``i`` mod 512 of that one."""

    async def send(i: int) -> bool:
        token = tokens[i % len(tokens)]
        try:
            outcome = await post_turn(http, url, token, text, f"{tag}-{i % CONVERSATIONS}")
        except (aiohttp.ClientError, TimeoutError):
            return False
        return outcome.ok

    return send


def cp_reads(http: aiohttp.ClientSession, url: str, token: str, text: str) -> Send:
    """The control-plane calls the message's tool makes, sent directly (as ana)."""
    headers = {"Authorization": f"Bearer {token}", "X-Act-As": "ana"}

    async def get(path: str, params: dict[str, str] | None = None) -> dict[str, object] | None:
        async with http.get(f"{url}/api/v1{path}", params=params, headers=headers) as resp:
            body = await resp.json()
            return body if resp.status == 200 and isinstance(body, dict) else None

    async def send(_: int) -> bool:
        try:
            if "drift" in text:
                found = await get("/scopes", {"name": "engineering", "limit": "1000"})
                items = found["items"] if found else None
                if not isinstance(items, list) or not items:
                    return False
                return await get(f"/scopes/{items[0]['id']}/compliance") is not None
            return await get("/approvals/pending") is not None
        except (aiohttp.ClientError, TimeoutError):
            return False

    return send


@dataclass
class CpuShare:
    """CPU seconds each process spent over one measurement."""

    gateway: float
    control_plane: float
    generator: float
    seconds: float
    messages: int

    def line(self) -> str:
        def share(cpu: float) -> str:
            return f"{cpu * 1000 / max(1, self.messages):.1f} ms ({cpu / self.seconds:.2f} CPU)"

        gateway = f"gateway {share(self.gateway)}, " if self.gateway else ""
        return (
            f"CPU per message (and CPUs busy): {gateway}control plane "
            f"{share(self.control_plane)}, load generator {share(self.generator)}"
        )


async def measured(
    send: Send, seconds: float, concurrency: int, *, gateway: bool
) -> tuple[LoadResult, CpuShare]:
    """A closed loop, with each process's CPU time over it."""

    def cpu() -> tuple[float, float, float]:
        return (
            child_cpu_seconds("bench.gateway_process") if gateway else 0.0,
            child_cpu_seconds("controlplane"),
            own_cpu_seconds(),
        )

    before = cpu()
    result = await closed_loop(send, seconds, concurrency)
    after = cpu()
    gw, cp, generator = (b - a for a, b in zip(before, after, strict=True))
    return result, CpuShare(gw, cp, generator, result.seconds, result.requests)


@dataclass
class MessageRun:
    """Every measurement of one message through the gateway."""

    text: str
    highest: LoadResult
    cpu: CpuShare
    half: LoadResult
    half_stats: ProcessStats
    alone: ProcessStats

    @property
    def rate(self) -> float:
        """Half the highest rate: where the latency is measured."""
        return self.highest.rps / 2


def rate_line(label: str, result: LoadResult) -> str:
    return (
        f"{label:<46} {result.rps:>7.0f} msg/s   p50 {result.pct(0.50):7.2f} ms   "
        f"p99 {result.pct(0.99):7.2f} ms   errors {result.errors}"
    )


def latency_line(label: str, result: LoadResult) -> str:
    return (
        f"{label:<46} p50 {result.pct(0.50):7.2f} ms   p99 {result.pct(0.99):7.2f} ms   "
        f"p99.9 {result.pct(0.999):7.2f} ms   errors {result.errors}/{result.requests}"
    )


def own_line(label: str, stats: ProcessStats) -> str:
    own, route = stats.own_ms, [t[1] for t in stats.turns]
    tools, total = [t[2] for t in stats.turns], [t[0] for t in stats.turns]
    return (
        f"  {label:<44} {len(own):>5} turns   turn p50 {pct(total, 0.5):6.2f}   "
        f"route p50 {pct(route, 0.5):5.2f}   tools p50 {pct(tools, 0.5):6.2f}   "
        f"own p50 {pct(own, 0.5):5.2f}  p95 {pct(own, 0.95):5.2f}  p99 {pct(own, 0.99):6.2f}"
    )


async def through_gateway(
    http: aiohttp.ClientSession, url: str, tokens: list[str], args: argparse.Namespace
) -> tuple[list[MessageRun], list[float]]:
    """Every measurement through the gateway, and the ``/healthz`` handler times (ms)."""
    for text, _ in MESSAGES:
        outcome = await post_turn(http, url, tokens[0], text, "smoke")
        if not outcome.ok:
            raise RuntimeError(f"{text!r} did not answer cleanly: {outcome.last}")
    runs = []
    for text, _ in MESSAGES:
        send = turns(http, url, tokens, text, text.split()[-1])
        await closed_loop(send, 2.0, args.concurrency)
        highest, cpu = await measured(send, args.seconds, args.concurrency, gateway=True)
        await reset_stats(http, url)
        half = await open_loop(send, highest.rps / 2, args.seconds)
        half_stats = await fetch_stats(http, url)
        await reset_stats(http, url)
        alone = turns(http, url, tokens, text, "alone")
        for i in range(args.sequential):
            await alone(i)
        runs.append(MessageRun(text, highest, cpu, half, half_stats, await fetch_stats(http, url)))
    await reset_stats(http, url)
    for _ in range(args.sequential):
        async with http.get(f"{url}/healthz") as resp:
            await resp.read()
    return runs, (await fetch_stats(http, url)).healthz_ms


async def control_plane_alone(
    url: str, token: str, args: argparse.Namespace
) -> list[tuple[str, LoadResult, CpuShare]]:
    """Each message's control-plane reads sent directly, at the same concurrency."""
    found = []
    async with aiohttp.ClientSession() as http:
        for text, _ in MESSAGES:
            send = cp_reads(http, url, token, text)
            await closed_loop(send, 1.0, args.concurrency)
            result, cpu = await measured(send, args.seconds, args.concurrency, gateway=False)
            found.append((text, result, cpu))
    return found


async def echo_baseline(
    rates: list[float], args: argparse.Namespace
) -> tuple[LoadResult, list[LoadResult]]:
    """The bare aiohttp NDJSON echo at its highest rate and at each of the gateway's half rates."""
    with subprocess_server(
        [sys.executable, "-c", NDJSON_ECHO, str(free_port()), "0"], {}, "echo:"
    ) as url:
        async with aiohttp.ClientSession() as http:
            send = turns(http, url, ["x"], "x", "echo")
            await closed_loop(send, 1.0, args.concurrency)
            highest = await closed_loop(send, args.seconds, args.concurrency)
            return highest, [await open_loop(send, rate, args.seconds) for rate in rates]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sequential", type=int, default=400, help="turns for the own share")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    one, five, _ = os.getloadavg()
    print(f"load average before the run: {one:.2f} (1 min), {five:.2f} (5 min)")
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
            cp_token = demo["goodbot-gateway"]["token"]
            tokens = bench_policy(gw_dir, PRINCIPALS, ("ana", "li"))
            with subprocess_server(
                [*GATEWAY, "--data-dir", str(gw_dir), "--cp-url", cp_url],
                {CREDENTIAL_ENV: cp_token},
                "gateway:",
            ) as gw_url:
                async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0),
                    timeout=aiohttp.ClientTimeout(total=60),
                ) as http:
                    runs, healthz = await through_gateway(http, gw_url, tokens, args)
            direct = await control_plane_alone(cp_url, cp_token, args)
    echo, echo_half = await echo_baseline([run.rate for run in runs], args)

    print(
        f"demo control plane, gateway (rules route, SQLite) and this load generator: three "
        f"processes sharing {os.cpu_count()} CPUs; {PRINCIPALS} principals, {CONVERSATIONS} "
        f"conversations"
    )
    for text, calls in MESSAGES:
        print(f"  {text!r} → {calls}")
    print(f"highest rate: {args.concurrency} concurrent clients, closed loop, {args.seconds:g} s")
    print(rate_line("baseline: bare aiohttp NDJSON echo", echo))
    for run in runs:
        print(rate_line(repr(run.text), run.highest))
        print(f"    {run.cpu.line()}")
    for text, result, cpu in direct:
        print(rate_line(f"control plane alone, {text!r}'s reads"[:46], result))
        print(f"    {cpu.line()}")
    print(
        f"at half the highest rate: open loop, latency from the scheduled send, {args.seconds:g} s"
    )
    for run, baseline in zip(runs, echo_half, strict=True):
        print(latency_line(f"baseline: echo at {run.rate:.0f} msg/s", baseline))
        print(latency_line(f"{run.text!r} at {run.rate:.0f} msg/s", run.half))
        lags = run.half_stats.lags_ms
        print(f"    gateway event-loop lag p99 {pct(lags, 0.99):.2f} ms, max {max(lags):.2f} ms")
    print("the gateway's own share of a turn (ms): turn handler time minus route and tool time")
    print(
        f"  {'baseline: GET /healthz, same timer':<44} {len(healthz):>5} calls   "
        f"p50 {pct(healthz, 0.5):.3f}  p95 {pct(healthz, 0.95):.3f}  p99 {pct(healthz, 0.99):.3f}"
    )
    for run in runs:
        print(own_line(f"{run.text!r}, one client", run.alone))
        print(own_line(f"{run.text!r} at {run.rate:.0f} msg/s", run.half_stats))
    print(
        f"targets: ≥ {TARGET_RATE:.0f} msg/s; p99 ≤ {TARGET_P99_MS:.0f} ms at half the highest "
        f"rate; own share p95 ≤ {TARGET_OWN_P95_MS:.0f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
