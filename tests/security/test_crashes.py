"""Crashes: ``goodbot serve`` killed with SIGKILL at chosen points of a turn, then restarted.

No crash hook in the product: the gateway runs as its own process against the demo control
plane behind ``Holding``, a loopback proxy that holds one chosen request (before forwarding
it, or after the control plane answered it) and signals that it holds it; the test then
kills the gateway with SIGKILL. The points:

* after accept: the message is stored, its turn's first control-plane read is held;
* before reply: the tool ran (the control plane answered), the reply is not stored yet;
* between confirm and execute: the confirmed change's call has not reached the control plane;
* after execute: the control plane made the change, the gateway never heard the answer.

After a restart every accepted message is answered, every confirmed change ran exactly once
(the retry carries the same ``Idempotency-Key`` and is answered ``Idempotent-Replayed``), and
``goodbot audit verify`` passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp import web

from tests.demo import DemoControlPlane
from tests.e2e.harness import prepare
from tests.e2e.test_cli_confirmations import cp_rollout

Moment = Literal["before", "after"]


class Holding:
    """A proxy to the control plane that can hold one request (by method and path part)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rule: tuple[str, str, Moment] | None = None
        self.held = asyncio.Event()
        self.forwarded: list[tuple[str, str, str | None, str | None]] = []
        """(method, path, Idempotency-Key sent, Idempotent-Replayed answered) per request."""
        self.url = ""
        self._runner: web.AppRunner | None = None

    def hold(self, method: str, path_part: str, moment: Moment) -> None:
        """Hold the next matching request ``before`` forwarding it or ``after`` its answer."""
        self.rule = (method, path_part, moment)
        self.held.clear()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        matched = self.rule is not None and (
            request.method == self.rule[0] and self.rule[1] in request.path
        )
        if matched and self.rule is not None and self.rule[2] == "before":
            self.rule = None
            self.held.set()
            await asyncio.Event().wait()  # until the gateway dies and the proxy closes
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                request.method,
                self.upstream + request.rel_url.raw_path_qs,
                headers=headers,
                data=body,
            ) as answer,
        ):
            raw = await answer.read()
            replayed = answer.headers.get("Idempotent-Replayed")
            kind = answer.content_type
            status = answer.status
        if request.method != "GET":
            key = request.headers.get("Idempotency-Key")
            self.forwarded.append((request.method, request.path, key, replayed))
        if matched and self.rule is not None and self.rule[2] == "after":
            self.rule = None
            self.held.set()
            await asyncio.Event().wait()
        return web.Response(status=status, body=raw, content_type=kind)


