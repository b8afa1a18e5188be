"""Benchmark helpers: machine description, server subprocesses and a closed-loop HTTP load."""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent

ECHO_SERVER = """
import sys
from aiohttp import web

async def echo(request):
    body = await request.read()
    return web.json_response({"path": request.path, "bytes": len(body)})

app = web.Application()
app.router.add_route("*", "/{tail:.*}", echo)
port = int(sys.argv[1])
# run_app calls `print` once the socket listens: only then is the URL worth announcing.
web.run_app(app, host="127.0.0.1", port=port, access_log=None,
            print=lambda _: print(f"echo: http://127.0.0.1:{port}", flush=True))
"""


def machine() -> str:
    """One line naming the machine the figures come from."""
    return (
        f"{platform.node()} · {platform.system()} {platform.machine()} · "
        f"{os.cpu_count()} CPUs · Python {platform.python_version()}"
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def subprocess_server(args: list[str], env: dict[str, str], marker: str) -> Iterator[str]:
    """Start a server process and yield its URL, read from the line starting with ``marker``."""
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
        args, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        while True:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"server exited before printing {marker!r}")
            if line.startswith(marker):
                yield line.split(": ", 1)[1].strip()
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def echo_server() -> Iterator[str]:
    """A bare aiohttp JSON echo handler in its own process: the same-run baseline."""
    port = free_port()
    with subprocess_server([sys.executable, "-c", ECHO_SERVER, str(port)], {}, "echo:") as url:
        yield url


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q * len(data)))]

    def line(self, label: str) -> str:
        return (
            f"{label:<34} {self.rps:>9.0f} req/s   p50 {self.pct(0.50):6.2f} ms   "
            f"p99 {self.pct(0.99):6.2f} ms   errors {self.errors}"
        )


async def closed_loop(
    urls: list[str], headers: dict[str, str], seconds: float, concurrency: int
) -> LoadResult:
    """``concurrency`` clients each sending the next request as soon as the last returns."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def client(i: int) -> None:
            nonlocal errors
            n = i
            while time.perf_counter() < deadline:
                url = urls[n % len(urls)]
                n += concurrency
                start = time.perf_counter()
                async with http.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append((time.perf_counter() - start) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
    return LoadResult(len(latencies), errors, elapsed, latencies)


def median(values: list[float]) -> float:
    return statistics.median(values)
