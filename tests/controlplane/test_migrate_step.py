"""The control plane's migrations as a step of their own: ``goodbot controlplane migrate``,
then ``serve`` with ``GOODBOT_CP_MIGRATE_ON_START=false`` (what the Kubernetes Job and the
Deployment do)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import requests


def tables(database: Path) -> set[str]:
    with sqlite3.connect(database) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_serve_leaves_the_schema_to_the_migrate_step(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GOODBOT_CP_DATA_DIR": str(tmp_path / "cp"),
        "GOODBOT_CP_MIGRATE_ON_START": "false",
        "GOODBOT_CP_SIMULATOR_ENABLED": "false",
    }
    env.pop("GOODBOT_CP_DATABASE_URL", None)
    migrated = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "controlplane", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr
    assert "alembic_version" in tables(tmp_path / "cp" / "controlplane.db")
    args = [sys.executable, "-m", "gateway.cli", "controlplane", "serve", "--port", "0"]
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("control plane: "), line
        url = line.split(": ", 1)[1].strip()
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)
        if proc.stdout is not None:
            proc.stdout.close()

    # On a database nothing migrated, serving with the flag off creates no table.
    fresh = {**env, "GOODBOT_CP_DATA_DIR": str(tmp_path / "fresh")}
    proc = subprocess.Popen(
        args, env=fresh, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("control plane: ")
    finally:
        proc.terminate()
        proc.wait(15)
        if proc.stdout is not None:
            proc.stdout.close()
    assert "alembic_version" not in tables(tmp_path / "fresh" / "controlplane.db")
