"""The demo Microsoft Graph behind ``goodbot serve --demo-graph``: calendars with no tenant.

One HTTPS server on loopback (``gateway.demo_tls``) answers as Entra (``gateway.demo_entra``)
and as the Graph calendar calls the tools make, with the payload shapes of Graph's
documentation: ``getSchedule`` (at most 20 schedules, a window under 62 days, busy items in the
``Prefer: outlook.timezone`` zone, ``workingHours``), ``mailboxSettings``, ``findMeetingTimes``
(delegated tokens only), ``events`` (201; a repeated ``transactionId`` returns the first
event) and ``calendarView``. Like Graph it refuses a fifth concurrent request on one mailbox
with 429 and ``Retry-After``.

Mailboxes are the demo people (``DEMO_PEOPLE``) in several time zones, with some meetings in
the coming weeks. Booked events are kept in ``events.json`` in the demo's directory, so
``goodbot ask "list my CAB meetings"`` (or that file) shows what was booked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.demo_entra import DemoEntra
from gateway.demo_tls import make_client_certificate, make_server_certificates
from gateway.settings import GraphSettings
from tools.slots import DAYS, Availability, free_slots, working_hours, zone

Json = dict[str, Any]
DOMAIN: Final = "contoso.com"
TENANT: Final = "contoso-demo"
CLIENT_ID: Final = "goodbot-demo-app"
DEMO_PEOPLE: Final = {
    # name: (Windows time zone, working day start, end)
    "ana": ("W. Europe Standard Time", "09:00", "17:00"),
    "li": ("Eastern Standard Time", "09:00", "17:00"),
    "sam": ("GMT Standard Time", "08:30", "16:30"),
    "priya": ("India Standard Time", "10:00", "18:00"),
    "omar": ("Pacific Standard Time", "08:00", "16:00"),
    "vera": ("W. Europe Standard Time", "08:00", "16:00"),
    "aud": ("Central European Standard Time", "09:00", "17:00"),
    "sara": ("Romance Standard Time", "09:00", "17:00"),
}
"""The demo people's mailboxes (``name@contoso.com``): zone and working hours."""
MAX_CONCURRENT: Final = 4
USER: Final = web.RequestKey("user", str)
"""The signed-in user a delegated token acts for (``/me`` requests)."""
_DURATION: Final = re.compile(r"^PT(?:(\d+)H)?(?:(\d+)M)?$")


def hours_doc(windows_zone: str, start: str = "09:00", end: str = "17:00") -> Json:
    """A Graph ``workingHours`` resource, Monday to Friday."""
    return {
        "daysOfWeek": list(DAYS[:5]),
        "startTime": f"{start}:00.0000000",
        "endTime": f"{end}:00.0000000",
        "timeZone": {"name": windows_zone},
    }


def moment(value: Json) -> datetime:
    """A Graph ``dateTimeTimeZone`` as an aware datetime."""
    raw = str(value["dateTime"]).split(".")[0].rstrip("Z")
    return datetime.fromisoformat(raw).replace(tzinfo=zone(str(value.get("timeZone") or "UTC")))


def graph_time(instant: datetime, zone_name: str) -> Json:
    """An aware datetime as a Graph ``dateTimeTimeZone`` in ``zone_name``."""
    local = instant.astimezone(zone(zone_name)).replace(tzinfo=None)
    return {"dateTime": local.isoformat(timespec="seconds") + ".0000000", "timeZone": zone_name}


def _prefer_zone(request: web.Request) -> str:
    found = re.search(r'outlook\.timezone="([^"]+)"', request.headers.get("Prefer", ""))
    return found.group(1) if found else "UTC"


def graph_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    """Graph's error shape, with a ``request-id``."""
    return web.json_response(
        {"error": {"code": code, "message": message}},
        status=status,
        headers={"request-id": str(uuid.uuid4()), **headers},
    )


