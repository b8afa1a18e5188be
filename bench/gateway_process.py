"""Benchmark support: a gateway in its own process, timed from inside, and a CLI-channel client.

The gateway benchmarks (``bench.gateway_pipeline``, ``bench.gateway_model_load``) run the
gateway the way a deployment does, in a process of its own, so its memory and event loop are
its own. This module is that process::

    BENCH_CP_TOKEN=… .venv/bin/python -m bench.gateway_process --data-dir D --cp-url URL \
        [--model-url URL --model NAME [--model-connections N]]

It wires the gateway with ``build_gateway`` and ``build_app`` exactly as ``goodbot serve`` does
(rules route, or the openai route built from ``GatewaySettings.model``), then adds three
things the gateway does not have, none of which changes a turn:

- a timer around ``POST /cli/v1/turns`` and ``GET /healthz``: the handler's wall time, from
  the request's arrival at the handler to the last NDJSON line written;
- an ``AgentLoop`` subclass that adds each turn's ``TurnResult.model_seconds`` and
  ``tool_seconds`` to that request's timing record, so turn time minus route and tool time
  is the gateway's own share (admission, storage, audit, policy, redaction, streaming);
- an event-loop lag probe: ``asyncio.sleep(0.01)`` in a loop, recording how late it wakes.

``GET /bench/stats`` returns the raw samples with the process's RSS, peak RSS (``VmHWM``) and
CPU seconds; ``POST /bench/reset`` clears the samples. ``--model-connections`` passes the
openai route an ``http_client`` whose pool holds that many connections instead of the openai
package's default (1,000).

The client side: ``bench_policy`` writes the demo policy with a high rate limit and extra
principals, ``post_turn`` speaks the CLI channel's protocol, and ``NDJSON_ECHO`` is the bare
aiohttp baseline that answers a POST with three NDJSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import httpx2
import openai
import orjson
import yaml
from aiohttp import web

from agent.loop import AgentLoop
from agent.openai_route import OpenAIRoute
from agent.route import Route
from agent.turn import Emit, Turn, TurnResult
from gateway.app import build_app, build_gateway, close_gateway
from gateway.bootstrap import demo_policy, token_identity
from gateway.settings import GatewaySettings, ModelSettings, NotificationSettings

CREDENTIAL_ENV: Final = "BENCH_CP_TOKEN"
"""Environment variable carrying the gateway's control-plane credential to the process."""
SAMPLES_MAX: Final = 500_000
"""Most samples of each kind kept between resets (memory stays bounded)."""
LAG_INTERVAL: Final = 0.01

NDJSON_ECHO: Final = """
import asyncio, resource, sys, time
from aiohttp import web

DELAY = float(sys.argv[2])
lags = []

async def turn(request):
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    await response.write(b'{"type":"accepted"}\\n')
    if DELAY:
        await asyncio.sleep(DELAY)
    await response.write(b'{"type":"reply","text":"ok"}\\n{"type":"done","result":{}}\\n')
    await response.write_eof()
    return response

async def stats(request):
    status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
    kb = lambda k: int(status[k].split()[0])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return web.json_response({"lags": lags, "rss_kb": kb("VmRSS"), "hwm_kb": kb("VmHWM"),
                              "cpu_seconds": usage.ru_utime + usage.ru_stime})

async def reset(request):
    lags.clear()
    return web.json_response({})

async def probe(app):
    async def run():
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - start - 0.01)
    task = asyncio.create_task(run())
    yield
    task.cancel()

app = web.Application()
app.router.add_post("/cli/v1/turns", turn)
app.router.add_get("/bench/stats", stats)
app.router.add_post("/bench/reset", reset)
app.cleanup_ctx.append(probe)
port = int(sys.argv[1])
web.run_app(app, host="127.0.0.1", port=port, access_log=None,
            print=lambda _: print(f"echo: http://127.0.0.1:{port}", flush=True))
"""
"""The baseline server: ``POST /cli/v1/turns`` answers ``accepted``, waits ``argv[2]`` seconds,
then ``reply`` and ``done``; it has the same lag probe and ``/bench/stats`` as the gateway."""


# --- the client side ---------------------------------------------------------------------------


