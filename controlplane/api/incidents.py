"""Control plane API: incidents attributed to an application, which hold its rollouts' gates.

An open incident fails the ``no_open_incident`` gate of every rollout of the application
(seed 002 §10.2, "no security incidents attributable to package"), so promotion waits for
it to be closed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.access import Caller
from controlplane.errors import NotFoundError
from controlplane.events import append_event
from controlplane.http import Api, ApiRequest, Page, Strict, decode_cursor, paginate
from controlplane.models import new_id, utcnow
from controlplane.models_release import Application, Incident

api = Api()


class IncidentCreate(Strict):
    application_id: str = Field(min_length=1, max_length=40)
    """The application the incident is attributed to."""
    title: str = Field(min_length=1, max_length=300)
    """What happened; free text, data, never instructions."""


class IncidentOut(BaseModel):
    id: str
    application_id: str
    title: str
    state: Literal["open", "closed"]
    opened_by: str
    created_at: datetime
    closed_at: datetime | None


class IncidentList(BaseModel):
    items: list[IncidentOut]
    next_cursor: str | None


class IncidentQuery(Page):
    application_id: str | None = Field(default=None, max_length=40)
    """Only incidents of this application."""
    state: Literal["open", "closed"] | None = None
    """Only open or only closed incidents."""


def _out(incident: Incident) -> IncidentOut:
    return IncidentOut.model_validate(incident, from_attributes=True)


async def _incident(
    session: AsyncSession, caller: Caller, incident_id: str, *, lock: bool = False
) -> Incident:
    stmt = select(Incident).where(
        Incident.id == incident_id, Incident.tenant_id == caller.tenant_id
    )
    found = (await session.execute(stmt.with_for_update() if lock else stmt)).scalar_one_or_none()
    if found is None:
        raise NotFoundError(f"no incident {incident_id!r}", field="incident_id")
    return found


@api.route(
    "POST",
    "/incidents",
    summary="Open an incident against an application (its rollouts stop promoting)",
    permission="incident.write",
    tag="incidents",
    body=IncidentCreate,
    response=IncidentOut,
    status=201,
)
async def open_incident(req: ApiRequest) -> IncidentOut:
    body = req.body
    assert isinstance(body, IncidentCreate)
    me = req.me
    async with req.state.writing() as session:
        app = await session.get(Application, body.application_id)
        if app is None or app.tenant_id != me.tenant_id:
            raise NotFoundError(f"no application {body.application_id!r}", field="application_id")
        incident = Incident(
            id=new_id("inc"),
            tenant_id=me.tenant_id,
            application_id=app.id,
            title=body.title,
            state="open",
            opened_by=me.name,
            created_at=utcnow(),
            closed_at=None,
        )
        session.add(incident)
        await append_event(
            session,
            tenant_id=me.tenant_id,
            type="incident_changed",
            action="incident.open",
            outcome="open",
            actor=me.actor,
            correlation_id=req.correlation_id,
            data={"incident_id": incident.id, "application_id": app.id, "title": body.title},
        )
    return _out(incident)


@api.route(
    "POST",
    "/incidents/{incident_id}/close",
    summary="Close an incident (no-op when already closed)",
    permission="incident.write",
    tag="incidents",
    response=IncidentOut,
)
async def close_incident(req: ApiRequest) -> IncidentOut:
    me = req.me
    async with req.state.writing() as session:
        incident = await _incident(session, me, req.path("incident_id"), lock=True)
        if incident.state == "closed":
            return _out(incident)
        incident.state, incident.closed_at = "closed", utcnow()
        await append_event(
            session,
            tenant_id=me.tenant_id,
            type="incident_changed",
            action="incident.close",
            outcome="closed",
            actor=me.actor,
            correlation_id=req.correlation_id,
            data={"incident_id": incident.id, "application_id": incident.application_id},
        )
    return _out(incident)


@api.route(
    "GET",
    "/incidents/{incident_id}",
    summary="One incident",
    permission="incident.read",
    tag="incidents",
    response=IncidentOut,
)
async def get_incident(req: ApiRequest) -> IncidentOut:
    async with req.state.sessions() as session:
        return _out(await _incident(session, req.me, req.path("incident_id")))


@api.route(
    "GET",
    "/incidents",
    summary="Incidents of the tenant, filtered by application and state",
    permission="incident.read",
    tag="incidents",
    query=IncidentQuery,
    response=IncidentList,
)
async def list_incidents(req: ApiRequest) -> IncidentList:
    query = req.query
    assert isinstance(query, IncidentQuery)
    stmt = select(Incident).where(Incident.tenant_id == req.me.tenant_id)
    if query.application_id is not None:
        stmt = stmt.where(Incident.application_id == query.application_id)
    if query.state is not None:
        stmt = stmt.where(Incident.state == query.state)
    after = decode_cursor(query.cursor)
    if after is not None:
        stmt = stmt.where(Incident.id > after)
    async with req.state.sessions() as session:
        rows = (await session.execute(stmt.order_by(Incident.id).limit(query.limit + 1))).scalars()
        page, cursor = paginate(rows, query.limit, lambda i: i.id)
    return IncidentList(items=[_out(i) for i in page], next_cursor=cursor)