class DemoGraph:
    """The demo's Graph state and handlers (a subclass in the tests adds failure knobs)."""

    def __init__(self, entra: DemoEntra, *, domains: tuple[str, ...] = (DOMAIN,)) -> None:
        self.entra = entra
        self.domains = domains
        """Mail domains whose unknown addresses get a mailbox on first use (UTC, 09-17)."""
        self.hours: dict[str, Json] = {}
        """Working hours by mailbox address."""
        self.calendar: list[Json] = []
        """Meetings that were there before (seeded), as Graph events."""
        self.booked: dict[str, Json] = {}
        """Events created through ``POST /events``, by ``organizer/transactionId``."""
        self.events_file: Path | None = None
        self.event_posts = 0
        self.schedule_calls: list[list[str]] = []
        self.latency = 0.0
        """Seconds every Graph answer waits (tests use it to keep requests in flight)."""
        self.in_flight: Counter[str] = Counter()
        self.most_in_flight = 0
        self.throttled = 0
        """Requests refused for a fifth concurrent request on a mailbox."""

    # State.

    def mailbox(self, address: str) -> Json | None:
        """The working hours of ``address``, creating a mailbox in a demo domain."""
        key = address.lower()
        if key not in self.hours and key.rsplit("@", 1)[-1] in self.domains:
            self.hours[key] = hours_doc("UTC")
        return self.hours.get(key)

    def add_meeting(
        self, organizer: str, start: datetime, end: datetime, subject: str, *attendees: str
    ) -> Json:
        """A meeting already in the calendars (``showAs`` busy)."""
        event = {
            "id": f"AAMkSeed{uuid.uuid4().hex[:12]}",
            "subject": subject,
            "start": graph_time(start, "UTC"),
            "end": graph_time(end, "UTC"),
            "showAs": "busy",
            "organizer": {"emailAddress": {"address": organizer.lower()}},
            "attendees": [
                {"emailAddress": {"address": a.lower()}, "type": "required"} for a in attendees
            ],
        }
        self.calendar.append(event)
        return event

    def events_of(self, address: str) -> list[Json]:
        """Every event ``address`` organizes or attends."""
        key = address.lower()
        found = []
        for event in [*self.calendar, *self.booked.values()]:
            invited = {a["emailAddress"]["address"].lower() for a in event.get("attendees", [])}
            if event["organizer"]["emailAddress"]["address"].lower() == key or key in invited:
                found.append(event)
        return found

    def availability(self, address: str, start: datetime, end: datetime) -> Availability:
        """Busy times and working hours of ``address`` (for ``findMeetingTimes``)."""
        busy = tuple(
            (moment(e["start"]), moment(e["end"]))
            for e in self.events_of(address)
            if moment(e["start"]) < end and start < moment(e["end"])
        )
        return Availability(address, busy, working_hours(self.mailbox(address)))

    def _save(self) -> None:
        if self.events_file is not None:
            temporary = self.events_file.with_suffix(".tmp")
            temporary.write_text(json.dumps(list(self.booked.values()), indent=2))
            temporary.replace(self.events_file)

    # The gate: tokens, per-mailbox concurrency.

    @web.middleware
    async def gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/v1.0/"):
            return await handler(request)
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        issued = self.entra.lookup(bearer)
        if issued is None:
            return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.")
        if request.path.startswith("/v1.0/me/") and issued.user is None:
            return graph_error(
                400, "BadRequest", "/me request is only valid with delegated authentication flow."
            )
        if issued.user is not None:
            request[USER] = issued.user
        lane = (issued.user or request.match_info.get("user", "")).lower()
        if self.in_flight[lane] >= MAX_CONCURRENT:
            self.throttled += 1
            return graph_error(
                429, "ApplicationThrottled", "Too many concurrent requests", **{"Retry-After": "1"}
            )
        self.in_flight[lane] += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight[lane])
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            return await handler(request)
        finally:
            self.in_flight[lane] -= 1

    # Graph.

    async def get_schedule(self, request: web.Request) -> web.Response:
        body = await request.json()
        schedules = [str(s) for s in body.get("schedules", [])]
        if not 1 <= len(schedules) <= 20:
            return graph_error(400, "ErrorInvalidParameter", "Ask for 1 to 20 schedules.")
        start, end = moment(body["startTime"]), moment(body["endTime"])
        if not timedelta(0) < end - start < timedelta(days=62):
            return graph_error(400, "ErrorInvalidTimeInterval", "The window must be < 62 days.")
        interval = int(body.get("availabilityViewInterval", 30))
        self.schedule_calls.append(schedules)
        answer_zone = _prefer_zone(request)
        value: list[Json] = []
        for address in schedules:
            hours = self.mailbox(address)
            if hours is None:
                value.append(
                    {
                        "scheduleId": address,
                        "availabilityView": "",
                        "error": {
                            "message": "The mailbox was not found.",
                            "responseCode": "ErrorMailRecipientNotFound",
                        },
                    }
                )
                continue
            busy = [
                e
                for e in self.events_of(address)
                if moment(e["start"]) < end and start < moment(e["end"])
            ]
            view = ""
            cursor = start
            while cursor < end:
                step = cursor + timedelta(minutes=interval)
                overlap = any(moment(e["start"]) < step and cursor < moment(e["end"]) for e in busy)
                view += "2" if overlap else "0"
                cursor = step
            value.append(
                {
                    "scheduleId": address,
                    "availabilityView": view,
                    "scheduleItems": [
                        {
                            "isPrivate": False,
                            "status": e.get("showAs", "busy"),
                            "subject": e.get("subject", ""),
                            "start": graph_time(moment(e["start"]), answer_zone),
                            "end": graph_time(moment(e["end"]), answer_zone),
                        }
                        for e in busy
                    ],
                    "workingHours": hours,
                }
            )
        return web.json_response({"value": value})

    async def mailbox_settings(self, request: web.Request) -> web.Response:
        hours = self.mailbox(request.match_info["user"])
        if hours is None:
            return graph_error(404, "ErrorItemNotFound", "The mailbox was not found.")
        return web.json_response(
            {
                "timeZone": hours["timeZone"]["name"],
                "workingHours": hours,
                "language": {"locale": "en-US", "displayName": "English (United States)"},
                "timeFormat": "HH:mm",
                "dateFormat": "yyyy-MM-dd",
            }
        )

    async def find_meeting_times(self, request: web.Request) -> web.Response:
        body = await request.json()
        organizer = request[USER]
        attendees = [str(a["emailAddress"]["address"]).lower() for a in body.get("attendees", [])]
        (slot,) = body["timeConstraint"]["timeSlots"]
        start, end = moment(slot["start"]), moment(slot["end"])
        duration = _DURATION.match(str(body.get("meetingDuration", "PT30M")))
        if duration is None:
            return graph_error(400, "ErrorInvalidRequest", "meetingDuration is not a duration.")
        length = timedelta(hours=int(duration[1] or 0), minutes=int(duration[2] or 0))
        answer_zone = _prefer_zone(request)
        people = [self.availability(a, start, end) for a in dict.fromkeys([organizer, *attendees])]
        slots = free_slots(
            people,
            start,
            end,
            length,
            zone(answer_zone),
            limit=int(body.get("maxCandidates", 5)),
            not_before=datetime.now(UTC),
        )
        suggestions = [
            {
                "confidence": 100.0,
                "organizerAvailability": "free",
                "suggestionReason": "Suggested because it is one of the nearest times when all "
                "attendees are available.",
                "meetingTimeSlot": {
                    "start": graph_time(s.start, answer_zone),
                    "end": graph_time(s.end, answer_zone),
                },
                "attendeeAvailability": [
                    {
                        "availability": "free",
                        "attendee": {"type": "required", "emailAddress": {"address": a}},
                    }
                    for a in attendees
                ],
                "locations": [],
            }
            for s in slots
        ]
        return web.json_response(
            {
                "emptySuggestionsReason": "" if suggestions else "attendeesUnavailable",
                "meetingTimeSuggestions": suggestions,
            }
        )

    async def create_event(self, request: web.Request) -> web.Response:
        body = await request.json()
        organizer = request.match_info["user"].lower()
        self.event_posts += 1
        if self.mailbox(organizer) is None:
            return graph_error(404, "ErrorItemNotFound", "The mailbox was not found.")
        key = f"{organizer}/{body.get('transactionId') or uuid.uuid4()}"
        answer_zone = _prefer_zone(request)
        if key not in self.booked:
            event_id = f"AAMkAGI{uuid.uuid4().hex}"
            event = {
                **body,
                "id": event_id,
                "iCalUId": f"040000008200E00074C5B7101A82E008{uuid.uuid4().hex.upper()}",
                "createdDateTime": datetime.now(UTC).isoformat(),
                "organizer": {"emailAddress": {"address": organizer}},
                "webLink": f"https://outlook.office365.com/owa/?itemid={event_id}",
                "showAs": "busy",
            }
            if body.get("isOnlineMeeting"):
                event["onlineMeeting"] = {
                    "joinUrl": f"https://teams.microsoft.com/l/meetup-join/{event_id[-12:]}"
                }
            self.booked[key] = event
            self._save()
        event = dict(self.booked[key])
        event["start"] = graph_time(moment(event["start"]), answer_zone)
        event["end"] = graph_time(moment(event["end"]), answer_zone)
        return web.json_response(event, status=201)

    async def calendar_view(self, request: web.Request) -> web.Response:
        start = datetime.fromisoformat(request.query["startDateTime"])
        end = datetime.fromisoformat(request.query["endDateTime"])
        start, end = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in (start, end))
        answer_zone = _prefer_zone(request)
        found = [
            e
            for e in self.events_of(request.match_info["user"])
            if moment(e["start"]) < end and start < moment(e["end"])
        ]
        found.sort(key=lambda e: moment(e["start"]))
        top = int(request.query.get("$top", "10"))
        value = [
            {
                **e,
                "start": graph_time(moment(e["start"]), answer_zone),
                "end": graph_time(moment(e["end"]), answer_zone),
            }
            for e in found[:top]
        ]
        return web.json_response({"value": value})

    def add_routes(self, app: web.Application) -> None:
        """Serve Entra's and Graph's routes in ``app``."""
        self.entra.add_routes(app)
        app.router.add_post("/v1.0/users/{user}/calendar/getSchedule", self.get_schedule)
        app.router.add_get("/v1.0/users/{user}/mailboxSettings", self.mailbox_settings)
        app.router.add_post("/v1.0/users/{user}/events", self.create_event)
        app.router.add_get("/v1.0/users/{user}/calendarView", self.calendar_view)
        app.router.add_post("/v1.0/me/findMeetingTimes", self.find_meeting_times)


