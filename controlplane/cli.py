"""Control plane command line: ``goodbot controlplane serve|migrate``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import signal
from pathlib import Path

import aiohttp
from aiohttp import web

from controlplane import db
from controlplane.app import create_app
from controlplane.settings import ControlPlaneSettings
from controlplane.state import STATE

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``controlplane`` subcommands on ``parser``."""
    sub = parser.add_subparsers(dest="cp_command", required=True)
    serve = sub.add_parser("serve", help="serve the control plane API")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="create the demo tenant on first start and write its tokens",
    )
    serve.add_argument("--data-dir", type=Path, help="where the database and keys live")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8081; 0 = any)")
    migrate = sub.add_parser("migrate", help="bring the database schema up to date and exit")
    migrate.add_argument("--data-dir", type=Path)


def settings_from(args: argparse.Namespace) -> ControlPlaneSettings:
    """Settings from the environment, overridden by command-line flags."""
    overrides = {
        key: value
        for key, value in (
            ("data_dir", getattr(args, "data_dir", None)),
            ("host", getattr(args, "host", None)),
            ("port", getattr(args, "port", None)),
        )
        if value is not None
    }
    return ControlPlaneSettings(**overrides)


def run(args: argparse.Namespace) -> int:
    """Entry point for ``goodbot controlplane …``."""
    settings = settings_from(args)
    if args.cp_command == "migrate":
        asyncio.run(_migrate(settings))
        print("control plane schema is up to date")
        return 0
    return asyncio.run(serve(settings, demo=args.demo))


async def _migrate(settings: ControlPlaneSettings) -> None:
    engine = db.create_engine(settings.resolved_database_url(), settings.database_schema)
    try:
        await db.migrate(engine)
    finally:
        await engine.dispose()


async def serve(settings: ControlPlaneSettings, *, demo: bool) -> int:
    """Serve until SIGINT or SIGTERM; print ``control plane: URL`` once it answers."""
    app = await create_app(settings, migrate=settings.migrate_on_start)
    tokens_file = None
    if demo:
        from controlplane.demo import ensure_demo

        tokens_file = await ensure_demo(app[STATE])
        print(f"demo tenant ready; API tokens of the demo principals are in {tokens_file}")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:  # from here on the background workers run: stop them however start-up ends
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://{settings.host}:{port}"
        async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as resp:
            resp.raise_for_status()
        if tokens_file is not None:
            from controlplane.demo_release import seed_release

            tokens = json.loads(tokens_file.read_text())["tokens"]
            if await seed_release(app[STATE], url, tokens):
                print("demo releases seeded: rollouts in flight, CAB approvals pending")
        # Everything allocated at start-up (demo seeding, caches) is long-lived: keep it out
        # of the collector's generations so full collections stay short under load.
        gc.collect()
        gc.freeze()
        print(f"control plane: {url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0
