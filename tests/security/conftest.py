"""Security fixtures: a gateway with the rules route over a private demo control plane."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text

from tests.demo import DemoControlPlane
from tests.e2e.harness import GatewayUnderTest, running_gateway


@pytest.fixture
async def gw(demo_cp: DemoControlPlane, tmp_path: Path) -> AsyncIterator[GatewayUnderTest]:
    """A gateway with the rules route over a private demo control plane."""
    async with running_gateway(tmp_path / "gw", demo_cp.url, demo_cp.gateway_token) as handle:
        yield handle


async def stored_messages(gw: GatewayUnderTest) -> int:
    """Messages in the gateway's store, both directions."""
    async with gw.gateway.store.engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM messages"))).scalar_one())


async def audit_kinds(gw: GatewayUnderTest) -> list[str]:
    """The kind of every audit record, oldest first."""
    return [str(orjson.loads(line)["type"]) async for line in gw.gateway.store.export_audit()]
