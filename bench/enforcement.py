"""Benchmark: enforcement checks in process and through HTTP, each beside a same-run baseline.

1. ``controlplane.enforcement.check`` over a mix of requests against a realistic effective
   policy (hundreds of rules, pins, guards, upgrade windows) and a 300-package inventory,
   timed call by call, beside a bare dict-lookup loop timed the same way.
2. ``POST /api/v1/enforcement/check`` on a control plane started in this process on SQLite in
   a temporary directory (``create_app`` and an aiohttp runner on 127.0.0.1:0), with tenant,
   bundles, devices and inventories created through the API, driven at a steady (open-loop)
   request rate, beside a bare aiohttp JSON echo handler served and driven the same way.
   Latency runs from each request's scheduled start, so a stall is not hidden by sending
   later (no coordinated omission).

    .venv/bin/python bench/enforcement.py [--rate 200] [--seconds 10] [--calls 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import echo_server, free_port, subprocess_server
from controlplane.app import create_app
from controlplane.effective import EffectivePolicy, ScopeInfo, resolve
from controlplane.enforcement import EnforcementRequest, Installed, check
from controlplane.policy_model import PolicyBundle
from controlplane.settings import ControlPlaneSettings

PIN_TARGET_P99_US = 50.0
HTTP_TARGET_P99_MS = 5.0


def machine() -> str:
    """One line naming the machine and the software the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.node()} · {platform.platform()} · {cpu} · {os.cpu_count()} CPUs · "
        f"Python {platform.python_version()} · SQLite {sqlite3.sqlite_version}"
    )


def load() -> str:
    """The load average, so a run on a machine busy with other work shows it."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


# --- the policy and fleet under test -----------------------------------------------------------


def bundles(org: str, team: str) -> list[dict[str, Any]]:
    """An organization baseline and a stricter team bundle, sized like a real tenant's."""
    pkg = [{"manager": "brew", "name": f"tool-{i}", "versions": ">=1.0,<9"} for i in range(300)]
    return [
        {
            "policy_id": "org-baseline",
            "policy_version": 1,
            "scope_bindings": [org],
            "allowed_packages": pkg + [{"manager": "pip", "name": f"lib-{i}"} for i in range(100)],
            "required_packages": [{"manager": "brew", "name": f"agent-{i}"} for i in range(30)],
            "denied_packages": [{"manager": "brew", "name": f"bad-{i}"} for i in range(50)],
            "pin_rules": [
                {"manager": "brew", "name": f"tool-{i}", "version": "2.0"} for i in range(0, 80, 2)
            ],
            "guarded_action_rules": [
                {"action": "upgrade", "manager": "softwareupdate"},
                {"action": "uninstall", "name": "agent-0"},
            ],
        },
        {
            "policy_id": "team-strict",
            "policy_version": 1,
            "scope_bindings": [team],
            "default_package_action": "deny",
            "denied_packages": [{"manager": "brew", "name": "tool-299"}],
            "upgrade_windows": [
                {
                    "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                    "start": "00:00",
                    "end": "23:59",
                    "timezone": "Europe/Berlin",
                },
            ],
        },
    ]


def inventory() -> list[dict[str, Any]]:
    """A 300-package inventory with some local pins."""
    return [
        {"manager": "brew", "name": f"tool-{i}", "version": "2.0", "pinned": i % 25 == 0}
        for i in range(270)
    ] + [{"manager": "brew", "name": f"agent-{i}", "version": "1.0"} for i in range(30)]


REQUESTS: list[tuple[str, str | None, str | None]] = [
    ("install", "tool-7", "3.1"),  # allowed by an org rule in range
    ("install", "tool-7", "9.5"),  # outside the range
    ("install", "bad-3", "1.0"),  # denied
    ("install", "unknown", "1.0"),  # team default deny
    ("upgrade", "tool-9", "3.0"),  # inside the window
    ("upgrade", "tool-4", "3.0"),  # pinned
    ("uninstall", "agent-3", None),  # required
    ("upgrade_all", None, None),
    ("list", None, None),
    ("pin", "tool-2", "2.0"),
]


