"""Benchmark: messages per minute through the email channel, beside two same-run baselines.

One message goes IMAP (filed into a real dovecot on loopback by APPEND) → the gateway's mailbox
duty (IDLE wake-up, UNSEEN search, size and PEEK fetch) → parsing, trust and loop checks →
admission (stored, audited) → outbox entry → ``\\Seen`` → the turn (rules route, read-only
control-plane calls) → the reply composed and handed over SMTP to an aiosmtpd relay on loopback.
The clock runs from the first APPEND to the relay's receipt of the last reply.

Baselines, in the same run on the same servers:

* IMAP alone: APPEND, UID SEARCH UNSEEN, UID FETCH BODY.PEEK[], UID STORE \\Seen, one message
  after another on one connection (the mailbox floor the channel cannot beat);
* the CLI channel: the same request as ``POST /cli/v1/turns`` to the same gateway, one after
  another (the turn without mail around it).

The email channel is measured twice: one message at a time (APPEND, then wait for its reply:
the latency of one request, IDLE wake-up included), and as a flood (every message filed at
once, from several senders: the throughput, and how long the last ones queue).

    .venv/bin/python -m bench.email_channel [--messages 240] [--senders 8] [--poll SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Final

import aiohttp
import yaml
from aiohttp import web

from bench.common import machine, subprocess_server
from gateway.app import build_app, build_gateway, close_gateway
from gateway.bootstrap import demo_policy
from gateway.settings import EmailSettings, GatewaySettings, NotificationSettings
from tests.fakes.mailservers import Dovecot, Relay, dovecot, relay

CONTROL_PLANE: Final = (sys.executable, "-m", "gateway.cli", "controlplane", "serve", "--demo")
TEXT: Final = "what is pending my approval?"
MX: Final = "mx.example.com"


def message(sender: str, n: int) -> bytes:
    lines = [
        f"Authentication-Results: {MX}; dmarc=pass header.from=example.com",
        f"From: <{sender}>",
        "To: <goodbot@example.com>",
        f"Subject: bench {n}",
        f"Message-ID: <{uuid.uuid4().hex}@example.com>",
        "Content-Type: text/plain; charset=utf-8",
    ]
    return ("\r\n".join(lines) + f"\r\n\r\n{TEXT}\r\n").encode()


def prepare(tmp: Path, senders: list[str]) -> tuple[dict[str, dict[str, str]], Path, Path]:
    """The demo control plane's tokens, the gateway's data directory and its policy file."""
    tokens = json.loads((tmp / "cp" / "demo-tokens.json").read_text())["tokens"]
    data = tmp / "gw"
    data.mkdir()
    return tokens, data, policy(data, senders)


def policy(data_dir: Path, senders: list[str]) -> Path:
    """The demo policy with email open, each sender a principal, limits out of the way."""
    path = demo_policy(data_dir)
    document = yaml.safe_load(path.read_text())
    document["defaults"]["rate_limit_per_minute"] = 100_000
    document["channels"]["email"] = {}
    for n, address in enumerate(senders):
        document["principals"][f"mail{n}"] = {
            "roles": ["approver", "auditor"],
            "control_plane_principal": "ana",
            "identities": [{"channel": "email", "id": address}],
        }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


async def imap_baseline(box: Dovecot, count: int) -> tuple[float, list[float]]:
    """APPEND, then search, fetch and flag it, ``count`` times; seconds and per-message ms."""
    imap = await box.client()
    latencies = []
    started = time.perf_counter()
    try:
        for n in range(count):
            t0 = time.perf_counter()
            await imap.append(message("base@example.com", n), mailbox="INBOX")
            found = await imap.uid_search("UNSEEN")
            for uid in bytes(found.lines[0]).split():
                await imap.uid("fetch", uid.decode(), "(BODY.PEEK[])")
                await imap.uid("store", uid.decode(), "+FLAGS.SILENT", "(\\Seen)")
            latencies.append((time.perf_counter() - t0) * 1000)
    finally:
        await imap.logout()
    return time.perf_counter() - started, latencies


async def email_run(
    box: Dovecot, outbound: Relay, senders: list[str], count: int
) -> tuple[float, list[float]]:
    """File ``count`` messages as fast as IMAP takes them; wait for every reply."""
    sent_at: dict[str, float] = {}
    imap = await box.client()
    started = time.perf_counter()
    try:
        for n in range(count):
            raw = message(senders[n % len(senders)], n)
            mid = raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
            sent_at[mid] = time.perf_counter()
            await imap.append(raw, mailbox="INBOX")
    finally:
        await imap.logout()
    deadline = time.perf_counter() + 600
    seen: dict[str, float] = {}
    while len(seen) < count and time.perf_counter() < deadline:
        for reply in outbound.received[len(seen) :]:
            seen[str(reply["In-Reply-To"])] = time.perf_counter()
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    if len(seen) < count:
        raise RuntimeError(f"only {len(seen)} of {count} replies arrived")
    return elapsed, [(seen[m] - sent_at[m]) * 1000 for m in sent_at]


async def email_one_at_a_time(
    box: Dovecot, outbound: Relay, sender: str, count: int
) -> tuple[float, list[float]]:
    """File one message, wait for its reply, then the next: the channel's own latency."""
    latencies = []
    imap = await box.client()
    started = time.perf_counter()
    try:
        for n in range(count):
            before = len(outbound.received)
            t0 = time.perf_counter()
            await imap.append(message(sender, n), mailbox="INBOX")
            # The relay runs on its own thread and loop, so it is polled, not awaited.
            while len(outbound.received) == before:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            latencies.append((time.perf_counter() - t0) * 1000)
    finally:
        await imap.logout()
    return time.perf_counter() - started, latencies


