"""Microsoft Graph client: the calendar tools' way out, over HTTPS to Graph (tools → Graph).

Tokens: app-only, client credentials (``msal.ConfidentialClientApplication`` with a client
secret and a tenant authority) for ``https://graph.microsoft.com/.default``; msal keeps the
token in its cache and answers from it while it is valid. msal is synchronous and its
constructor fetches the OpenID configuration, so both run in ``asyncio.to_thread``.

Limits: Graph throttles per app and mailbox, so at most ``MAX_IN_FLIGHT`` requests per mailbox
run at once; a 429 or 503 is retried after its ``Retry-After`` (capped) up to ``retries`` times.

Exactly once: ``create_event`` sends ``transactionId``; Graph returns the existing event for a
repeated id, so a retried booking never books twice.

The error tree, drawn once::

    GraphError                      status
    ├── GraphUnavailableError            —, 5xx   (refused, timed out, server error)
    ├── GraphThrottledError              429      (still throttled after the retries)
    ├── GraphAuthError                   401, 403, or no token from Entra
    ├── GraphNotFoundError               404      (no such mailbox)
    └── GraphInvalidError                400 and other 4xx
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Self
from urllib.parse import quote

import aiohttp
from pydantic import SecretStr

log = logging.getLogger(__name__)

Json = dict[str, Any]
SCOPE: Final = "https://graph.microsoft.com/.default"
MAX_IN_FLIGHT: Final = 4
"""Requests one mailbox may have in flight at once (Graph's per-mailbox concurrency limit)."""
MAX_SCHEDULES: Final = 20
"""Schedules one ``getSchedule`` call may ask for; more are asked for in chunks."""
MAX_RETRY_AFTER: Final = 30.0
"""Longest wait honoured from a ``Retry-After`` header, in seconds."""
_MAILBOX: Final = re.compile(r"^[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+$|^[0-9a-fA-F-]{36}$")


class GraphError(Exception):
    """Base of every failure of a Graph call."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        """A sentence fit for the person (Graph's ``error.message`` when it sent one)."""
        self.status = status
        """The HTTP status, or None when no response arrived."""
        self.code = code
        """Graph's error code (``ErrorItemNotFound``…) or ours (``unavailable``)."""
        self.request_id = request_id
        """Graph's ``request-id`` header: quote it to Microsoft support."""
        self.retry_after = retry_after
        """Seconds Graph asked us to wait, for a throttled call."""


class GraphUnavailableError(GraphError):
    """No usable answer: connection refused, timed out, or a 5xx."""


class GraphThrottledError(GraphError):
    """429 still, after the retries."""


class GraphAuthError(GraphError):
    """401 or 403, or Entra refused the token (wrong secret, missing consent)."""


class GraphNotFoundError(GraphError):
    """404: no such mailbox or item."""


class GraphInvalidError(GraphError):
    """400 and other 4xx: the request was malformed, or refused before sending."""


def _error_for(
    status: int, body: Any, request_id: str | None, retry_after: float | None
) -> GraphError:
    err = body.get("error") if isinstance(body, dict) else None
    code = str(err.get("code", "error")) if isinstance(err, dict) else "error"
    message = str(err.get("message", "")) if isinstance(err, dict) else ""
    message = message or f"Microsoft Graph answered HTTP {status}"
    kind: type[GraphError]
    if status == 429:
        kind = GraphThrottledError
    elif status >= 500:
        kind = GraphUnavailableError
    elif status in (401, 403):
        kind = GraphAuthError
    elif status == 404:
        kind = GraphNotFoundError
    else:
        kind = GraphInvalidError
    return kind(message, status=status, code=code, request_id=request_id, retry_after=retry_after)


def _retry_after(value: str | None, default: float) -> float:
    try:
        seconds = float(value) if value is not None else default
    except ValueError:
        seconds = default
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _mailbox(user: str) -> str:
    if not _MAILBOX.match(user):
        raise GraphInvalidError(f"{user!r} is not a mailbox address", code="invalid_mailbox")
    return quote(user, safe="@")


@dataclass
class _Lanes:
    """One semaphore per mailbox, created on first use."""

    size: int
    lanes: dict[str, asyncio.Semaphore] = field(default_factory=dict)

    def __call__(self, mailbox: str) -> asyncio.Semaphore:
        key = mailbox.lower()
        if key not in self.lanes:
            self.lanes[key] = asyncio.Semaphore(self.size)
        return self.lanes[key]


class GraphClient:
    """An async client for the Graph calendar calls the tools need, owning its HTTP session.

    Use it as ``async with GraphClient(tenant, client_id, secret) as graph: ...``.
    """

    def __init__(
        self,
        tenant_id: str,
        client_id: str,
        client_secret: SecretStr | str,
        *,
        authority_host: str = "https://login.microsoftonline.com",
        base_url: str = "https://graph.microsoft.com/v1.0",
        ca_file: str | None = None,
        timeout: float = 20.0,
        retries: int = 3,
        retry_default: float = 1.0,
        domain: str | None = None,
        allowed_domains: Iterable[str] = (),
    ) -> None:
        """Configure the client; the HTTP session opens on ``__aenter__``.

        Args:
            tenant_id: The Entra tenant (id or domain) the app is registered in.
            client_id: The app registration's client id.
            client_secret: The app registration's client secret.
            authority_host: Entra's root; a loopback IdP in tests.
            base_url: Graph's root, with its version.
            ca_file: A CA bundle trusted for Entra and Graph instead of the system's (tests).
            timeout: Seconds a whole call may take, retries included.
            retries: Extra attempts after a 429 or 503.
            retry_default: Seconds to wait when a 429 or 503 has no ``Retry-After``.
            domain: The mail domain a bare name (``ana``) is completed with.
            allowed_domains: Domains the calendar tools may invite; empty allows any.
        """
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.authority = f"{authority_host.rstrip('/')}/{tenant_id}"
        self.base_url = base_url.rstrip("/")
        self.ca_file = ca_file
        self.timeout = timeout
        self.retries = retries
        self.retry_default = retry_default
        self.domain = domain.lower() if domain else None
        self.allowed_domains = frozenset(d.lower() for d in allowed_domains)
        self._secret = (
            client_secret if isinstance(client_secret, SecretStr) else SecretStr(client_secret)
        )
        self._http: aiohttp.ClientSession | None = None
        self._msal: Any = None
        self._requests: Any = None
        self._msal_lock = asyncio.Lock()
        self._lanes = _Lanes(MAX_IN_FLIGHT)

    def __repr__(self) -> str:
        return f"GraphClient(tenant_id={self.tenant_id!r}, base_url={self.base_url!r})"

    async def __aenter__(self) -> Self:
        connector = None
        if self.ca_file is not None:
            import ssl

            connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=self.ca_file))
        self._http = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None)
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session and msal's (idempotent)."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._requests is not None:
            self._requests.close()
        self._msal = self._requests = None

    # Tokens.

    def _build_msal(self) -> Any:
        import msal  # type: ignore[import-untyped]
        import requests

        session = requests.Session()
        # The env's REQUESTS_CA_BUNDLE would override ``verify`` (TESTING-NOTES §1.5).
        session.trust_env = self.ca_file is None
        if self.ca_file is not None:
            session.verify = self.ca_file
        self._requests = session
        return msal.ConfidentialClientApplication(
            self.client_id,
            client_credential=self._secret.get_secret_value(),
            authority=self.authority,
            instance_discovery=self.ca_file is None,
            http_client=session,
        )

    async def _token(self) -> str:
        async with self._msal_lock:
            if self._msal is None:
                try:
                    self._msal = await asyncio.to_thread(self._build_msal)
                except Exception as exc:
                    raise GraphAuthError(
                        f"cannot reach Entra at {self.authority}: {type(exc).__name__}",
                        code="token_unavailable",
                    ) from None
        result = await asyncio.to_thread(self._msal.acquire_token_for_client, scopes=[SCOPE])
        if "access_token" not in result:
            raise GraphAuthError(
                f"Entra refused a token: {result.get('error', 'unknown')}",
                code=str(result.get("error", "token_refused")),
            )
        return str(result["access_token"])

    # Transport.

    async def _call(
        self,
        method: str,
        mailbox: str,
        path: str,
        *,
        json: Json | None = None,
        headers: dict[str, str] | None = None,
    ) -> Json:
        if self._http is None:
            raise RuntimeError("GraphClient is not open; use 'async with'")
        url = f"{self.base_url}{path}"
        try:
            async with asyncio.timeout(self.timeout), self._lanes(mailbox):
                attempt = 0
                while True:
                    token = await self._token()
                    sent = {"Authorization": f"Bearer {token}", **(headers or {})}
                    try:
                        async with self._http.request(method, url, json=json, headers=sent) as resp:
                            request_id = resp.headers.get("request-id")
                            if resp.status < 400:
                                return dict(await resp.json()) if resp.content_length != 0 else {}
                            try:
                                body = await resp.json(content_type=None)
                            except (ValueError, aiohttp.ContentTypeError):
                                body = None
                            wait = _retry_after(resp.headers.get("Retry-After"), self.retry_default)
                            error = _error_for(resp.status, body, request_id, wait)
                    except aiohttp.ClientError as exc:
                        raise GraphUnavailableError(
                            f"Microsoft Graph did not answer ({type(exc).__name__})",
                            code="unavailable",
                        ) from None
                    if resp.status not in (429, 503) or attempt >= self.retries:
                        raise error
                    attempt += 1
                    log.info(
                        "graph throttled; retrying",
                        extra={"status": resp.status, "wait": wait, "attempt": attempt},
                    )
                    await asyncio.sleep(wait)
        except TimeoutError:
            raise GraphUnavailableError(
                f"Microsoft Graph did not answer within {self.timeout:g} s", code="timeout"
            ) from None

    # Calls.

    async def get_schedule(
        self,
        organizer: str,
        schedules: Iterable[str],
        start: datetime,
        end: datetime,
        *,
        interval: int = 30,
        timezone: str = "UTC",
    ) -> list[Json]:
        """Free/busy for each schedule, asking at most ``MAX_SCHEDULES`` per call.

        Args:
            organizer: The mailbox whose calendar asks (``/users/{organizer}``).
            schedules: Mailboxes to read.
            start: Start of the window (timezone-aware).
            end: End of the window (timezone-aware).
            interval: ``availabilityView`` slot length in minutes.
            timezone: IANA or Windows zone the answer's times are in.

        Returns:
            Graph's ``scheduleInformation`` items, in the order asked.
        """
        if start.tzinfo is None or end.tzinfo is None:
            raise GraphInvalidError("start and end must be timezone-aware", code="naive_datetime")
        names = list(dict.fromkeys(schedules))
        path = f"/users/{_mailbox(organizer)}/calendar/getSchedule"
        chunks = [names[i : i + MAX_SCHEDULES] for i in range(0, len(names), MAX_SCHEDULES)]
        headers = {"Prefer": f'outlook.timezone="{timezone}"'}

        async def one(chunk: list[str]) -> list[Json]:
            body = {
                "schedules": chunk,
                "startTime": {"dateTime": _graph_time(start, timezone), "timeZone": timezone},
                "endTime": {"dateTime": _graph_time(end, timezone), "timeZone": timezone},
                "availabilityViewInterval": interval,
            }
            doc = await self._call("POST", organizer, path, json=body, headers=headers)
            return list(doc.get("value", []))

        results = await asyncio.gather(*(one(chunk) for chunk in chunks))
        return [item for part in results for item in part]

    async def mailbox_settings(self, user: str) -> Json:
        """The user's ``mailboxSettings`` (``timeZone``, ``workingHours``…)."""
        return await self._call("GET", user, f"/users/{_mailbox(user)}/mailboxSettings")

    async def create_event(
        self, organizer: str, event: Json, transaction_id: str, *, timezone: str = "UTC"
    ) -> Json:
        """Create an event in the organizer's calendar; a repeated ``transaction_id`` books once.

        Args:
            organizer: The mailbox that owns the event and sends the invitations.
            event: Graph's event resource (subject, start, end, attendees…).
            transaction_id: Graph's de-duplication key for this booking.
            timezone: Zone of the returned event's times.
        """
        body = {**event, "transactionId": transaction_id}
        headers = {"Prefer": f'outlook.timezone="{timezone}"'}
        return await self._call(
            "POST", organizer, f"/users/{_mailbox(organizer)}/events", json=body, headers=headers
        )

    async def calendar_view(
        self, user: str, start: datetime, end: datetime, *, timezone: str = "UTC"
    ) -> list[Json]:
        """The user's events (occurrences expanded) between ``start`` and ``end``, first page.

        Args:
            user: The mailbox to read.
            start: Start of the window (timezone-aware).
            end: End of the window (timezone-aware).
            timezone: Zone of the returned times.
        """
        if start.tzinfo is None or end.tzinfo is None:
            raise GraphInvalidError("start and end must be timezone-aware", code="naive_datetime")
        query = (
            f"startDateTime={quote(start.isoformat())}&endDateTime={quote(end.isoformat())}"
            "&$top=100&$orderby=start/dateTime"
            "&$select=subject,start,end,organizer,attendees,isOnlineMeeting,onlineMeeting,webLink"
        )
        headers = {"Prefer": f'outlook.timezone="{timezone}"'}
        doc = await self._call(
            "GET", user, f"/users/{_mailbox(user)}/calendarView?{query}", headers=headers
        )
        return list(doc.get("value", []))


def _graph_time(moment: datetime, timezone: str) -> str:
    """A wall time in ``timezone`` without offset, as Graph's ``dateTimeTimeZone`` wants."""
    from zoneinfo import ZoneInfo

    return moment.astimezone(ZoneInfo(timezone)).replace(tzinfo=None).isoformat(timespec="seconds")