@contextlib.asynccontextmanager
async def serving(graph: DemoGraph, directory: Path, port: int = 0) -> AsyncIterator[str]:
    """Serve ``graph`` on 127.0.0.1 over HTTPS; yields its base URL (``entra.base`` set too)."""
    files = make_server_certificates(directory)
    app = web.Application(middlewares=[graph.gate])
    graph.add_routes(app)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert, files.key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=context)
        await site.start()
        graph.entra.base = f"https://127.0.0.1:{runner.addresses[0][1]}"
        yield graph.entra.base
    finally:
        await runner.cleanup()


def seed(graph: DemoGraph, today: date) -> None:
    """The demo people's mailboxes and their meetings over the next three weeks."""
    for name, (windows_zone, start, end) in DEMO_PEOPLE.items():
        graph.hours[f"{name}@{DOMAIN}"] = hours_doc(windows_zone, start, end)

    def at(name: str, day: date, clock: str) -> datetime:
        return datetime.combine(day, time.fromisoformat(clock), zone(DEMO_PEOPLE[name][0]))

    for offset in range(21):
        day = today + timedelta(days=offset)
        if day.weekday() >= 5:
            continue
        standup = at("ana", day, "09:30")
        graph.add_meeting(
            f"ana@{DOMAIN}", standup, standup + timedelta(minutes=15), "Platform stand-up"
        )
        if day.weekday() == 1:  # li's Tuesday 1:1 takes her first hour (ana's 15:00-16:00)
            one = at("li", day, "09:00")
            graph.add_meeting(f"li@{DOMAIN}", one, one + timedelta(hours=1), "1:1 with Jordan")
        if day.weekday() == 3:
            cab = at("ana", day, "14:00")
            people = (f"li@{DOMAIN}", f"sam@{DOMAIN}", f"priya@{DOMAIN}")
            graph.add_meeting(f"ana@{DOMAIN}", cab, cab + timedelta(hours=1), "Weekly CAB", *people)
        if day.weekday() in (0, 2):
            focus = at("sam", day, "13:00")
            graph.add_meeting(f"sam@{DOMAIN}", focus, focus + timedelta(hours=2), "Focus time")