def bench_policy(data_dir: Path, principals: int, acting_as: tuple[str, ...]) -> list[str]:
    """Write the demo policy into ``data_dir`` with the rate limit raised and ``principals``
    more principals (``bench-000`` …, viewer and approver, each acting on the control plane as
    one of ``acting_as`` in turn); return their CLI tokens in order."""
    path = demo_policy(data_dir)
    document = yaml.safe_load(path.read_text())
    # The demo allows 60 messages a minute per principal; a load test is not a person.
    document["defaults"]["rate_limit_per_minute"] = 10_000_000
    tokens = []
    for n in range(principals):
        token = "gbc_bench_" + secrets.token_urlsafe(24)
        document["principals"][f"bench-{n:03d}"] = {
            "roles": ["viewer", "approver"],
            "control_plane_principal": acting_as[n % len(acting_as)],
            "identities": [{"channel": "cli", "id": token_identity(token)}],
        }
        tokens.append(token)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return tokens


@dataclass(frozen=True, slots=True)
class TurnOutcome:
    """What one ``POST /cli/v1/turns`` came back with, as the load generator judges it."""

    ok: bool
    """HTTP 200, the stream ended with ``done``, and every tool call's status was ``ok``."""
    status: int
    last: dict[str, Any]
    """The stream's last NDJSON event (or the error body)."""


async def post_turn(
    http: aiohttp.ClientSession, url: str, token: str, text: str, conversation: str
) -> TurnOutcome:
    """One turn over the CLI channel; the whole NDJSON stream is read before returning."""
    async with http.post(
        f"{url}/cli/v1/turns",
        json={"text": text, "conversation": conversation},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        body = await resp.read()
    lines = body.strip().rsplit(b"\n", 1)
    try:
        last = orjson.loads(lines[-1]) if lines[-1] else {}
    except orjson.JSONDecodeError:
        last = {"unparsed": lines[-1][:200].decode(errors="replace")}
    calls = last.get("result", {}).get("calls", []) if last.get("type") == "done" else []
    ok = (
        resp.status == 200
        and last.get("type") == "done"
        and all(c.get("status") == "ok" for c in calls)
    )
    return TurnOutcome(ok, resp.status, last)


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """``GET /bench/stats`` of a gateway process (or the echo baseline)."""

    lags_ms: list[float]
    turns: list[tuple[float, float, float]]
    """(turn, route, tools) milliseconds per timed turn."""
    healthz_ms: list[float]
    rss_kb: int
    hwm_kb: int
    cpu_seconds: float

    @property
    def own_ms(self) -> list[float]:
        """The gateway's own share of each turn: turn time minus route and tool time."""
        return [total - route - tools for total, route, tools in self.turns]


async def fetch_stats(http: aiohttp.ClientSession, url: str) -> ProcessStats:
    """Read a server's samples and memory figures."""
    async with http.get(f"{url}/bench/stats") as resp:
        data = await resp.json()
    return ProcessStats(
        [s * 1000 for s in data["lags"]],
        [(t * 1000, r * 1000, u * 1000) for t, r, u in data.get("turns", [])],
        [s * 1000 for s in data.get("healthz", [])],
        int(data["rss_kb"]),
        int(data["hwm_kb"]),
        float(data.get("cpu_seconds", 0.0)),
    )


async def reset_stats(http: aiohttp.ClientSession, url: str) -> None:
    """Clear a server's samples."""
    async with http.post(f"{url}/bench/reset") as resp:
        resp.raise_for_status()


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank, as ``bench.common.LoadResult.pct``); NaN when empty."""
    if not values:
        return float("nan")
    data = sorted(values)
    return data[min(len(data) - 1, int(q * len(data)))]


def child_cpu_seconds(marker: str) -> float:
    """CPU seconds (user + system) of this process's child whose command line holds ``marker``."""
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    return (int(fields[11]) + int(fields[12])) / tick
    return float("nan")


def memory_kb() -> tuple[int, int]:
    """This process's resident set and its peak (``VmRSS``, ``VmHWM``), in KiB."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


def own_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the gateway process -----------------------------------------------------------------------


@dataclass
class Samples:
    """What the gateway process records between resets."""

    lags: list[float] = field(default_factory=list)
    turns: list[tuple[float, float, float]] = field(default_factory=list)
    healthz: list[float] = field(default_factory=list)

    def clear(self) -> None:
        self.lags.clear()
        self.turns.clear()
        self.healthz.clear()


SAMPLES = web.AppKey("bench_samples", Samples)


@dataclass
class _Timing:
    """One turn request's route and tool seconds, filled in by ``TimedLoop``."""

    route: float = 0.0
    tools: float = 0.0
    ran: bool = False
    """False when the request never reached the agent loop (refused, or a duplicate)."""


