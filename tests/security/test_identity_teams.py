"""Forged identity on Teams, beyond ``tests/e2e/test_teams.py`` (no token, another key, alg
none, HS256 with a random key, wrong audience or issuer, expired, no or unknown key id, no or
another service URL): HS256 signed with the bot's public key (algorithm confusion), a token
not valid yet, an Entra issuer of another tenant, and a valid token presented with an activity
for another serviceUrl. All 401, audited once, nothing stored or sent."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.e2e.harness import GatewayUnderTest
from tests.e2e.test_teams import audit, connector, count, gw
from tests.fakes.bot_connector import APP_ID, KID, OTHER_TENANT, BotConnector

__all__ = ["connector", "gw"]  # the Teams gateway fixtures, used here by name


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def confused(connector: BotConnector) -> str:
    """An HS256 token whose HMAC key is the bot's public key in PEM (what a verifier that
    takes the algorithm from the token would check it against)."""
    public = connector.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT", "kid": KID}
    claims = {
        "iss": "https://api.botframework.com",
        "aud": APP_ID,
        "serviceurl": connector.service_url,
        "nbf": now - 5,
        "exp": now + 3600,
    }
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(public, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(mac)}"


def forged(connector: BotConnector, name: str) -> Any:
    now = int(time.time())
    return {
        "HS256 with the public key": lambda: confused(connector),
        "not valid yet": lambda: connector.sign(claims={"nbf": now + 900, "iat": now + 900}),
        "another tenant's issuer": lambda: connector.sign(
            claims={"iss": f"https://login.microsoftonline.com/{OTHER_TENANT}/v2.0"}
        ),
    }[name]()


@pytest.mark.parametrize(
    "name", ["HS256 with the public key", "not valid yet", "another tenant's issuer"]
)
async def test_forged_tokens_are_refused_and_audited_once(
    gw: GatewayUnderTest, connector: BotConnector, name: str
) -> None:
    message = connector.message("promote google-chrome to pilot", activity_id="forged-9")
    status, body = await connector.post(gw.http, gw.url, message, token=forged(connector, name))
    assert status == 401, (name, body)
    await asyncio.sleep(0.3)
    assert connector.received == []
    assert await count(gw, "messages") == 0
    assert [r["type"] for r in await audit(gw)] == ["auth.refused"]


async def test_a_valid_token_replayed_with_another_service_url_is_refused(
    gw: GatewayUnderTest, connector: BotConnector
) -> None:
    token = connector.sign()  # genuine, for the connector's own serviceUrl
    elsewhere = "http://127.0.0.1:9/attacker/"
    message = connector.message("what is pending my approval?", service_url=elsewhere)
    status, _ = await connector.post(gw.http, gw.url, message, token=token)
    assert status == 401
    await asyncio.sleep(0.3)
    assert connector.received == [] and await count(gw, "messages") == 0
    # The same token with the activity it was issued for is accepted.
    ok = connector.message("what is pending my approval?")
    assert (await connector.post(gw.http, gw.url, ok, token=token))[0] == 202
