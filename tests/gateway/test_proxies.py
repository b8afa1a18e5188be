"""The client's address behind trusted proxies: the CLI's failed sign-ins count per client."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.proxies import client_address
from gateway.settings import ServerSettings
from tests.demo import DemoControlPlane
from tests.e2e.harness import GatewayUnderTest, running_gateway

LB = [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("127.0.0.1/32")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("10.0.0.5", ["203.0.113.9"], "203.0.113.9"),
        ("10.0.0.5", ["198.51.100.1, 203.0.113.9, 10.0.0.7"], "203.0.113.9"),
        ("10.0.0.5", ["198.51.100.1", "203.0.113.9"], "203.0.113.9"),
        ("10.0.0.5", ["10.0.0.8, 10.0.0.7"], "10.0.0.8"),
        ("10.0.0.5", ["not-an-address"], "10.0.0.5"),
        ("10.0.0.5", [], "10.0.0.5"),
        # Not from a proxy of ours: the header is the sender's own claim, ignored.
        ("192.0.2.44", ["203.0.113.9"], "192.0.2.44"),
        (None, ["203.0.113.9"], "unknown"),
        ("10.0.0.5", ["2001:db8::1"], "2001:db8::1"),
    ],
)
def test_the_client_is_the_first_untrusted_hop_from_the_right(
    peer: str | None, forwarded: list[str], client: str
) -> None:
    assert client_address(peer, forwarded, LB) == client


@pytest.fixture
async def behind_lb(demo_cp: DemoControlPlane, tmp_path: Path) -> AsyncIterator[GatewayUnderTest]:
    server = ServerSettings.model_validate({"trusted_proxies": ["127.0.0.1/32"]})
    async with running_gateway(
        tmp_path / "gw", demo_cp.url, demo_cp.gateway_token, server=server
    ) as gw:
        yield gw


async def whoami(gw: GatewayUnderTest, token: str, client: str) -> int:
    headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": client}
    async with gw.http.get(f"{gw.url}/cli/v1/whoami", headers=headers) as r:
        await r.read()
        return r.status


async def test_a_guesser_behind_the_balancer_blocks_only_itself(
    behind_lb: GatewayUnderTest,
) -> None:
    limiter = behind_lb.gateway.turns.sign_in_failures
    for n in range(limiter.max_failures):
        assert await whoami(behind_lb, f"guess-{n}", "203.0.113.9") == 401
    assert await whoami(behind_lb, behind_lb.token("ana"), "203.0.113.9") == 429
    # Everyone else behind the same balancer still signs in.
    assert await whoami(behind_lb, behind_lb.token("ana"), "198.51.100.20") == 200


async def test_without_trusted_proxies_the_header_cannot_dodge_the_block(
    demo_cp: DemoControlPlane, tmp_path: Path
) -> None:
    async with running_gateway(tmp_path / "gw", demo_cp.url, demo_cp.gateway_token) as gw:
        limiter = gw.gateway.turns.sign_in_failures
        for n in range(limiter.max_failures):
            assert await whoami(gw, f"guess-{n}", f"203.0.113.{n}") == 401
        assert await whoami(gw, gw.token("ana"), "198.51.100.20") == 429
