"""The README's main job: ``goodbot controlplane serve --demo`` serves a realistic tenant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests


def test_serve_demo_prints_url_writes_tokens_and_shows_every_drift(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "controlplane",
            "serve",
            "--demo",
            "--data-dir",
            str(tmp_path),
            "--port",
            "0",
        ],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "demo tenant ready" in first and str(tmp_path) in first
        assert "demo releases seeded" in proc.stdout.readline()
        line = proc.stdout.readline()
        assert line.startswith("control plane: http://127.0.0.1:")
        url = line.split(": ", 1)[1].strip()
        tokens_file = tmp_path / "demo-tokens.json"
        assert tokens_file.stat().st_mode & 0o777 == 0o600
        tokens = json.loads(tokens_file.read_text())["tokens"]
        assert {"ana", "li", "sam", "vera", "goodbot-gateway"} <= set(tokens)
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {tokens['ana']['token']}"
        root = http.get(f"{url}/api/v1/tenant", timeout=10).json()["root_scope_id"]
        summary = http.get(f"{url}/api/v1/scopes/{root}/compliance", timeout=10).json()
        assert summary["devices"] >= 2000
        assert all(
            summary["categories"][c] > 0
            for c in (
                "missing_required",
                "present_denied",
                "version_out_of_range",
                "pin_mismatch",
                "unmanaged_toolchain",
            )
        )
        assert all(
            summary["states"][s] > 0 for s in ("compliant", "warning", "non_compliant", "unknown")
        )
        assert summary["states"]["compliant"] > summary["states"]["non_compliant"]
        releases(url, tokens)
        # vera is confined to finance: the organization summary is outside her subtree
        vera = {"Authorization": f"Bearer {tokens['vera']['token']}"}
        assert (
            requests.get(
                f"{url}/api/v1/scopes/{root}/compliance", headers=vera, timeout=10
            ).status_code
            == 403
        )
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        errors = proc.stderr.read()
        proc.stderr.close()
    assert "Traceback" not in errors, errors


def releases(url: str, tokens: dict[str, Any]) -> None:
    """Issue 3's demo: rollouts in several rings and states, one failed gate, pending CAB
    approvals for more than one approver, an expired exception."""

    def get(who: str, path: str) -> Any:
        headers = {"Authorization": f"Bearer {tokens[who]['token']}"}
        response = requests.get(f"{url}/api/v1{path}", headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    rollouts = get("omar", "/rollouts")["items"]
    assert {r["ring"] for r in rollouts} >= {0, 1, 2}
    assert {r["status"] for r in rollouts} >= {"Paused", "Healthy", "Progressing"}
    paused = next(r for r in rollouts if r["status"] == "Paused")
    failed = [g for g in paused["gates"] if g["verdict"] == "failed"]
    assert [g["name"] for g in failed] == ["install_success_rate"]
    assert failed[0]["measured"] < failed[0]["threshold"] == 0.98
    for approver in ("ana", "li"):
        pending = get(approver, "/approvals/pending")["items"]
        summaries = " ".join(p["summary"] for p in pending)
        assert "zoom" in summaries and "crowdstrike-falcon" in summaries, summaries
    assert get("omar", "/approvals/pending")["items"] == []  # the requester decides nothing
    exceptions = get("omar", "/exceptions")["items"]
    assert [(e["state"], e["active"]) for e in exceptions] == [("approved", False)]
