"""End-to-end fixtures: a gateway on loopback over a fresh copy of the demo control plane."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.demo import DemoControlPlane
from tests.e2e.harness import GatewayUnderTest, running_gateway


@pytest.fixture
async def gw(demo_cp: DemoControlPlane, tmp_path: Path) -> AsyncIterator[GatewayUnderTest]:
    """A gateway with the rules route over a private demo control plane."""
    async with running_gateway(tmp_path / "gw", demo_cp.url, demo_cp.gateway_token) as handle:
        yield handle