async def cli_run(url: str, token: str, count: int) -> tuple[float, list[float]]:
    latencies = []
    headers = {"Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        for n in range(count):
            t0 = time.perf_counter()
            body = {"text": TEXT, "conversation": f"c{n}", "event_id": uuid.uuid4().hex}
            async with http.post(f"{url}/cli/v1/turns", json=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
            latencies.append((time.perf_counter() - t0) * 1000)
    return time.perf_counter() - started, latencies


def cli_token(data: Path) -> str:
    return (data / "cli-tokens" / "ana").read_text().strip()


def line(label: str, count: int, seconds: float, latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (
        f"{label:<44} {count / seconds * 60:>9.0f} msg/min   "
        f"p50 {statistics.median(ordered):7.1f} ms   p95 {p95:7.1f} ms"
    )


async def main(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    senders = [f"user{n}@example.com" for n in range(args.senders)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        subprocess_server(
            [*CONTROL_PLANE, "--data-dir", f"{tmp}/cp", "--port", "0"],
            {"GOODBOT_CP_SIMULATOR_ENABLED": "false"},
            "control plane: ",
        ) as cp_url,
        dovecot() as server,
        relay() as outbound,
    ):
        tokens, data, policy_path = prepare(Path(tmp), senders)
        base_box = server.add_user("baseline", "pw-baseline")
        mail_box = server.add_user("bench", "pw-bench")
        settings = GatewaySettings(
            data_dir=data,
            notifications=NotificationSettings(enabled=False),
            email=EmailSettings(
                address="goodbot@example.com",
                trusted_authserv_ids=[MX],
                imap_host="127.0.0.1",
                imap_port=mail_box.port,
                imap_tls="none",
                imap_username=mail_box.user,
                imap_password=mail_box.password,
                smtp_host="127.0.0.1",
                smtp_port=outbound.port,
                smtp_tls="none",
                sender_rate_per_minute=100_000,
                imap_idle=args.poll is None,
                poll_seconds=args.poll or 30.0,
            ),
        )
        gateway = await build_gateway(
            settings,
            cp_url=cp_url,
            cp_token=tokens["goodbot-gateway"]["token"],
            policy_path=policy_path,
        )
        runner = web.AppRunner(build_app(gateway), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"
        try:
            await asyncio.sleep(0.5)  # the mailbox duty connects and enters IDLE
            seconds, lat = await imap_baseline(base_box, args.messages)
            print(line("baseline: IMAP append+search+fetch+store", args.messages, seconds, lat))
            token = cli_token(data)
            await cli_run(url, token, 10)  # warm-up
            seconds, lat = await cli_run(url, token, args.messages)
            print(line("baseline: CLI turn, one at a time", args.messages, seconds, lat))
            one = max(10, args.messages // 4)
            seconds, lat = await email_one_at_a_time(mail_box, outbound, senders[0], one)
            print(line("email: one at a time (APPEND → reply)", one, seconds, lat))
            outbound.received.clear()
            seconds, lat = await email_run(mail_box, outbound, senders, args.messages)
            print(
                line(
                    f"email: IMAP → turn → SMTP ({args.senders} senders)",
                    args.messages,
                    seconds,
                    lat,
                )
            )
        finally:
            await runner.cleanup()
            await close_gateway(gateway)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=240)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument(
        "--poll", type=float, default=None, help="poll every POLL seconds instead of IDLE"
    )
    asyncio.run(main(parser.parse_args()))
