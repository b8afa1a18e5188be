"""Benchmark: 2,000 concurrent conversations through the openai route, model answering in 1 s.

The gateway runs in its own process (``bench.gateway_process``: ``build_gateway``/``build_app``
with ``GatewaySettings.model`` set to the openai route, SQLite, the demo control plane in a
third process). This process holds the fake model (``tests.fakes.openai_server.FakeOpenAI``,
every answer delayed by ``--model-seconds``) and sends ``--conversations`` messages at once,
each in a conversation of its own, over the CLI channel. Afterwards it counts the replies
stored in the gateway's database, and reads from the gateway process its peak and current RSS
(``/proc/self/status``), its event-loop lag (an ``asyncio.sleep(0.01)`` probe) and each
turn's own share (handler time minus model and tool time).

Four runs, each a fresh gateway: the baseline, a bare aiohttp server that answers the same
POST with NDJSON after sleeping as long as the model (same lag probe); the openai route as
``GatewaySettings`` builds it (the openai package's client, whose pool holds 1,000
connections); the same with an ``http_client`` whose pool holds all of them; and with that
client, a model that first calls a read-only tool (``pending_approvals``: one control-plane
call) and answers with its result after a second delayed call.

    .venv/bin/python -m bench.gateway_model_load [--conversations 2000] [--model-seconds 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp

from bench.common import free_port, machine, subprocess_server
from bench.gateway_process import (
    CREDENTIAL_ENV,
    NDJSON_ECHO,
    ProcessStats,
    TurnOutcome,
    bench_policy,
    fetch_stats,
    pct,
    post_turn,
    reset_stats,
)
from tests.fakes.openai_server import FakeOpenAI, Step, answer_after, call_named_tool, delay

CONTROL_PLANE: Final = (sys.executable, "-m", "gateway.cli", "controlplane", "serve", "--demo")
GATEWAY: Final = (sys.executable, "-m", "bench.gateway_process")
PRINCIPALS: Final = 50
PLAIN: Final = "summarise the state of my fleet in one line"
TOOL: Final = "run pending_approvals and tell me what it says"
TARGET_RSS_MB: Final = 400
TARGET_LAG_P99_MS: Final = 50.0


@dataclass(frozen=True)
class Burst:
    """One run: every message sent at once, and what came back."""

    label: str
    seconds: float
    latencies_ms: list[float]
    outcomes: list[TurnOutcome | None]
    """None for a message whose request failed (connection, timeout)."""
    stats: ProcessStats
    rss_before_kb: int
    cpu_before: float
    """The server's CPU seconds when the burst began."""
    stored: int | None
    """Replies stored in the gateway's database by this run; None for the baseline."""
    model_requests: int | None

    @property
    def done(self) -> int:
        """Messages whose stream ended with ``done``."""
        return sum(1 for o in self.outcomes if o is not None and o.last.get("type") == "done")

    @property
    def clean(self) -> int:
        """Messages answered with every tool call ``ok``."""
        return sum(1 for o in self.outcomes if o is not None and o.ok)

    def line(self) -> str:
        lat, lags = self.latencies_ms, self.stats.lags_ms
        stored = "—" if self.stored is None else str(self.stored)
        return (
            f"{self.label:<40} {self.done:>5} {self.clean:>5} {stored:>6} {self.seconds:6.2f} s"
            f" {pct(lat, 0.5) / 1000:6.2f} {pct(lat, 0.99) / 1000:6.2f} {max(lat) / 1000:6.2f} s"
            f" {pct(lags, 0.99):7.2f} {max(lags):7.2f} ms"
            f" {self.rss_before_kb / 1024:7.0f} {self.stats.hwm_kb / 1024:6.0f}"
            f" {self.stats.rss_kb / 1024:6.0f} MiB"
        )


HEADER: Final = (
    f"{'':<40} {'done':>5} {'clean':>5} {'stored':>6} {'wall':>8} {'p50':>6} {'p99':>6}"
    f" {'max':>6}   {'lag p99':>7} {'max':>7}    {'RSS':>7} {'peak':>6} {'after':>6}"
)