# --- 1. in process -----------------------------------------------------------------------------


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    data = sorted(samples)
    n = len(data)
    return data[n // 2], data[min(n - 1, int(n * 0.99))], data[min(n - 1, int(n * 0.999))]


def in_process(calls: int) -> None:
    org = ScopeInfo("org", "organization", "/org/")
    team = ScopeInfo("team", "team", "/org/team/")
    policy = resolve([PolicyBundle.model_validate(b) for b in bundles("org", "team")], [org, team])
    assert isinstance(policy, EffectivePolicy)
    installed = Installed.from_rows(
        [[p["manager"], p["name"], p["version"], p.get("pinned", False)] for p in inventory()]
    )
    requests = [EnforcementRequest("brew", a, p, v) for a, p, v in REQUESTS]
    now = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)
    for request in requests:  # warm the per-policy index and the range caches
        check(policy, "managed-enforced", request, installed, now)
    table = {f"k{i}": i for i in range(1000)}
    keys = [f"k{random.randrange(1000)}" for _ in range(1024)]
    clock = time.perf_counter_ns

    gc.collect()
    base: list[float] = []
    for i in range(calls):
        key = keys[i & 1023]
        start = clock()
        table.get(key)
        base.append((clock() - start) / 1000)
    timed: list[float] = []
    n = len(requests)
    for i in range(calls):
        request = requests[i % n]
        start = clock()
        check(policy, "managed-enforced", request, installed, now)
        timed.append((clock() - start) / 1000)

    print(f"in process, {calls} calls each (µs per call, timer overhead included in both)")
    for label, samples in (("dict lookup (baseline)", base), ("enforcement.check", timed)):
        p50, p99, p999 = percentiles(samples)
        print(f"  {label:<28} p50 {p50:7.2f}   p99 {p99:7.2f}   p99.9 {p999:7.2f}")
    p99 = percentiles(timed)[1]
    verdict = "meets" if p99 <= PIN_TARGET_P99_US else "MISSES"
    print(f"  target p99 <= {PIN_TARGET_P99_US:.0f} µs: {verdict}")


# --- 2. through HTTP ---------------------------------------------------------------------------


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server  # aiohttp exposes the bound port only through the server's sockets
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, f"http://127.0.0.1:{port}"


