"""Test helpers: the demo control plane as a real process on loopback, seeded once per session.

Seeding the demo takes several seconds, so the session seeds one data directory
(``demo_template``); ``demo_cp`` copies it and serves the copy, so a test that changes things
(promotes, approves) never disturbs another; ``shared_demo_cp`` serves one copy for the whole
session to tests that only read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class DemoControlPlane:
    """A running demo control plane process."""

    url: str
    """Base URL, such as ``http://127.0.0.1:40123``."""
    data_dir: Path
    """Its data directory (SQLite database, tokens)."""
    tokens: dict[str, str]
    """API token per demo principal (``ana``, ``li``, …, ``goodbot-gateway``)."""
    process: subprocess.Popen[str]

    @property
    def gateway_token(self) -> str:
        """The gateway's service credential (may act for others)."""
        return self.tokens["goodbot-gateway"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The fleet simulator would change inventories and rollouts under the tests' feet.
    env["GOODBOT_CP_SIMULATOR_ENABLED"] = "false"
    return env


def start(data_dir: Path, *, demo: bool) -> DemoControlPlane:
    """Start ``goodbot controlplane serve`` on a free port; return once it answers."""
    args = [sys.executable, "-m", "gateway.cli", "controlplane", "serve"]
    args += ["--data-dir", str(data_dir), "--port", "0"]
    if demo:
        args.append("--demo")
    proc = subprocess.Popen(
        args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait(10)
            raise RuntimeError(f"control plane exited with {proc.returncode}")
        if line.startswith("control plane: "):
            url = line.split(": ", 1)[1].strip()
            break
    raw = json.loads((data_dir / "demo-tokens.json").read_text())["tokens"]
    return DemoControlPlane(url, data_dir, {k: v["token"] for k, v in raw.items()}, proc)


def stop(cp: DemoControlPlane) -> None:
    """Stop the process (SIGTERM, then SIGKILL after 10 s)."""
    cp.process.terminate()
    try:
        cp.process.wait(10)
    except subprocess.TimeoutExpired:
        cp.process.kill()
        cp.process.wait(10)
    if cp.process.stdout is not None:
        cp.process.stdout.close()


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding the seeded demo tenant (seeded once per session)."""
    path = tmp_path_factory.mktemp("demo-template")
    cp = start(path, demo=True)
    stop(cp)
    return path


@pytest.fixture
def demo_cp(demo_template: Path, tmp_path: Path) -> Iterator[DemoControlPlane]:
    """A private copy of the demo control plane for one test, which may change it."""
    path = tmp_path / "demo-cp"
    shutil.copytree(demo_template, path)
    cp = start(path, demo=False)
    try:
        yield cp
    finally:
        stop(cp)


@pytest.fixture(scope="session")
def shared_demo_cp(
    demo_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DemoControlPlane]:
    """One demo control plane for the session's read-only tests: do not change it."""
    path = tmp_path_factory.mktemp("demo-shared") / "cp"
    shutil.copytree(demo_template, path)
    cp = start(path, demo=False)
    try:
        yield cp
    finally:
        stop(cp)
