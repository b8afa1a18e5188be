"""A fake Entra token endpoint and Microsoft Graph on 127.0.0.1 over HTTPS, for the Graph tests.

msal refuses an ``http`` authority, so the server speaks TLS with a leaf certificate signed by a
CA made here. Graph's behaviour that matters is kept: ``getSchedule`` refuses more than 20
schedules, ``events`` de-duplicates by ``transactionId``, and a queued 429 carries
``Retry-After``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from aiohttp.typedefs import Handler
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tools.graph import GraphClient

TENANT = "contoso-tenant"
CLIENT_ID = "goodbot-client"
SECRET = "s3cret-value"


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(CA pem, leaf cert pem, leaf key pem) for 127.0.0.1 and localhost."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "goodbot test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem, cert_pem, key_pem = directory / "ca.pem", directory / "leaf.pem", directory / "key.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_pem, cert_pem, key_pem


@dataclass
class FakeGraph:
    """The state of the fake: what was asked, and what it answers."""

    base: str = ""
    ca_file: str = ""
    token_requests: int = 0
    schedule_calls: list[list[str]] = field(default_factory=list)
    busy: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    hours: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Created events by transactionId (Graph returns the first for a repeated id)."""
    event_posts: int = 0
    throttle: list[str] = field(default_factory=list)
    """``Retry-After`` values of the next answers, each a 429."""
    throttled: int = 0
    tokens: set[str] = field(default_factory=set)
    in_flight: int = 0
    most_in_flight: int = 0

    def client(self, **kwargs: Any) -> GraphClient:
        """A client pointed at this fake."""
        return GraphClient(
            TENANT,
            CLIENT_ID,
            SECRET,
            authority_host=self.base,
            base_url=f"{self.base}/v1.0",
            ca_file=self.ca_file,
            **kwargs,
        )

    # Handlers.

    async def openid(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        return web.json_response(
            {
                "issuer": f"{self.base}/{tenant}/v2.0",
                "authorization_endpoint": f"{self.base}/{tenant}/oauth2/v2.0/authorize",
                "token_endpoint": f"{self.base}/{tenant}/oauth2/v2.0/token",
            }
        )

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.token_requests += 1
        if form.get("client_secret") != SECRET or form.get("grant_type") != "client_credentials":
            return web.json_response(
                {"error": "invalid_client", "error_description": "AADSTS7000215"}, status=401
            )
        token = f"tok-{uuid.uuid4().hex}"
        self.tokens.add(token)
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
        )

    @web.middleware
    async def graph_gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/v1.0/"):
            return await handler(request)
        auth = request.headers.get("Authorization", "")
        if auth.removeprefix("Bearer ") not in self.tokens:
            return _graph_error(401, "InvalidAuthenticationToken", "Access token is empty.")
        if self.throttle:
            self.throttled += 1
            return _graph_error(
                429, "TooManyRequests", "Too many requests", {"Retry-After": self.throttle.pop(0)}
            )
        return await handler(request)

    async def get_schedule(self, request: web.Request) -> web.Response:
        body = await request.json()
        schedules = list(body["schedules"])
        if len(schedules) > 20:
            return _graph_error(400, "ErrorInvalidParameter", "At most 20 schedules")
        self.schedule_calls.append(schedules)
        prefer = request.headers.get("Prefer", "")
        zone = prefer.split('"')[1] if '"' in prefer else "UTC"
        value = []
        for address in schedules:
            if address.startswith("nobody@"):
                value.append(
                    {
                        "scheduleId": address,
                        "error": {"message": "The mailbox was not found", "responseCode": "x"},
                    }
                )
                continue
            value.append(
                {
                    "scheduleId": address,
                    "availabilityView": "",
                    "scheduleItems": [
                        {
                            "status": "busy",
                            "start": {"dateTime": s, "timeZone": zone},
                            "end": {"dateTime": e, "timeZone": zone},
                        }
                        for s, e in (
                            (b["start"], b["end"]) for b in self.busy.get(address.lower(), [])
                        )
                    ],
                    "workingHours": self.hours.get(address.lower(), _hours("UTC")),
                }
            )
        return web.json_response({"value": value})

    async def mailbox_settings(self, request: web.Request) -> web.Response:
        user = request.match_info["user"].lower()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.02)
        self.in_flight -= 1
        hours = self.hours.get(user, _hours("UTC"))
        return web.json_response(
            {"timeZone": hours["timeZone"]["name"], "workingHours": hours, "language": {}}
        )

    async def create_event(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.event_posts += 1
        tid = body.get("transactionId")
        if tid in self.events:
            return web.json_response(self.events[tid], status=201)
        event = {
            **body,
            "id": f"AAMk-{uuid.uuid4().hex[:8]}",
            "organizer": {"emailAddress": {"address": request.match_info["user"]}},
            "webLink": "https://outlook.office365.com/owa/?itemid=x",
        }
        if body.get("isOnlineMeeting"):
            event["onlineMeeting"] = {"joinUrl": "https://teams.microsoft.com/l/meetup-join/x"}
        self.events[str(tid)] = event
        return web.json_response(event, status=201)

    async def calendar_view(self, request: web.Request) -> web.Response:
        start = datetime.fromisoformat(request.query["startDateTime"])
        end = datetime.fromisoformat(request.query["endDateTime"])
        user = request.match_info["user"].lower()
        value = []
        for event in self.events.values():
            s = datetime.fromisoformat(event["start"]["dateTime"]).replace(
                tzinfo=ZoneInfo(event["start"]["timeZone"])
            )
            e = datetime.fromisoformat(event["end"]["dateTime"]).replace(
                tzinfo=ZoneInfo(event["end"]["timeZone"])
            )
            invited = {a["emailAddress"]["address"] for a in event.get("attendees", [])}
            mine = event["organizer"]["emailAddress"]["address"].lower() == user
            if (mine or user in invited) and s < end and start < e:
                value.append(event)
        return web.json_response({"value": value})


def _hours(zone: str, start: str = "09:00:00.0000000", end: str = "17:00:00.0000000") -> Any:
    return {
        "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
        "startTime": start,
        "endTime": end,
        "timeZone": {"name": zone},
    }


working_hours_doc = _hours


def _graph_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}},
        status=status,
        headers={"request-id": str(uuid.uuid4()), **(headers or {})},
    )


@asynccontextmanager
async def fake_graph(directory: Path) -> AsyncIterator[FakeGraph]:
    """Serve the fake on 127.0.0.1 over HTTPS; yields it with ``base`` and ``ca_file`` set."""
    ca, cert, key = make_certificates(directory)
    fake = FakeGraph(ca_file=str(ca))
    app = web.Application(middlewares=[fake.graph_gate])
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", fake.openid)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", fake.token)
    app.router.add_post("/v1.0/users/{user}/calendar/getSchedule", fake.get_schedule)
    app.router.add_get("/v1.0/users/{user}/mailboxSettings", fake.mailbox_settings)
    app.router.add_post("/v1.0/users/{user}/events", fake.create_event)
    app.router.add_get("/v1.0/users/{user}/calendarView", fake.calendar_view)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    fake.base = f"https://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()