@dataclass(frozen=True)
class DemoGraphHandle:
    """A running demo Graph: where it answers and the gateway settings that reach it."""

    url: str
    """``https://127.0.0.1:PORT``: Entra and Graph (``/v1.0``)."""
    settings: GraphSettings
    """The ``graph`` settings pointing the gateway at it (certificate credential)."""
    events_file: Path
    """Where booked events are kept, as JSON."""
    graph: DemoGraph


def demo_graph(directory: Path) -> DemoGraph:
    """The demo Graph with its mailboxes, a fresh app certificate, and the events booked before."""
    directory.mkdir(parents=True, exist_ok=True)
    certificate = make_client_certificate(directory / "app-credential.pem", CLIENT_ID)
    graph = DemoGraph(DemoEntra(TENANT, CLIENT_ID, certificate=certificate))
    seed(graph, datetime.now(UTC).date())
    graph.events_file = directory / "events.json"
    if graph.events_file.exists():
        for event in json.loads(graph.events_file.read_text()):
            organizer = event["organizer"]["emailAddress"]["address"]
            graph.booked[f"{organizer}/{event.get('transactionId')}"] = event
    return graph


@contextlib.asynccontextmanager
async def run_demo_graph(directory: Path, port: int = 0) -> AsyncIterator[DemoGraphHandle]:
    """Run the demo Graph with fresh certificates in ``directory``; booked events persist."""
    graph = demo_graph(directory)
    assert graph.events_file is not None
    async with serving(graph, directory, port) as url:
        settings = GraphSettings(
            tenant_id=TENANT,
            client_id=CLIENT_ID,
            client_certificate_file=directory / "app-credential.pem",
            authority_host=url,
            base_url=f"{url}/v1.0",
            ca_file=directory / "ca.pem",
            domain=DOMAIN,
            allowed_domains=[DOMAIN],
        )
        yield DemoGraphHandle(url, settings, graph.events_file, graph)
