"""``goodbot serve``: the gateway, and without configuration the embedded demo control plane.

With no ``controlplane.url`` the control plane runs in the same process with the demo tenant,
on SQLite in ``DATA_DIR/controlplane``, and is reached over HTTP like any deployment (the
gateway's own credential acting for each person). Prints ``control plane: URL`` and
``gateway: URL`` once both answer, and writes ``DATA_DIR/gateway.json`` so that ``goodbot
ask``/``chat`` find the gateway (and ``goodbot mcp`` the embedded control plane).

With ``--demo-graph`` the demo Microsoft Graph (``gateway.demo_graph``) runs in the same
process too, in ``DATA_DIR/demo-graph``, and the gateway's ``graph`` settings point at it, so
the calendar tools work with no tenant; it prints ``graph (demo): URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web

from gateway.app import build_app, build_gateway, close_gateway
from gateway.bootstrap import demo_policy, write_secret
from gateway.settings import ConfigError, GatewaySettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControlPlaneHandle:
    """Where the gateway finds the control plane and with which credential."""

    url: str
    token: str
    embedded: bool


@contextlib.asynccontextmanager
async def embedded_control_plane(
    data_dir: Path, port: int = 0
) -> AsyncIterator[ControlPlaneHandle]:
    """Run the reference control plane with the demo tenant on a free loopback port."""
    from controlplane.app import create_app
    from controlplane.demo import ensure_demo
    from controlplane.demo_release import seed_release
    from controlplane.settings import ControlPlaneSettings
    from controlplane.state import STATE

    settings = ControlPlaneSettings(data_dir=data_dir / "controlplane", host="127.0.0.1", port=port)
    app = await create_app(settings)
    tokens_file = await ensure_demo(app[STATE])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"
        tokens = json.loads(tokens_file.read_text())["tokens"]
        await seed_release(app[STATE], url, tokens)
        yield ControlPlaneHandle(url, tokens["goodbot-gateway"]["token"], embedded=True)
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def control_plane(settings: GatewaySettings) -> AsyncIterator[ControlPlaneHandle]:
    """The configured control plane, or the embedded demo one when none is configured."""
    if settings.controlplane.url is None:
        embedded = embedded_control_plane(settings.data_dir, settings.controlplane.embedded_port)
        async with embedded as handle:
            yield handle
        return
    token = settings.secret("controlplane")
    if token is None:
        raise ConfigError(
            "controlplane.token",
            "required with controlplane.url: set GOODBOT_CONTROLPLANE__TOKEN or token_file",
        )
    yield ControlPlaneHandle(settings.controlplane.url, token, embedded=False)


def policy_path(settings: GatewaySettings, embedded: bool) -> Path:
    """The policy file: the configured one, or the demo one written at first start."""
    if settings.policy_file is not None:
        return settings.policy_file
    if embedded:
        return demo_policy(settings.data_dir)
    raise ConfigError("policy_file", "required when the control plane is not the embedded demo")


LOOPBACK: Final = "127.0.0.1"


def teams_mode(settings: GatewaySettings, development: bool) -> GatewaySettings:
    """Refuse a Teams channel without credentials unless ``development``; in development mode
    bind loopback only, and say so (on every start).

    Raises:
        ConfigError: ``teams.app_id`` is set without a client secret and no development flag.
    """
    teams = settings.teams
    if not development:
        if teams.enabled and teams.secret() is None:
            raise ConfigError(
                "teams.client_secret",
                "the Teams channel needs its app credentials: set GOODBOT_TEAMS__CLIENT_SECRET "
                "or teams.client_secret_file (or run goodbot serve --teams-development, "
                "loopback only)",
            )
        return settings
    print(
        "teams: DEVELOPMENT MODE: "
        + ("no client secret, so replies carry no token; " if teams.secret() is None else "")
        + ("no app id, so no real token validates; " if not teams.app_id else "")
        + f"inbound tokens are still verified; listening on {LOOPBACK} only",
        flush=True,
    )
    log.warning("Teams development mode: loopback only", extra={"app_id": teams.app_id})
    server = settings.server.model_copy(update={"host": LOOPBACK})
    return settings.model_copy(update={"server": server})


@contextlib.asynccontextmanager
async def demo_graph(settings: GatewaySettings, enabled: bool) -> AsyncIterator[GatewaySettings]:
    """``settings``, pointed at the demo Graph run for the block when ``enabled``."""
    if not enabled:
        yield settings
        return
    if settings.graph.enabled:
        raise ConfigError("graph", "--demo-graph replaces the graph section; use one or the other")
    from gateway.demo_graph import run_demo_graph

    async with run_demo_graph(settings.data_dir / "demo-graph") as handle:
        print(f"graph (demo): {handle.url}   (booked events: {handle.events_file})", flush=True)
        policy = settings.policy_file or settings.data_dir / "policy.yaml"
        if policy.is_file() and "calendar.book" not in policy.read_text():
            print(
                f"note: {policy} grants no calendar.book (written before the calendars); add "
                "calendar.read and calendar.book to a role, or start with a fresh --data-dir",
                flush=True,
            )
        yield settings.model_copy(update={"graph": handle.settings})


async def serve(
    settings: GatewaySettings, *, with_demo_graph: bool = False, teams_development: bool = False
) -> int:
    """Serve until SIGINT or SIGTERM; ``with_demo_graph`` runs the demo Graph as well;
    ``teams_development``: see ``teams_mode``."""
    settings = teams_mode(settings, teams_development)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with control_plane(settings) as cp, demo_graph(settings, with_demo_graph) as settings:
        print(f"control plane: {cp.url}", flush=True)
        gateway = await build_gateway(
            settings,
            cp_url=cp.url,
            cp_token=cp.token,
            policy_path=policy_path(settings, cp.embedded),
        )
        gateway.teams_development = teams_development
        runner = web.AppRunner(build_app(gateway), access_log=None)
        try:
            await runner.setup()
            site = web.TCPSite(runner, settings.server.host, settings.server.port)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            url = f"http://{settings.server.host}:{port}"
            async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as resp:
                resp.raise_for_status()
            found = {"url": url, **({"controlplane": cp.url} if cp.embedded else {})}
            # ``goodbot mcp`` on this data directory attaches to the same control plane.
            write_secret(settings.data_dir / "gateway.json", json.dumps(found))
            print(f"gateway: {url}", flush=True)
            if cp.embedded:
                print(
                    f"chat with: goodbot chat --data-dir {settings.data_dir}   "
                    f"(you are ana; --as li|sam|vera… for the others)",
                    flush=True,
                )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()
            await close_gateway(gateway)
    return 0