_TIMING: ContextVar[_Timing | None] = ContextVar("bench_timing", default=None)


class TimedLoop(AgentLoop):
    """The gateway's agent loop, reporting each turn's route and tool time to the timer."""

    async def run(self, turn: Turn, emit: Emit) -> TurnResult:
        result = await super().run(turn, emit)
        timing = _TIMING.get()
        if timing is not None:
            timing.route += result.model_seconds
            timing.tools += result.tool_seconds
            timing.ran = True
        return result


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def timer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time ``POST /cli/v1/turns`` (only turns that reached the agent loop) and ``/healthz``."""
    samples = request.app[SAMPLES]
    if request.path == "/healthz":
        started = time.perf_counter()
        response = await handler(request)
        if len(samples.healthz) < SAMPLES_MAX:
            samples.healthz.append(time.perf_counter() - started)
        return response
    if request.path != "/cli/v1/turns":
        return await handler(request)
    timing = _Timing()
    token = _TIMING.set(timing)
    started = time.perf_counter()
    try:
        return await handler(request)
    finally:
        elapsed = time.perf_counter() - started
        _TIMING.reset(token)
        if timing.ran and len(samples.turns) < SAMPLES_MAX:
            samples.turns.append((elapsed, timing.route, timing.tools))


async def lag_probe(app: web.Application) -> AsyncIterator[None]:
    """Record how late ``asyncio.sleep(0.01)`` wakes, for as long as the app runs."""
    samples = app[SAMPLES]

    async def probe() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(LAG_INTERVAL)
            if len(samples.lags) < SAMPLES_MAX:
                samples.lags.append(time.perf_counter() - started - LAG_INTERVAL)

    task = asyncio.create_task(probe())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def stats(request: web.Request) -> web.Response:
    """``GET /bench/stats``: the samples, RSS, peak RSS and CPU seconds of this process."""
    samples = request.app[SAMPLES]
    rss_kb, hwm_kb = memory_kb()
    return web.json_response(
        {
            "lags": samples.lags,
            "turns": samples.turns,
            "healthz": samples.healthz,
            "rss_kb": rss_kb,
            "hwm_kb": hwm_kb,
            "cpu_seconds": own_cpu_seconds(),
        },
        dumps=lambda value: orjson.dumps(value).decode(),
    )


async def reset(request: web.Request) -> web.Response:
    """``POST /bench/reset``: clear the samples."""
    request.app[SAMPLES].clear()
    return web.json_response({})


async def serve(args: argparse.Namespace) -> None:
    """Build the gateway as ``goodbot serve`` does, add the timers, serve until SIGTERM."""
    model = (
        ModelSettings(route="openai", base_url=args.model_url, model=args.model)
        if args.model_url
        else ModelSettings()
    )
    settings = GatewaySettings(
        data_dir=args.data_dir, notifications=NotificationSettings(enabled=False), model=model
    )
    route: Route | None = None
    if args.model_url and args.model_connections:
        n = args.model_connections
        route = OpenAIRoute(
            base_url=args.model_url,
            model=args.model,
            api_key=None,
            timeout=settings.model.timeout_seconds,
            http_client=openai.DefaultAsyncHttpxClient(
                limits=httpx2.Limits(max_connections=n, max_keepalive_connections=n)
            ),
        )
    gateway = await build_gateway(
        settings,
        cp_url=args.cp_url,
        cp_token=os.environ[CREDENTIAL_ENV],
        policy_path=args.data_dir / "policy.yaml",
        route=route,
    )
    timed = TimedLoop(
        gateway.route, gateway.executor, max_steps=settings.max_steps, history=settings.history
    )
    gateway.loop = gateway.turns.loop = timed
    app = build_app(gateway)
    app[SAMPLES] = Samples()
    app.middlewares.append(timer)
    app.cleanup_ctx.append(lag_probe)
    app.router.add_get("/bench/stats", stats)
    app.router.add_post("/bench/reset", reset)
    runner = web.AppRunner(app, access_log=None)
    try:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        print(f"gateway: http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await close_gateway(gateway)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--cp-url", required=True)
    parser.add_argument("--model-url", default=None)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--model-connections", type=int, default=0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