async def seed(
    http: aiohttp.ClientSession, url: str, boot: str, devices: int
) -> tuple[str, list[str]]:
    """Tenant, scopes, bundles, an endpoint credential and enforced devices with inventories."""

    async def post(path: str, body: dict[str, Any], token: str) -> Any:
        async with http.post(
            url + path, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as r:
            data = await r.json()
            if r.status >= 300:
                raise RuntimeError(f"{path}: {r.status} {data}")
            return data

    tenant = await post("/api/v1/tenants", {"name": "bench"}, boot)
    owner, root = tenant["owner_token"], tenant["root_scope_id"]
    dept = (
        await post(
            "/api/v1/scopes", {"parent_id": root, "level": "department", "name": "eng"}, owner
        )
    )["id"]
    team = (
        await post(
            "/api/v1/scopes", {"parent_id": dept, "level": "team", "name": "platform"}, owner
        )
    )["id"]
    for bundle in bundles(root, team):
        await post("/api/v1/policies", {"bundle": bundle}, owner)
    agent = await post(
        "/api/v1/principals",
        {"name": "endpoint-agent", "kind": "service", "roles": ["endpoint_ops"], "scope_id": dept},
        owner,
    )
    token = (await post(f"/api/v1/principals/{agent['id']}/tokens", {"name": "bench"}, owner))[
        "token"
    ]
    ids = []
    for n in range(devices):
        device = await post(
            "/api/v1/devices",
            {
                "name": f"mac-{n}",
                "platform": "macos",
                "managed_mode": "managed-enforced",
                "scope_ids": [team],
            },
            owner,
        )
        await post(
            f"/api/v1/devices/{device['id']}/inventory",
            {"sequence": 1, "packages": inventory()},
            owner,
        )
        ids.append(device["id"])
    return token, ids


Send = Callable[[int], Awaitable[int]]


class FullCollections:
    """Gen-2 garbage collections (they stop the event loop) seen between ``reset`` calls."""

    def __init__(self) -> None:
        self.pauses_ms: list[float] = []
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses_ms.append((time.perf_counter() - self._started) * 1000)

    def reset(self) -> str:
        pauses, self.pauses_ms = self.pauses_ms, []
        longest = max(pauses, default=0.0)
        return f"gen-2 GC {len(pauses)}x, longest {longest:.0f} ms"


class Attribution:
    """Time spent in the steps of a check, by wrapping them (``--attribute``)."""

    def __init__(self) -> None:
        import controlplane.api.enforcement as handler
        import controlplane.http as http

        self.samples: dict[str, list[float]] = {}
        for module, name, label in (
            (http, "_authenticate", "token auth (http._authenticate)"),
            (handler, "_device", "device facts (cached up to FACTS_TTL)"),
            (handler, "_installed", "inventory (cached per sequence)"),
            (handler, "_tenant_policy", "tenant policy (revision cache)"),
            (handler, "_record", "enforcement_decided event"),
        ):
            setattr(module, name, self._timed(getattr(module, name), label))

    def _timed(self, fn: Callable[..., Awaitable[Any]], label: str) -> Callable[..., Any]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.samples.setdefault(label, []).append((time.perf_counter() - start) * 1000)

        return timed

    def reset(self) -> None:
        for label, samples in self.samples.items():
            p50, p99, _ = percentiles(samples)
            print(f"      {label:<40} n {len(samples):5}   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
        self.samples = {}


async def steady(send: Send, rate: float, seconds: float) -> tuple[list[float], int]:
    """Send request ``i`` at ``start + i / rate`` whatever earlier ones are doing."""
    latencies: list[float] = []
    errors = 0
    interval = 1.0 / rate
    total = int(rate * seconds)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05

    async def one(i: int, due: float) -> None:
        nonlocal errors
        status = await send(i)
        latencies.append((loop.time() - due) * 1000)
        if status != 200:
            errors += 1

    # Only running tasks are held (a strong reference is needed while they run): keeping all
    # of them would promote thousands of objects into the oldest GC generation and make
    # the bench itself the cause of full collections.
    running: set[asyncio.Task[None]] = set()
    for i in range(total):
        due = start + i * interval
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i, due))
        running.add(task)
        task.add_done_callback(running.discard)
    while running:
        await asyncio.gather(*running)
    return latencies, errors


def report(label: str, latencies: list[float], errors: int, seconds: float, gcs: str) -> float:
    p50, p99, p999 = percentiles(latencies)
    print(
        f"  {label:<36} {len(latencies) / seconds:4.0f} req/s  p50 {p50:6.2f} ms  "
        f"p99 {p99:6.2f} ms  p99.9 {p999:6.2f} ms  max {max(latencies):6.2f} ms  "
        f"errors {errors}  ({gcs})"
    )
    return p99


async def echo_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response(await request.json())

    app = web.Application()
    app.router.add_post("/echo", echo)
    return app


