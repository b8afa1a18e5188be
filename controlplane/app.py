"""Control plane composition root: builds the aiohttp application and its collaborators."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from sqlalchemy import text

from controlplane import db
from controlplane.api import (
    approvals,
    catalog,
    compliance,
    devices,
    enforcement,
    events,
    evidence,
    incidents,
    intents,
    policies,
    risk,
    rollouts,
    tenancy,
)
from controlplane.audit_writer import audit_worker
from controlplane.connectors.worker import simulator_worker
from controlplane.http import Api, errors_middleware, json_response
from controlplane.openapi import build_openapi
from controlplane.ratelimit import RateLimiter
from controlplane.recompute import recompute_worker
from controlplane.settings import ControlPlaneSettings
from controlplane.signing import Signer
from controlplane.state import STATE, ServiceState
from controlplane.sweeps import release_sweeper
from controlplane.webhooks import webhook_sender

VERSION = "0.1.0"

Worker = Callable[[ServiceState], AsyncIterator[None]]


def build_api() -> Api:
    """Every route of the service."""
    api = Api()
    for module in (
        tenancy,
        devices,
        policies,
        compliance,
        enforcement,
        events,
        catalog,
        evidence,
        risk,
        approvals,
        intents,
        rollouts,
        incidents,
    ):
        api.include(module.api)
    return api


async def create_app(
    settings: ControlPlaneSettings, *, migrate: bool = True, workers: bool = True
) -> web.Application:
    """The control plane application; the database is migrated before it serves."""
    engine = db.create_engine(settings.resolved_database_url(), settings.database_schema)
    if migrate:
        await db.migrate(engine)
    state = ServiceState(
        settings=settings,
        engine=engine,
        sessions=db.session_factory(engine),
        signer=Signer.load_or_create(settings.data_dir / "signing-key.pem"),
        limiter=RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
    )
    app = web.Application(middlewares=[errors_middleware], client_max_size=settings.max_body_bytes)
    app[STATE] = state
    api = build_api()
    api.mount(app)
    document = build_openapi(api, title="goodbot control plane", version=VERSION)

    async def openapi(_: web.Request) -> web.Response:
        return json_response(document)

    async def healthz(_: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return json_response({"status": "ready"})

    app.router.add_get("/api/v1/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app.cleanup_ctx.append(lifecycle)
    if workers:
        for worker in background_workers():
            app.cleanup_ctx.append(_bind(worker, state))
    return app


def background_workers() -> list[Worker]:
    """Long-lived duties (audit group commit, webhook delivery, compliance recompute, release
    sweeps, and the fleet simulator, which does nothing unless ``simulator_enabled``)."""
    return [audit_worker, recompute_worker, webhook_sender, release_sweeper, simulator_worker]


def _bind(worker: Worker, state: ServiceState) -> Callable[[web.Application], Any]:
    def ctx(_: web.Application) -> AsyncIterator[None]:
        return worker(state)

    return ctx
