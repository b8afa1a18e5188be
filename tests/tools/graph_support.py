"""Entra and Microsoft Graph on 127.0.0.1 over HTTPS for the Graph tests, with failure knobs.

The server is the demo Graph the product ships (``gateway.demo_graph``: Graph's payload
shapes, ``transactionId`` de-duplication, 20 schedules a call, four requests in flight per
mailbox; ``gateway.demo_entra``: secrets, certificate assertions, on-behalf-of). This subclass
adds what a test needs to provoke: queued 429s and 503s with ``Retry-After``, and an events
POST that creates the event but answers late.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.demo_entra import DemoEntra
from gateway.demo_graph import DemoGraph, graph_error, hours_doc, serving
from gateway.demo_tls import make_client_certificate
from tools.graph import GraphClient
from tools.graph_auth import ClientCertificate

TENANT = "contoso-tenant"
CLIENT_ID = "goodbot-client"
SECRET = "s3cret-value"


def working_hours_doc(windows_zone: str, start: str = "09:00", end: str = "17:00") -> Any:
    """Graph ``workingHours``, Monday to Friday."""
    return hours_doc(windows_zone, start, end)


@dataclass
class Knobs:
    """Failures the next answers carry."""

    throttle: list[str] = field(default_factory=list)
    """``Retry-After`` values of the next answers, each a 429."""
    unavailable: list[str] = field(default_factory=list)
    """``Retry-After`` values of the next answers, each a 503 (after the 429s)."""
    slow_posts: list[float] = field(default_factory=list)
    """Seconds the next events POSTs wait after creating their event, before answering."""
    failed: int = 0
    """Answers refused by the knobs so far."""


class FakeGraph(DemoGraph):
    """The demo Graph plus knobs; ``base`` and ``ca_file`` are set once served."""

    def __init__(self, entra: DemoEntra, directory: Path) -> None:
        super().__init__(entra)
        self.knobs = Knobs()
        self.directory = directory
        self.base = ""
        self.ca_file = str(directory / "ca.pem")
        self.transaction_ids: list[str] = []
        """``transactionId`` of every events POST, in order."""

    @property
    def token_requests(self) -> int:
        return self.entra.token_requests

    def client(self, *, certificate: bool = False, **kwargs: Any) -> GraphClient:
        """A client pointed at this fake, with the secret or the certificate."""
        credential: str | ClientCertificate = SECRET
        if certificate:
            credential = ClientCertificate.load(self.directory / "app-credential.pem")
        return GraphClient(
            TENANT,
            CLIENT_ID,
            credential,
            authority_host=self.base,
            base_url=f"{self.base}/v1.0",
            ca_file=self.ca_file,
            **kwargs,
        )

    def add_busy(self, address: str, start: datetime, end: datetime, subject: str = "Busy") -> None:
        """A meeting ``address`` organizes between ``start`` and ``end`` (aware)."""
        self.add_meeting(address, start, end, subject)

    @web.middleware
    async def gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v1.0/") and self.entra.lookup(
            request.headers.get("Authorization", "").removeprefix("Bearer ")
        ):
            if self.knobs.throttle:
                self.knobs.failed += 1
                retry = self.knobs.throttle.pop(0)
                return graph_error(429, "TooManyRequests", "Slow down", **{"Retry-After": retry})
            if self.knobs.unavailable:
                self.knobs.failed += 1
                retry = self.knobs.unavailable.pop(0)
                return graph_error(503, "ServiceUnavailable", "Try later", **{"Retry-After": retry})
        return await super().gate(request, handler)

    async def create_event(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.transaction_ids.append(str(body.get("transactionId")))
        answer = await super().create_event(request)
        if self.knobs.slow_posts:
            await asyncio.sleep(self.knobs.slow_posts.pop(0))
        return answer


@asynccontextmanager
async def fake_graph(directory: Path) -> AsyncIterator[FakeGraph]:
    """Serve the fake on 127.0.0.1 over HTTPS (secret and certificate both registered)."""
    certificate = make_client_certificate(directory / "app-credential.pem", CLIENT_ID)
    entra = DemoEntra(TENANT, CLIENT_ID, secret=SECRET, certificate=certificate)
    fake = FakeGraph(entra, directory)
    async with serving(fake, directory) as base:
        fake.base = base
        yield fake
