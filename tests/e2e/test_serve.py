"""The README's main job: ``goodbot serve`` with no configuration, then ``goodbot ask``.

Runs the real console script in processes, exactly as a newcomer would: the gateway and the
embedded demo control plane in one, each client command in another.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests


def goodbot(
    *args: str, env: dict[str, str], timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=stdin,
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], dict[str, str]]]:
    env = dict(os.environ)
    env["GOODBOT_CP_SIMULATOR_ENABLED"] = "false"  # keep the demo's rollouts where they are
    env["GOODBOT_NOTIFICATIONS__POLL_SECONDS"] = "0.5"
    env["GOODBOT_CONTROLPLANE__EMBEDDED_PORT"] = "0"
    env.pop("GOODBOT_CONFIG", None)
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(data), "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        urls: dict[str, str] = {}
        while len(urls) < 2:
            line = proc.stdout.readline()
            assert line, f"serve exited with {proc.poll()} before printing both URLs"
            for name in ("gateway", "control plane"):
                if line.startswith(f"{name}: "):
                    urls[name] = line.split(": ", 1)[1].strip()
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


def test_serve_then_chat_through_the_demo(
    served: tuple[Path, dict[str, str], dict[str, str]],
) -> None:
    data, env, urls = served
    assert urls["gateway"].startswith("http://127.0.0.1:")
    assert requests.get(f"{urls['gateway']}/readyz", timeout=5).json()["ready"] is True
    assert requests.get(f"{urls['control plane']}/healthz", timeout=5).status_code == 200
    assert (data / "cli-token").stat().st_mode & 0o777 == 0o600

    # Notifications first (a turn would show and consume them): the CAB approvals waiting for
    # ana, polled from the control plane's events.
    deadline = time.monotonic() + 30
    shown = ""
    while time.monotonic() < deadline and "apr_" not in shown:
        notes = goodbot("notifications", "--data-dir", str(data), "--json", env=env)
        assert notes.returncode == 0, notes.stderr
        shown += notes.stdout
        time.sleep(0.5)
    assert "CAB approval" in shown and "zoom" in shown

    pending = goodbot("ask", "--data-dir", str(data), "what is pending my approval?", env=env)
    assert pending.returncode == 0, pending.stderr
    assert "zoom" in pending.stdout and "crowdstrike-falcon" in pending.stdout

    drift = goodbot("ask", "--data-dir", str(data), "show drift for the web team", env=env)
    assert drift.returncode == 0 and "web" in drift.stdout

    status = goodbot("ask", "--data-dir", str(data), "status of the chrome rollout", env=env)
    assert status.returncode == 0 and "canary" in status.stdout

    promote = goodbot(
        "ask", "--data-dir", str(data), "--json", "promote google-chrome to pilot", env=env
    )
    assert promote.returncode == 0, promote.stderr
    result = json.loads(promote.stdout)
    confirmation = result["confirmation"]
    assert confirmation["state"] == "pending" and confirmation["arguments"]["to_ring"] == 2

    other = goodbot("confirm", "--data-dir", str(data), "--as", "sam", confirmation["id"], env=env)
    assert other.returncode != 0  # bound to ana

    done = goodbot("confirm", "--data-dir", str(data), confirmation["id"], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    after = goodbot(
        "ask", "--data-dir", str(data), "--json", "status of the chrome rollout", env=env
    )
    assert "pilot" in json.loads(after.stdout)["reply"]


def test_chat_asks_before_it_changes_anything(
    served: tuple[Path, dict[str, str], dict[str, str]],
) -> None:
    """``goodbot chat`` with its input piped: a question, a proposal answered n, then y."""
    data, env, _ = served
    said = "\n".join(
        [
            "status of the chrome rollout",
            "pause google-chrome because users report crashes",
            "n",
            "pause google-chrome because users report crashes",
            "y",
            "/quit",
        ]
    )
    chat = goodbot("chat", "--data-dir", str(data), env=env, stdin=said + "\n")
    assert chat.returncode == 0, chat.stderr
    out = chat.stdout
    assert "canary" in out
    assert out.count("Confirm? [y/N]") == 2
    assert "denied" in out.lower()
    assert "confirmed and done" in out
    status = goodbot(
        "ask", "--data-dir", str(data), "--json", "status of the chrome rollout", env=env
    )
    assert "Paused" in json.loads(status.stdout)["reply"]
