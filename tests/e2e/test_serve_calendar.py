"""``goodbot serve --demo-graph``, then booking from the CLI: proposed, confirmed, booked once.

The real console script in processes, as the README tells a newcomer: the gateway, the demo
control plane and the demo Microsoft Graph in one, ``goodbot ask`` and ``goodbot confirm`` in
others. What was booked is read from the demo Graph's ``events.json`` and through the tools.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests

from tests.e2e.test_serve import goodbot

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], dict[str, str]]]:
    env = dict(os.environ)
    env["GOODBOT_CP_SIMULATOR_ENABLED"] = "false"
    env["GOODBOT_NOTIFICATIONS__ENABLED"] = "false"
    env["GOODBOT_CONTROLPLANE__EMBEDDED_PORT"] = "0"
    env.pop("GOODBOT_CONFIG", None)
    data = tmp_path / "data"
    command = [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(data)]
    proc = subprocess.Popen(
        [*command, "--port", "0", "--demo-graph"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        urls: dict[str, str] = {}
        while len(urls) < 3:
            line = proc.stdout.readline()
            assert line, f"serve exited with {proc.poll()} before printing its URLs"
            for name in ("graph (demo)", "control plane", "gateway"):
                if line.startswith(f"{name}: "):
                    urls[name] = line.split(": ", 1)[1].split()[0]
        yield data, env, urls
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def booked(data: Path) -> list[dict[str, Any]]:
    events = data / "demo-graph" / "events.json"
    return json.loads(events.read_text()) if events.exists() else []


def test_book_a_cab_review_with_the_demo_graph(
    served: tuple[Path, dict[str, str], dict[str, str]],
) -> None:
    data, env, urls = served
    assert urls["graph (demo)"].startswith("https://127.0.0.1:")
    # The demo Graph speaks TLS with its own CA, and refuses a caller without a token.
    ca = str(data / "demo-graph" / "ca.pem")
    anonymous = requests.get(
        f"{urls['graph (demo)']}/v1.0/users/ana@contoso.com/mailboxSettings", verify=ca, timeout=5
    )
    assert anonymous.status_code == 401

    asked = goodbot(
        "ask", "--data-dir", str(data), "--json", "book a CAB review with ana and li next tuesday",
        env=env,
    )  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    result = json.loads(asked.stdout)
    (call,) = result["tool_calls"]
    assert call["name"] == "book_meeting" and call["status"] == "confirmation_required"
    confirmation = result["confirmation"]
    assert confirmation["state"] == "pending"
    arguments = confirmation["arguments"]
    assert arguments["organizer"] == "ana@contoso.com"
    assert arguments["attendees"] == ["li@contoso.com"]
    assert booked(data) == []  # nothing until confirmed

    # The slot is inside both working days (ana 09-17 Berlin, li 09-17 New York), on a
    # Tuesday, and clear of li's Tuesday 1:1 (09:00-10:00 New York) in the demo calendars.
    start = datetime.fromisoformat(arguments["start"])
    end = datetime.fromisoformat(arguments["end"])
    assert start.weekday() == 1 and end - start == timedelta(minutes=30)
    for tz in (BERLIN, NEW_YORK):
        local_start, local_end = start.astimezone(tz), end.astimezone(tz)
        assert time(9) <= local_start.time() and local_end.time() <= time(17), tz
    assert start.astimezone(NEW_YORK).time() >= time(10)

    done = goodbot("confirm", "--data-dir", str(data), confirmation["id"], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Booked" in done.stdout and "CAB review" in done.stdout
    (event,) = booked(data)
    assert event["subject"] == "CAB review"
    assert event["organizer"]["emailAddress"]["address"] == "ana@contoso.com"
    assert [a["emailAddress"]["address"] for a in event["attendees"]] == ["li@contoso.com"]
    assert event["isOnlineMeeting"] is True and event["transactionId"]

    again = goodbot("confirm", "--data-dir", str(data), confirmation["id"], env=env)
    assert again.returncode != 0
    assert len(booked(data)) == 1

    # li sees it among her CAB meetings; vera may not use the calendars at all.
    listed = goodbot("ask", "--data-dir", str(data), "--as", "li", "list my CAB meetings", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "CAB review" in listed.stdout and "Weekly CAB" in listed.stdout
    vera = goodbot(
        "ask", "--data-dir", str(data), "--as", "vera", "--json",
        "book a CAB review with ana and li next tuesday", env=env,
    )  # fmt: skip
    (refused,) = json.loads(vera.stdout)["tool_calls"]
    assert refused["status"] == "denied"
    assert len(booked(data)) == 1
