"""``goodbot mcp``: the gateway's tools as an MCP server, over stdio or streamable HTTP (gateway).

Both transports build the same gateway as ``goodbot serve`` (policy file, store, control-plane
client, registry and executor) and put ``channels.mcp.McpChannel`` in front of its
``TurnService``. The control plane is the configured one; without ``controlplane.url``, the
one a running ``goodbot serve`` in the same data directory started (read from
``gateway.json``), so MCP, the CLI and ``goodbot confirm`` share one control plane and one
store; failing that, an embedded demo control plane of its own.

stdio serves the local user: the MCP token in ``$GOODBOT_MCP_TOKEN``, else
``DATA_DIR/mcp-tokens/NAME`` with ``--as NAME``, else ``DATA_DIR/mcp-token``; the policy must
list the token's identity on the ``mcp`` channel. stdout carries the protocol only; logs go
to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import uvicorn

from channels.mcp import CHANNEL, PATH, McpChannel, identity_of
from gateway.app import Gateway, build_gateway, close_gateway
from gateway.serve import ControlPlaneHandle, control_plane, policy_path
from gateway.settings import ConfigError, GatewaySettings

log = logging.getLogger(__name__)


def local_token(data_dir: Path, as_principal: str | None) -> str:
    """The MCP token stdio serves with (see the module docstring)."""
    if os.environ.get("GOODBOT_MCP_TOKEN"):
        return os.environ["GOODBOT_MCP_TOKEN"].strip()
    path = data_dir / "mcp-tokens" / as_principal if as_principal else data_dir / "mcp-token"
    try:
        return path.read_text().strip()
    except OSError:
        raise ConfigError(
            "mcp.token",
            f"no MCP token at {path}: set GOODBOT_MCP_TOKEN or start `goodbot serve` once to "
            "write the demo tokens",
        ) from None


async def _running_control_plane(settings: GatewaySettings) -> ControlPlaneHandle | None:
    """The embedded control plane of a ``goodbot serve`` running on this data directory."""
    try:
        found = json.loads((settings.data_dir / "gateway.json").read_text())
        url = str(found["controlplane"])
        tokens = json.loads((settings.data_dir / "controlplane" / "demo-tokens.json").read_text())
        token = str(tokens["tokens"]["goodbot-gateway"]["token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        timeout = aiohttp.ClientTimeout(total=2)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"{url.rstrip('/')}/healthz") as resp,
        ):
            if resp.status != 200:
                return None
    except (aiohttp.ClientError, TimeoutError):
        return None
    return ControlPlaneHandle(url, token, embedded=True)


@contextlib.asynccontextmanager
async def mcp_gateway(settings: GatewaySettings) -> AsyncIterator[Gateway]:
    """A gateway for the MCP server, over the control plane chosen as described above."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    running = None
    if settings.controlplane.url is None:
        running = await _running_control_plane(settings)
    async with contextlib.AsyncExitStack() as stack:
        cp = (
            running
            if running is not None
            else await stack.enter_async_context(control_plane(settings))
        )
        gateway = await build_gateway(
            settings,
            cp_url=cp.url,
            cp_token=cp.token,
            policy_path=policy_path(settings, cp.embedded),
        )
        try:
            yield gateway
        finally:
            await close_gateway(gateway)


async def serve_stdio(settings: GatewaySettings, as_principal: str | None) -> int:
    """Serve the local user's tools over stdin and stdout until the client closes them."""
    token = local_token(settings.data_dir, as_principal)
    async with mcp_gateway(settings) as gateway:
        sender = gateway.turns.sender(CHANNEL, identity_of(token))
        if sender is None:
            raise ConfigError(
                "mcp.token",
                "the policy lists no principal with this token's identity on the mcp channel",
            )
        log.info("serving MCP over stdio", extra={"principal": sender.principal})
        await McpChannel(gateway.turns, principal=sender.principal).run_stdio()
    return 0


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the caller decides when to stop (``should_exit``)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def mcp_http(gateway: Gateway, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``gateway``'s MCP endpoint over streamable HTTP; yields its URL."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    app = McpChannel(gateway.turns).http_app(host=host)
    server = _Uvicorn(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                await task  # raises why it could not start
                raise RuntimeError("the MCP HTTP server stopped before it started")
            await asyncio.sleep(0.02)
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{bound}{PATH}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def serve_http(settings: GatewaySettings, host: str, port: int) -> int:
    """Serve MCP over streamable HTTP until SIGINT or SIGTERM; prints ``mcp: URL``."""
    async with mcp_gateway(settings) as gateway, mcp_http(gateway, host, port) as url:
        print(f"mcp: {url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    return 0