@asynccontextmanager
async def serve(
    data: Path, cp_url: str, cp_token: str
) -> AsyncIterator[tuple[subprocess.Popen[str], str]]:
    """``goodbot serve`` against ``cp_url`` (rules route, SQLite in ``data``, the demo policy
    and CLI tokens written there first)."""
    env = {
        **os.environ,
        "GOODBOT_POLICY_FILE": str(prepare(data)),
        "GOODBOT_CONTROLPLANE__URL": cp_url,
        "GOODBOT_CONTROLPLANE__TOKEN": cp_token,
        "GOODBOT_NOTIFICATIONS__ENABLED": "false",
    }
    env.pop("GOODBOT_CONFIG", None)
    args = [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(data), "--port", "0"]
    proc = subprocess.Popen(  # noqa: ASYNC220 - it runs beside the loop; only reads wait
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        while True:
            # Read in a thread: the proxy on this loop must answer the recovery at start.
            line = await asyncio.to_thread(proc.stdout.readline)
            assert line, f"serve exited with {proc.poll()}"
            if line.startswith("gateway: "):
                break
        yield proc, line.split(": ", 1)[1].strip()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


async def send(url: str, token: str, path: str, body: dict[str, Any]) -> Any:
    """POST to the CLI channel; the NDJSON events of a turn, or the JSON of a decision."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + path, json=body, headers=headers) as r,
    ):
        raw = await r.read()
    if path.endswith("/turns"):
        return [json.loads(line) for line in raw.splitlines() if line.strip()]
    return json.loads(raw)


def store(data: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(data / "gateway.db")) as conn:
        return conn.execute(sql, params).fetchall()


def audit_verifies(data: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", "verify", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@asynccontextmanager
async def holding(cp: DemoControlPlane) -> AsyncIterator[Holding]:
    proxy = Holding(cp.url)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def killed_while_held(proc: subprocess.Popen[str], proxy: Holding, work: Any) -> None:
    """Start ``work`` (a request to the gateway), SIGKILL the gateway once the proxy holds."""
    task = asyncio.ensure_future(work)
    await asyncio.wait_for(proxy.held.wait(), 30)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    with pytest.raises(aiohttp.ClientError):
        await task


@pytest.mark.parametrize(
    ("path", "moment"),
    [("/approvals/pending", "before"), ("/approvals/pending", "after")],
    ids=["after-accept", "before-reply"],
)
async def test_a_message_accepted_before_a_crash_is_answered_after_the_restart(
    shared_demo_cp: DemoControlPlane, tmp_path: Path, path: str, moment: Moment
) -> None:
    data = tmp_path / "gw"
    async with holding(shared_demo_cp) as proxy:
        async with serve(data, proxy.url, shared_demo_cp.gateway_token) as (proc, url):
            token = (data / "cli-tokens" / "ana").read_text().strip()
            proxy.hold("GET", path, moment)
            turn = send(
                url,
                token,
                "/cli/v1/turns",
                {"text": "what is pending my approval?", "event_id": "e1"},
            )
            await killed_while_held(proc, proxy, turn)
        assert store(data, "SELECT status FROM messages WHERE direction = 'in'") == [("accepted",)]
        async with serve(data, proxy.url, shared_demo_cp.gateway_token) as (_, url):
            again = await send(
                url,
                token,
                "/cli/v1/turns",
                {"text": "what is pending my approval?", "event_id": "e1"},
            )
            assert again[0]["duplicate"] is True  # the channel's retry: answered from the store
            assert "zoom" in again[-1]["result"]["reply"]
        rows = store(data, "SELECT direction, status FROM messages ORDER BY id")
        assert rows == [("in", "done"), ("out", "done")]
        audit_verifies(data)


@pytest.mark.parametrize(
    ("ask", "app", "path", "moment"),
    [
        ("promote google-chrome to pilot", "google-chrome", "/promote", "before"),
        ("pause crowdstrike-falcon", "crowdstrike-falcon", "/pause", "after"),
    ],
    ids=["between-confirm-and-execute", "after-execute"],
)
async def test_a_confirmed_change_runs_exactly_once_across_a_crash(
    demo_cp: DemoControlPlane, tmp_path: Path, ask: str, app: str, path: str, moment: Moment
) -> None:
    data = tmp_path / "gw"
    before = cp_rollout(demo_cp, app)
    async with holding(demo_cp) as proxy:
        async with serve(data, proxy.url, demo_cp.gateway_token) as (proc, url):
            token = (data / "cli-tokens" / "ana").read_text().strip()
            events = await send(url, token, "/cli/v1/turns", {"text": ask})
            confirmation = events[-1]["result"]["confirmation"]
            assert confirmation is not None, events
            proxy.hold("POST", path, moment)
            decide = send(
                url, token, f"/cli/v1/confirmations/{confirmation['id']}", {"decision": "confirm"}
            )
            await killed_while_held(proc, proxy, decide)
        async with serve(data, proxy.url, demo_cp.gateway_token):
            for _ in range(100):  # recovery runs at start, before the server answers
                (state,) = store(
                    data, "SELECT state FROM confirmations WHERE id = ?", confirmation["id"]
                )[0]
                if state in ("executed", "failed"):
                    break
                await asyncio.sleep(0.1)
            assert state == "executed"
        after = cp_rollout(demo_cp, app)
        if path == "/promote":
            assert (before["ring"], after["ring"]) == (1, 2)  # once: not ring 3
        else:
            assert after["status"] == "Paused"
        sent = [f for f in proxy.forwarded if f[1].endswith(path)]
        keys = {key for _, _, key, _ in sent}
        assert len(keys) == 1 and None not in keys  # every attempt carried the same key
        assert [replayed for *_, replayed in sent][1:] == ["true"] * (len(sent) - 1)
        audit_verifies(data)
