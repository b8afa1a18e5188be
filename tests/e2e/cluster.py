"""Replica harness: N ``goodbot serve`` processes on one PostgreSQL schema behind a balancer.

The schema is created, then migrated once by ``goodbot migrate``; each replica starts with
``database.migrate_on_start`` off, its own data directory and port, the same policy file and
the same control plane, exactly as replicas of a deployment do. The balancer is
``tests.fakes.balancer`` (round robin, a dead backend skipped).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import requests
import yaml

from gateway.bootstrap import demo_policy
from tests.conftest import PG_URL


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pg(sql: str, *args: Any) -> Any:
    """Run one statement on the test database and return its first value."""

    async def run() -> Any:
        conn = await asyncpg.connect(PG_URL)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def _read_url(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{prefix.strip(': ')} exited with {proc.wait(10)}")
        if line.startswith(prefix):
            return line.split(": ", 1)[1].strip()


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


@dataclass
class Replica:
    """One gateway process."""

    port: int
    data_dir: Path
    proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def duties(self) -> list[str]:
        """The duties this replica holds now (from ``/readyz``)."""
        body = requests.get(f"{self.url}/readyz", timeout=5).json()
        return list(body["duties"])


@dataclass
class Cluster:
    """Replicas, their balancer, the schema and the policy they share."""

    schema: str
    env: dict[str, str]
    replicas: list[Replica]
    policy_path: Path
    balancer_url: str = ""
    balancer: subprocess.Popen[str] | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    def start(self, index: int) -> None:
        """Start replica ``index`` (again) on its port; return once it answers."""
        replica = self.replicas[index]
        replica.data_dir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(replica.data_dir)]
        args += ["--port", str(replica.port)]
        replica.proc = subprocess.Popen(
            args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        _read_url(replica.proc, "gateway: ")

    def kill(self, index: int) -> None:
        """SIGKILL replica ``index``: no clean shutdown, its connections just drop."""
        proc = self.replicas[index].proc
        assert proc is not None
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        self.replicas[index].proc = None

    def wait_for(self, what: Callable[[], bool], seconds: float = 30.0) -> float:
        """Poll ``what`` until true; how long it took (fails after ``seconds``)."""
        started = time.monotonic()
        while not what():
            assert time.monotonic() - started < seconds, "condition not met in time"
            time.sleep(0.1)
        return time.monotonic() - started

    def holders(self, duty: str) -> list[int]:
        """Indexes of the running replicas holding ``duty``."""
        return [i for i, r in enumerate(self.replicas) if r.proc is not None and duty in r.duties()]

    def stop(self) -> None:
        """Stop every process (the schema is dropped by the caller)."""
        for replica in self.replicas:
            if replica.proc is not None:
                _stop(replica.proc)
                replica.proc = None
        if self.balancer is not None:
            _stop(self.balancer)


def shared_policy(path_dir: Path, rates: dict[str, int]) -> Path:
    """The demo policy with per-principal message rates from ``rates``."""
    path = demo_policy(path_dir)
    document = yaml.safe_load(path.read_text())
    for name, per_minute in rates.items():
        document["principals"][name]["rate_limit_per_minute"] = per_minute
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@contextmanager
def cluster(
    root: Path,
    cp_url: str,
    cp_token: str,
    *,
    replicas: int = 2,
    rates: dict[str, int] | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Cluster]:
    """Start ``replicas`` gateways on a fresh schema and a balancer in front of them."""
    schema = f"gbrep_{uuid.uuid4().hex[:12]}"
    pg(f"CREATE SCHEMA {schema}")  # our own generated identifier
    policy_dir = root / "policy"
    policy_dir.mkdir(parents=True, exist_ok=True)
    policy_path = shared_policy(policy_dir, rates or {})
    env = dict(os.environ)
    env.pop("GOODBOT_CONFIG", None)
    env.update(
        {
            "GOODBOT_DATABASE__URL": PG_URL.replace("postgresql://", "postgresql+asyncpg://"),
            "GOODBOT_DATABASE__SCHEMA_NAME": schema,
            "GOODBOT_DATABASE__MIGRATE_ON_START": "false",
            "GOODBOT_CONTROLPLANE__URL": cp_url,
            "GOODBOT_CONTROLPLANE__TOKEN": cp_token,
            "GOODBOT_POLICY_FILE": str(policy_path),
            "GOODBOT_EXPIRY_SWEEP_SECONDS": "0.5",
            "GOODBOT_NOTIFICATIONS__POLL_SECONDS": "1",
            "GOODBOT_REPLICAS__LEASE_RETRY_SECONDS": "0.5",
            **(extra_env or {}),
        }
    )
    made = Cluster(
        schema,
        env,
        [Replica(free_port(), root / f"replica-{i}") for i in range(replicas)],
        policy_path,
        tokens={
            name: (policy_dir / "cli-tokens" / name).read_text().strip()
            for name in ("ana", "li", "sam", "vera")
        },
    )
    try:
        migrated = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert migrated.returncode == 0, migrated.stderr
        for i in range(replicas):
            made.start(i)
        made.balancer = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.balancer", *(r.url for r in made.replicas)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        made.balancer_url = _read_url(made.balancer, "balancer: ")
        yield made
    finally:
        made.stop()
        pg(f"DROP SCHEMA {schema} CASCADE")
