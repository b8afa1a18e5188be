"""Microsoft Graph client: the calendar tools' way out, over HTTPS to Graph (tools → Graph).

Tokens come from ``tools.graph_auth.EntraTokens``: app-only for the ``/users/{mailbox}`` calls,
and, for a user who signed in through Teams single sign-on (``sign_in``), a delegated token for
``/me/findMeetingTimes`` (Graph offers that call to delegated tokens only).

Limits: Graph throttles per app and mailbox, so at most ``MAX_IN_FLIGHT`` requests per mailbox
run at once; a 429 or 503 is retried after its ``Retry-After`` (capped) up to ``retries`` times;
an attempt that gets no answer within ``attempt_timeout`` is retried too (every call the tools
make is safe to repeat), all within ``timeout``.

Exactly once: ``create_event`` sends ``transactionId``; Graph returns the existing event for a
repeated id, so a booking retried after a timeout (the first attempt may have booked) or
executed again never books twice.

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
from datetime import datetime, timedelta
from typing import Any, Final, Self
from urllib.parse import quote

import aiohttp
from pydantic import SecretStr

from tools.graph_auth import ClientCertificate, EntraTokens, TokenError

log = logging.getLogger(__name__)

Json = dict[str, Any]
MAX_IN_FLIGHT: Final = 4
"""Requests one mailbox may have in flight at once (Graph's per-mailbox concurrency limit)."""
MAX_SCHEDULES: Final = 20
"""Schedules one ``getSchedule`` call may ask for; more are asked for in chunks."""
MAX_WINDOW: Final = timedelta(days=62)
"""``getSchedule`` answers for windows shorter than this."""
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
        credential: SecretStr | str | ClientCertificate,
        *,
        authority_host: str = "https://login.microsoftonline.com",
        base_url: str = "https://graph.microsoft.com/v1.0",
        ca_file: str | None = None,
        timeout: float = 20.0,
        attempt_timeout: float | None = None,
        retries: int = 3,
        retry_default: float = 1.0,
        domain: str | None = None,
        allowed_domains: Iterable[str] = (),
    ) -> None:
        """Configure the client; the HTTP session opens on ``__aenter__``.

        Args:
            tenant_id: The Entra tenant (id or domain) the app is registered in.
            client_id: The app registration's client id.
            credential: The app registration's client secret, or its certificate.
            authority_host: Entra's root; a loopback IdP in tests.
            base_url: Graph's root, with its version.
            ca_file: A CA bundle trusted for Entra and Graph instead of the system's (tests).
            timeout: Seconds a whole call may take, retries included.
            attempt_timeout: Seconds one attempt may take before it is retried (default: half
                of ``timeout``).
            retries: Extra attempts after a 429, a 503 or an attempt that timed out.
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
        self.attempt_timeout = attempt_timeout if attempt_timeout is not None else timeout / 2
        self.retries = retries
        self.retry_default = retry_default
        self.domain = domain.lower() if domain else None
        self.allowed_domains = frozenset(d.lower() for d in allowed_domains)
        if isinstance(credential, str):
            credential = SecretStr(credential)
        self.tokens = EntraTokens(self.authority, client_id, credential, ca_file=ca_file)
        """Entra tokens: app-only, and delegated per signed-in user."""
        self._http: aiohttp.ClientSession | None = None
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
        self.tokens.close()

    # Tokens.

    async def sign_in(self, user: str, assertion: str) -> None:
        """Keep a delegated token for ``user`` from their single sign-on token (on-behalf-of).

        Args:
            user: The gateway principal (the tools' ``ctx.principal``).
            assertion: The user's token for this app, as Teams single sign-on hands it over.

        Raises:
            GraphAuthError: Entra refused the exchange.
        """
        try:
            await self.tokens.sign_in(user, assertion)
        except TokenError as exc:
            raise GraphAuthError(exc.message, code=exc.code) from None

    def signed_in(self, user: str) -> bool:
        """``user`` signed in, so delegated calls (``find_meeting_times``) are open to them."""
        return self.tokens.signed_in(user)

    async def _token(self, user: str | None) -> str:
        try:
            if user is None:
                return await self.tokens.app_token()
            token = await self.tokens.user_token(user)
        except TokenError as exc:
            raise GraphAuthError(exc.message, code=exc.code) from None
        if token is None:
            raise GraphAuthError(f"{user} has not signed in", code="not_signed_in")
        return token

    # Transport.

    async def _call(
        self,
        method: str,
        mailbox: str,
        path: str,
        *,
        json: Json | None = None,
        headers: dict[str, str] | None = None,
        user: str | None = None,
    ) -> Json:
        """One Graph call with the app's token, or ``user``'s delegated token when given."""
        if self._http is None:
            raise RuntimeError("GraphClient is not open; use 'async with'")
        url = f"{self.base_url}{path}"
        try:
            async with asyncio.timeout(self.timeout), self._lanes(mailbox):
                attempt = 0
                while True:
                    token = await self._token(user)
                    sent = {"Authorization": f"Bearer {token}", **(headers or {})}
                    try:
                        async with (
                            asyncio.timeout(self.attempt_timeout),
                            self._http.request(method, url, json=json, headers=sent) as resp,
                        ):
                            request_id = resp.headers.get("request-id")
                            if resp.status < 400:
                                return dict(await resp.json()) if resp.content_length != 0 else {}
                            try:
                                body = await resp.json(content_type=None)
                            except (ValueError, aiohttp.ContentTypeError):
                                body = None
                            wait = _retry_after(resp.headers.get("Retry-After"), self.retry_default)
                            error = _error_for(resp.status, body, request_id, wait)
                            status: int | None = resp.status
                    except aiohttp.ClientError as exc:
                        raise GraphUnavailableError(
                            f"Microsoft Graph did not answer ({type(exc).__name__})",
                            code="unavailable",
                        ) from None
                    except TimeoutError:
                        # The attempt may have been done (an event created): repeating it is
                        # safe, a booking carries its transactionId.
                        status, wait = None, 0.0
                        error = GraphUnavailableError(
                            f"Microsoft Graph did not answer within {self.attempt_timeout:g} s",
                            code="timeout",
                        )
                    if status not in (None, 429, 503) or attempt >= self.retries:
                        raise error
                    attempt += 1
                    log.info(
                        "graph call retried",
                        extra={"status": status, "wait": wait, "attempt": attempt},
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
        if not timedelta(0) < end - start < MAX_WINDOW:
            raise GraphInvalidError(
                f"a free/busy window lasts under {MAX_WINDOW.days} days", code="window"
            )
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

    async def find_meeting_times(
        self,
        user: str,
        organizer: str,
        attendees: Iterable[str],
        start: datetime,
        end: datetime,
        duration: timedelta,
        *,
        timezone: str = "UTC",
        max_candidates: int = 5,
    ) -> Json:
        """Meeting times Graph suggests for ``user`` and the attendees (delegated token only).

        Every attendee is required and must be free (``minimumAttendeePercentage`` 100); Graph
        keeps to working hours (``activityDomain`` work) and ranks by its confidence.

        Args:
            user: The signed-in principal whose calendar organizes (``/me``).
            organizer: That principal's mailbox (its requests share the mailbox's limit).
            attendees: Mailboxes of the other people.
            start: Start of the window (timezone-aware).
            end: End of the window (timezone-aware).
            duration: Meeting length.
            timezone: Zone of the suggestions' times.
            max_candidates: Most suggestions returned.

        Returns:
            Graph's ``meetingTimeSuggestionsResult`` (``meetingTimeSuggestions`` and
            ``emptySuggestionsReason``).
        """
        if start.tzinfo is None or end.tzinfo is None:
            raise GraphInvalidError("start and end must be timezone-aware", code="naive_datetime")
        minutes = int(duration.total_seconds() // 60)
        body = {
            "attendees": [
                {"type": "required", "emailAddress": {"address": a}}
                for a in dict.fromkeys(attendees)
            ],
            "timeConstraint": {
                "activityDomain": "work",
                "timeSlots": [
                    {
                        "start": {"dateTime": _graph_time(start, timezone), "timeZone": timezone},
                        "end": {"dateTime": _graph_time(end, timezone), "timeZone": timezone},
                    }
                ],
            },
            "meetingDuration": f"PT{minutes // 60}H{minutes % 60}M",
            "isOrganizerOptional": False,
            "returnSuggestionReasons": True,
            "minimumAttendeePercentage": 100,
            "maxCandidates": max_candidates,
        }
        headers = {"Prefer": f'outlook.timezone="{timezone}"'}
        return await self._call(
            "POST", organizer, "/me/findMeetingTimes", json=body, headers=headers, user=user
        )

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
