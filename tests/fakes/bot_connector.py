"""A local Bot Connector emulator on 127.0.0.1: what Azure Bot Service is to a Teams bot.

It plays three parts, each a real server:

* **Keys** (HTTP): ``GET /keys`` serves the JWKS of a test RSA key. ``jwks_seam`` points the
  Agents SDK's Bot Framework key lookup at it (one private dict entry; see
  ``../shared/TESTING-NOTES.md`` §1.2): validation itself runs unchanged.
* **Entra** (HTTPS, a test CA): OIDC discovery and the token endpoint msal asks for the bot's
  outbound tokens (client credentials) and on-behalf-of exchanges.
* **Connector** (HTTP, the ``serviceUrl``): records every activity goodbot sends, replies,
  updates (``PUT``), and can answer the next requests with 429 or 503 to exercise retries.
  The same server is the Bot Framework token service (sign-in resources, sign-in codes).

``sign`` issues Bot Framework channel tokens (``iss`` https://api.botframework.com, ``aud``
the app id, ``serviceurl``), with any claim or header overridden to forge one; ``message`` and
``invoke`` build Teams activities; ``post`` delivers one to the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.demo_tls import make_server_certificates

BF_ISSUER = "https://api.botframework.com"
APP_ID = "6f1c2a8e-0b7d-4e55-9a1e-3d2b7c9e0f11"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OTHER_TENANT = "0d3e1c5a-4b2f-4c8e-9f7a-6b5d4c3b2a19"
SECRET = "bot-client-secret"
KID = "test-key-1"
ANA_OID = "a1a1a1a1-0000-4000-8000-00000000a0a0"
SAM_OID = "b2b2b2b2-0000-4000-8000-00000000b0b0"
STRANGER_OID = "c3c3c3c3-0000-4000-8000-00000000c0c0"
BOT_ID = f"28:{APP_ID}"


def new_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit RSA key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Recorded:
    """One request goodbot made to the connector."""

    method: str
    path: str
    body: dict[str, Any]
    authorization: str | None


@dataclass
class BotConnector:
    """The emulator's state: keys, tokens issued, activities received, failures queued."""

    key: rsa.RSAPrivateKey = field(default_factory=new_key)
    keys_url: str = ""
    idp_url: str = ""
    service_url: str = ""
    ca_file: Path | None = None
    received: list[Recorded] = field(default_factory=list)
    tokens_issued: int = 0
    obo_requests: list[dict[str, str]] = field(default_factory=list)
    obo_fails: bool = False
    user_tokens: dict[str, str] = field(default_factory=dict)
    """Tokens the token service already holds, by the user's channel id (``29:…``)."""
    magic_codes: dict[str, str] = field(default_factory=dict)
    """Sign-in codes the token service redeems, and the token each gives."""
    token_service_calls: list[str] = field(default_factory=list)
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    """Answers for the next connector requests, each (status, headers), before normal ones."""
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    # Tokens.

    def sign(
        self,
        *,
        claims: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        headers: dict[str, Any] | None = None,
        key: rsa.RSAPrivateKey | bytes | None = None,
        algorithm: str = "RS256",
        age: int = 0,
    ) -> str:
        """A channel token for our bot; ``claims``/``headers`` override (a header set to None is
        left out), ``drop`` removes claims."""
        now = int(time.time()) - age
        body: dict[str, Any] = {
            "iss": BF_ISSUER,
            "aud": APP_ID,
            "serviceurl": self.service_url,
            "nbf": now - 5,
            "iat": now - 5,
            "exp": now + 3600,
        }
        body.update(claims or {})
        for name in drop:
            body.pop(name, None)
        merged: dict[str, Any] = {"kid": KID, **(headers or {})}
        head = {name: value for name, value in merged.items() if value is not None}
        if algorithm == "none":
            return jwt.encode(body, "", algorithm="none", headers=head)
        return jwt.encode(body, key or self.key, algorithm=algorithm, headers=head)

    def jwks(self) -> dict[str, Any]:
        public = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": KID, "use": "sig", "alg": "RS256"}]}

    # Activities.

    def message(
        self,
        text: str,
        *,
        user: str = ANA_OID,
        name: str = "Ana Lima",
        conversation: str = "a:personal-ana",
        kind: str = "personal",
        tenant: str = TENANT,
        activity_id: str | None = None,
        mention: bool = False,
        service_url: str | None = None,
    ) -> dict[str, Any]:
        """A Teams message activity from ``user``."""
        activity: dict[str, Any] = {
            "type": "message",
            "id": activity_id or f"1700{next(self._ids):09d}",
            "timestamp": "2026-12-01T10:00:00.000Z",
            "serviceUrl": service_url or self.service_url,
            "channelId": "msteams",
            "from": {"id": f"29:{user}", "name": name, "aadObjectId": user},
            "conversation": {
                "id": conversation,
                "conversationType": kind,
                "tenantId": tenant,
                **({"isGroup": True} if kind != "personal" else {}),
            },
            "recipient": {"id": BOT_ID, "name": "goodbot"},
            "textFormat": "plain",
            "text": text,
            "channelData": {"tenant": {"id": tenant}},
            "locale": "en-US",
        }
        if mention:
            activity["text"] = f"<at>goodbot</at> {text}"
            activity["entities"] = [
                {
                    "type": "mention",
                    "text": "<at>goodbot</at>",
                    "mentioned": {"id": BOT_ID, "name": "goodbot"},
                }
            ]
        return activity

    def invoke(
        self,
        card: dict[str, Any],
        verb: str,
        *,
        card_id: str,
        user: str = ANA_OID,
        name: str = "Ana Lima",
        conversation: str = "a:personal-ana",
        kind: str = "personal",
        data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The ``adaptiveCard/action`` invoke Teams sends when ``user`` clicks ``verb``."""
        (action,) = [a for a in card.get("actions", []) if a.get("verb") == verb]
        activity = self.message("", user=user, name=name, conversation=conversation, kind=kind)
        activity.update(
            {
                "type": "invoke",
                "name": "adaptiveCard/action",
                "replyToId": card_id,
                "value": {
                    "action": {
                        "type": "Action.Execute",
                        "verb": verb,
                        "data": data if data is not None else action["data"],
                    },
                    "trigger": "manual",
                },
            }
        )
        activity.pop("text", None)
        return activity

    async def post(
        self,
        http: aiohttp.ClientSession,
        gateway: str,
        activity: dict[str, Any],
        token: str | None = "",
    ) -> tuple[int, Any]:
        """POST ``activity`` to ``gateway``/api/messages with ``token`` ('' signs a valid one)."""
        headers = {}
        bearer = self.sign() if token == "" else token
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        async with http.post(f"{gateway}/api/messages", json=activity, headers=headers) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None)

    # What goodbot sent.

    def sent(self, *, kind: str = "message") -> list[dict[str, Any]]:
        """Activities POSTed to the connector, of one type."""
        return [r.body for r in self.received if r.method == "POST" and r.body.get("type") == kind]

    def cards(self) -> list[dict[str, Any]]:
        """Adaptive Cards sent (content), in order."""
        return [
            a["content"]
            for body in self.sent()
            for a in body.get("attachments") or []
            if a.get("contentType") == "application/vnd.microsoft.card.adaptive"
        ]

    def updates(self) -> list[Recorded]:
        return [r for r in self.received if r.method == "PUT"]

    def texts(self) -> list[str]:
        return [str(b.get("text")) for b in self.sent() if b.get("text")]

    # Handlers.

    async def _keys(self, _: web.Request) -> web.Response:
        return web.json_response(self.jwks())

    async def _openid(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        return web.json_response(
            {
                "issuer": f"{self.idp_url}/{tenant}/v2.0",
                "authorization_endpoint": f"{self.idp_url}/{tenant}/oauth2/v2.0/authorize",
                "token_endpoint": f"{self.idp_url}/{tenant}/oauth2/v2.0/token",
            }
        )

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        if form.get("client_id") != APP_ID or form.get("client_secret") != SECRET:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            self.obo_requests.append(form)
            if self.obo_fails:
                return web.json_response(
                    {"error": "invalid_grant", "error_description": "AADSTS50013"}, status=400
                )
            return web.json_response(
                {
                    "access_token": f"graph-{uuid.uuid4().hex}",
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "scope": form.get("scope", ""),
                }
            )
        self.tokens_issued += 1
        return web.json_response(
            {"access_token": f"bf-{uuid.uuid4().hex}", "token_type": "Bearer", "expires_in": 3600}
        )

    async def _sign_in_resource(self, request: web.Request) -> web.Response:
        self.token_service_calls.append("GetTokenOrSignInResource")
        assert request.query["connectionName"] and request.query["state"]
        held = self.user_tokens.get(request.query["userId"])
        if held is not None:
            return web.json_response(
                {
                    "tokenResponse": {
                        "connectionName": request.query["connectionName"],
                        "token": held,
                    }
                }
            )
        return web.json_response(
            {
                "signInResource": {
                    "signInLink": f"{self.service_url}signin?state={request.query['state'][:16]}",
                    "tokenExchangeResource": {
                        "id": str(uuid.uuid4()),
                        "uri": f"api://bot.example.com/botid-{APP_ID}",
                        "providerId": "aad-v2",
                    },
                }
            }
        )

    async def _user_token(self, request: web.Request) -> web.Response:
        self.token_service_calls.append("GetToken")
        token = self.magic_codes.get(request.query.get("code", ""))
        if token is None:
            return web.json_response({"error": "not found"}, status=404)
        connection = request.query["connectionName"]
        return web.json_response({"connectionName": connection, "token": token})

    def sign_in_invoke(self, name: str, value: dict[str, Any], **who: Any) -> dict[str, Any]:
        """A ``signin/…`` invoke from a person (``user``, ``name`` as in ``message``)."""
        activity = self.message("", **who)
        activity.update({"type": "invoke", "name": name, "value": value})
        activity.pop("text", None)
        return activity

    async def _activity(self, request: web.Request) -> web.Response:
        raw = await request.text()
        self.received.append(
            Recorded(
                request.method,
                request.path,
                json.loads(raw) if raw else {},
                request.headers.get("Authorization"),
            )
        )
        if self.failures:
            status, headers = self.failures.pop(0)
            return web.json_response(
                {"error": {"code": "Throttled"}}, status=status, headers=headers
            )
        return web.json_response({"id": f"msg-{next(self._ids)}"})


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    files = make_server_certificates(directory, "goodbot test CA")
    return files.ca, files.cert, files.key


@contextlib.asynccontextmanager
async def bot_connector(directory: Path) -> AsyncIterator[BotConnector]:
    """Serve the emulator's three parts on loopback for the duration of the block."""
    fake = BotConnector()
    ca, cert, key = _certificates(directory)
    fake.ca_file = ca

    plain = web.Application()
    plain.router.add_get("/keys", fake._keys)
    plain.router.add_get("/api/usertoken/GetTokenOrSignInResource", fake._sign_in_resource)
    plain.router.add_get("/api/usertoken/GetToken", fake._user_token)
    plain.router.add_route("*", "/v3/conversations/{conversation}/activities", fake._activity)
    plain.router.add_route(
        "*", "/v3/conversations/{conversation}/activities/{activity}", fake._activity
    )
    idp = web.Application()
    idp.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", fake._openid)
    idp.router.add_post("/{tenant}/oauth2/v2.0/token", fake._token)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runners = [web.AppRunner(plain, access_log=None), web.AppRunner(idp, access_log=None)]
    for runner in runners:
        await runner.setup()
    try:
        await web.TCPSite(runners[0], "127.0.0.1", 0).start()
        await web.TCPSite(runners[1], "127.0.0.1", 0, ssl_context=context).start()
        base = f"http://127.0.0.1:{runners[0].addresses[0][1]}"
        fake.keys_url = f"{base}/keys"
        fake.service_url = f"{base}/"
        fake.idp_url = f"https://127.0.0.1:{runners[1].addresses[0][1]}"
        yield fake
    finally:
        for runner in runners:
            await runner.cleanup()


def jwks_seam(monkeypatch: pytest.MonkeyPatch, keys_url: str) -> None:
    """Point the SDK's Bot Framework key lookup at ``keys_url`` (the SDK has no setting for it);
    drop the process-wide cache of key clients so no earlier test's keys are used."""
    from microsoft_agents.hosting.core.authorization import _entra_issuers
    from microsoft_agents.hosting.core.authorization.jwt import jwt_token_validator as jtv

    # The validator imports this very dict from ``_entra_issuers``.
    monkeypatch.setitem(_entra_issuers.BOTFRAMEWORK_JWKS_URIS, BF_ISSUER, keys_url)
    fresh = jtv._JwkClientManager()  # type: ignore[no-untyped-call]
    monkeypatch.setattr(jtv.JwtTokenValidator, "_jwk_client_manager", fresh)


async def until(predicate: Callable[[], Any], seconds: float = 15.0) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError("timed out waiting for the connector")
