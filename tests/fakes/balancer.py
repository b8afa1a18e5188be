"""A round-robin HTTP load balancer of the suite's own, for replica tests and benchmarks.

``python -m tests.fakes.balancer URL [URL …]`` listens on a free loopback port, prints
``balancer: URL`` and passes each request to the next backend in turn, streaming the answer
back (the CLI channel answers in NDJSON as the turn runs). A backend that refuses the
connection is skipped for that request, as nginx's ``proxy_next_upstream error`` does, so
killing a replica leaves the service up. ``X-Upstream`` in each answer names the backend.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal
from collections.abc import Sequence

import aiohttp
from aiohttp import web

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade"}


def make_app(backends: Sequence[str]) -> web.Application:
    """The balancer as an aiohttp application over ``backends`` (base URLs)."""
    turn = itertools.cycle(range(len(backends)))
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session(app: web.Application):  # type: ignore[no-untyped-def]
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=120, connect=2), auto_decompress=False
        ) as http:
            app[session_key] = http
            yield

    async def proxy(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        first = next(turn)
        for step in range(len(backends)):
            base = backends[(first + step) % len(backends)]
            try:
                upstream = await request.app[session_key].request(
                    request.method,
                    base + request.path_qs,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                )
            except aiohttp.ClientConnectionError:
                continue
            async with upstream:
                response = web.StreamResponse(status=upstream.status)
                for key, value in upstream.headers.items():
                    if key.lower() not in _HOP:
                        response.headers[key] = value
                response.headers["X-Upstream"] = base
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        return web.json_response({"error": {"code": "no_backend"}}, status=502)

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


async def main(backends: Sequence[str], port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    runner = web.AppRunner(make_app(backends), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"balancer: http://127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("backends", nargs="+")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(main([b.rstrip("/") for b in args.backends], args.port))