async def through_http(
    rate: float, seconds: float, devices: int, attribute: bool, in_process: bool
) -> None:
    import controlplane.api.enforcement as handler

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        boot = "boot-" + uuid.uuid4().hex
        # The rate limit is raised so the bench measures the check, not the limiter (the
        # default, 200/s per principal, would sit exactly at the offered rate).
        settings = ControlPlaneSettings(
            data_dir=Path(tmp),
            bootstrap_token=boot,
            rate_limit_per_second=100_000,
            rate_limit_burst=100_000,
        )
        runners: list[web.AppRunner] = []
        if in_process:
            cp_runner, cp_url = await serve(await create_app(settings))
            echo_runner, echo_url = await serve(await echo_app())
            runners = [cp_runner, echo_runner]
        else:
            # The deployed shape: the control plane in its own process (the real serve
            # command), the echo baseline in another, this process only sends.
            cp_url = stack.enter_context(
                subprocess_server(
                    [
                        sys.executable,
                        "-m",
                        "gateway.cli",
                        "controlplane",
                        "serve",
                        "--data-dir",
                        tmp,
                        "--port",
                        str(free_port()),
                    ],
                    {
                        "GOODBOT_CP_BOOTSTRAP_TOKEN": boot,
                        "GOODBOT_CP_RATE_LIMIT_PER_SECOND": "100000",
                        "GOODBOT_CP_RATE_LIMIT_BURST": "100000",
                    },
                    "control plane:",
                )
            )
            echo_url = stack.enter_context(echo_server())
        connector = aiohttp.TCPConnector(limit=64)
        try:
            async with aiohttp.ClientSession(connector=connector) as http:
                token, ids = await seed(http, cp_url, boot, devices)
                auth = {"Authorization": f"Bearer {token}"}

                def body(i: int, mix: list[tuple[str, str | None, str | None]]) -> dict[str, Any]:
                    action, package, version = mix[i % len(mix)]
                    out: dict[str, Any] = {
                        "device_id": ids[i % len(ids)],
                        "manager": "brew",
                        "action": action,
                    }
                    if package is not None:
                        out["package"] = package
                    if version is not None:
                        out["version"] = version
                    return out

                allow_mix = [
                    r
                    for r in REQUESTS
                    if r[0] in ("list", "upgrade_all", "pin")
                    or (r[1] in ("tool-7", "tool-9") and r[2] in ("3.1", "3.0"))
                ]
                deny_mix = allow_mix * 3 + [("install", "bad-3", "1.0")]

                def check_sender(mix: list[tuple[str, str | None, str | None]]) -> Send:
                    async def send(i: int) -> int:
                        async with http.post(
                            f"{cp_url}/api/v1/enforcement/check", json=body(i, mix), headers=auth
                        ) as r:
                            await r.read()
                            return r.status

                    return send

                async def echo(i: int) -> int:
                    async with http.post(f"{echo_url}/echo", json=body(i, allow_mix)) as r:
                        await r.read()
                        return r.status

                for send in (echo, check_sender(allow_mix), check_sender(deny_mix)):
                    await steady(send, rate, 1.0)  # warm connections, caches, code paths
                shape = (
                    "one process and event loop (client and server)"
                    if in_process
                    else "server and echo each in their own process"
                )
                print(
                    f"through HTTP, {rate:.0f} requests/s for {seconds:.0f} s each, "
                    f"{devices} devices, {shape}"
                )
                ttl = handler.FACTS_TTL
                runs = [
                    ("bare aiohttp echo (baseline)", echo, ttl),
                    ("check, allow path", check_sender(allow_mix), ttl),
                    ("check, 1 in 13 denied", check_sender(deny_mix), ttl),
                ]
                if in_process:  # the facts cache can only be switched off in-process
                    runs.insert(2, ("check, allow path, FACTS_TTL=0", check_sender(allow_mix), 0.0))
                collections = FullCollections()
                attribution = Attribution() if attribute and in_process else None
                p99s = []
                for label, send, facts_ttl in runs:
                    # TTL 0 re-reads every device on every check: a large fleet where each
                    # device asks rarely gets no help from the cache.
                    handler.FACTS_TTL = facts_ttl
                    gc.collect()
                    collections.reset()
                    latencies, errors = await steady(send, rate, seconds)
                    p99s.append(report(label, latencies, errors, seconds, collections.reset()))
                    if attribution is not None:
                        attribution.reset()
                handler.FACTS_TTL = ttl
                verdict = "meets" if max(p99s[1:]) <= HTTP_TARGET_P99_MS else "MISSES"
                print(f"  target p99 <= {HTTP_TARGET_P99_MS:.0f} ms: {verdict}")
        finally:
            for runner in runners:
                await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="HTTP requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per HTTP run")
    parser.add_argument("--calls", type=int, default=200_000, help="in-process calls per run")
    parser.add_argument("--devices", type=int, default=20, help="devices to spread checks over")
    parser.add_argument(
        "--attribute", action="store_true", help="also time auth, device, policy and event steps"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="serve from this process (allows --attribute and the FACTS_TTL=0 run)",
    )
    args = parser.parse_args()
    print(machine())
    print(f"before: {load()}")
    in_process(args.calls)
    asyncio.run(
        through_http(args.rate, args.seconds, args.devices, args.attribute, args.in_process)
    )
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