async def burst(
    label: str,
    url: str,
    tokens: list[str],
    text: str,
    count: int,
    *,
    database: Path | None = None,
    model: FakeOpenAI | None = None,
) -> Burst:
    """Send ``count`` messages at once, each in its own conversation; wait for every answer."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=300)
    ) as http:
        warm = await post_turn(http, url, tokens[0], text, "warm-up")
        if warm.last.get("type") != "done":
            raise RuntimeError(f"{label}: the warm-up turn failed: {warm.last}")
        before = replies(database)
        asked = len(model.requests) if model is not None else 0
        ready = await fetch_stats(http, url)
        await reset_stats(http, url)
        latencies: list[float] = []

        async def one(i: int) -> TurnOutcome | None:
            started = time.perf_counter()
            try:
                return await post_turn(http, url, tokens[i % len(tokens)], text, f"conv-{i}")
            except (aiohttp.ClientError, TimeoutError):
                return None
            finally:
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        async with asyncio.timeout(360):
            outcomes = await asyncio.gather(*(one(i) for i in range(count)))
        seconds = time.perf_counter() - started
        stats = await fetch_stats(http, url)
    after = replies(database)
    return Burst(
        label,
        seconds,
        latencies,
        list(outcomes),
        stats,
        ready.rss_kb,
        ready.cpu_seconds,
        None if after is None or before is None else after - before,
        None if model is None else len(model.requests) - asked,
    )


def replies(database: Path | None) -> int | None:
    """Outbound messages stored in a gateway database (read beside the running gateway)."""
    if database is None:
        return None
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as db:
        (count,) = db.execute("SELECT count(*) FROM messages WHERE direction = 'out'").fetchone()
    return int(count)


@contextmanager
def gateway(
    root: Path, name: str, cp_url: str, cp_token: str, model_url: str, connections: int
) -> Iterator[tuple[str, list[str], Path]]:
    """A fresh gateway process on the openai route; its URL, CLI tokens and database."""
    data = root / name
    data.mkdir()
    tokens = bench_policy(data, PRINCIPALS, ("ana", "li"))
    args = [*GATEWAY, "--data-dir", str(data), "--cp-url", cp_url, "--model-url", model_url]
    if connections:
        args += ["--model-connections", str(connections)]
    with subprocess_server(args, {CREDENTIAL_ENV: cp_token}, "gateway:") as url:
        yield url, tokens, data / "gateway.db"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--model-seconds", type=float, default=1.0)
    args = parser.parse_args()
    count, wait = args.conversations, args.model_seconds
    print(f"machine: {machine()}")
    one, five, _ = os.getloadavg()
    print(f"load average before the run: {one:.2f} (1 min), {five:.2f} (5 min)")
    runs = []
    with subprocess_server(
        [sys.executable, "-c", NDJSON_ECHO, str(free_port()), str(wait)], {}, "echo:"
    ) as echo:
        runs.append(
            await burst(f"baseline: bare aiohttp, sleeps {wait:g} s", echo, ["x"], "x", count)
        )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with subprocess_server(
            [*CONTROL_PLANE, "--data-dir", str(root / "cp"), "--port", str(free_port())],
            {
                "GOODBOT_CP_RATE_LIMIT_PER_SECOND": "1000000",
                "GOODBOT_CP_RATE_LIMIT_BURST": "1000000",
                "GOODBOT_CP_SIMULATOR_ENABLED": "false",
            },
            "control plane:",
        ) as cp_url:
            demo = json.loads((root / "cp" / "demo-tokens.json").read_text())["tokens"]
            cp_token = demo["goodbot-gateway"]["token"]
            wide = count + 500

            def tool_then_answer(body: dict[str, Any]) -> Step:
                return delay(wait, call_named_tool(body))

            plans = (
                ("openai route, package client", "default", answer_after(wait), 0, PLAIN),
                (f"openai route, pool of {wide}", "wide", answer_after(wait), wide, PLAIN),
                (f"tool, then answer; pool of {wide}", "tool", tool_then_answer, wide, TOOL),
            )
            for label, name, fallback, connections, text in plans:
                async with FakeOpenAI(fallback=fallback) as model:
                    with gateway(root, name, cp_url, cp_token, model.base_url, connections) as (
                        url,
                        tokens,
                        database,
                    ):
                        runs.append(
                            await burst(
                                label, url, tokens, text, count, database=database, model=model
                            )
                        )
    print(
        f"{count} conversations, one message each, all sent at once; the model answers after "
        f"{wait:g} s; gateway (SQLite) and demo control plane in their own processes, fake model"
        f" and load generator in this one, all on {os.cpu_count()} CPUs"
    )
    print(HEADER)
    for run in runs:
        print(run.line())
    for run in runs:
        cpu = run.stats.cpu_seconds - run.cpu_before
        print(
            f"  {run.label}: server CPU {cpu:.1f} s in {run.seconds:.1f} s"
            f" ({cpu / run.seconds:.2f} of a CPU)"
            + ("" if run.model_requests is None else f"; model requests {run.model_requests}")
        )
        if not run.stats.turns:
            continue
        own, model_ms = run.stats.own_ms, [t[1] for t in run.stats.turns]
        tools = [t[2] for t in run.stats.turns]
        print(
            f"    per turn: model p50 {pct(model_ms, 0.5):.0f} ms, tools p50 {pct(tools, 0.5):.0f}"
            f" ms p99 {pct(tools, 0.99):.0f} ms; the gateway's own share p50 {pct(own, 0.5):.0f}"
            f" ms, p95 {pct(own, 0.95):.0f} ms, p99 {pct(own, 0.99):.0f} ms ({len(own)} turns)"
        )
        failed = [o.last for o in run.outcomes if o is not None and not o.ok][:1]
        if failed:
            print(f"    first answer that was not clean: {json.dumps(failed[0])[:300]}")
    print(
        f"targets: all {count} answered and stored; peak RSS ≤ {TARGET_RSS_MB} MB; "
        f"event-loop lag p99 ≤ {TARGET_LAG_P99_MS:.0f} ms"
    )
    one, five, _ = os.getloadavg()
    print(f"load average after the run: {one:.2f} (1 min), {five:.2f} (5 min)")


if __name__ == "__main__":
    asyncio.run(main())
