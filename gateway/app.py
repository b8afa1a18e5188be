"""Gateway composition root: the only place that names concrete classes (gateway).

``build_app`` wires the policy file, the session store, the control-plane client, the tool
registry and executor, the route (rules or openai), the agent loop, the turn service and the
channels into one aiohttp application with ``/healthz``, ``/readyz`` and ``/metrics``.
Long-lived duties (policy reload, confirmation expiry, notifications, crash recovery, the email
channel's mailbox) run as ``cleanup_ctx`` tasks; all but the policy reload hold a lease
(``gateway.leases``), so with several replicas on PostgreSQL each runs on one replica at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from agent.loop import AgentLoop
from agent.route import Route
from channels.cli import CliChannel
from gateway.delivery import Delivery
from gateway.leases import Leases
from gateway.metrics import Metrics
from gateway.observability import correlation_middleware, echo_correlation
from gateway.proxies import forwarded_middleware
from gateway.settings import ConfigError, GatewaySettings
from gateway.turns import TurnService
from policy.loader import PolicySource
from sessions.db import current_revision, head_revision, sqlite_url
from sessions.store import SessionStore
from tools.controlplane import ControlPlaneClient
from tools.executor import ToolExecutor
from tools.graph import GraphClient
from tools.graph_auth import ClientCertificate
from tools.registry import Registry

if TYPE_CHECKING:
    from channels.email import EmailChannel

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """The collaborators of one running gateway (reachable as ``app[GATEWAY]``)."""

    settings: GatewaySettings
    store: SessionStore
    policy: PolicySource
    cp: ControlPlaneClient
    cp_url: str
    route: Route
    executor: ToolExecutor
    loop: AgentLoop
    turns: TurnService
    metrics: Metrics
    leases: Leases
    notifications: Any = None
    delivery: Delivery | None = None
    """Sends the outbox to push channels; channels register themselves in ``build_app``."""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    refused_policy: tuple[str, str] | None = None
    """The refused policy version last audited, so each refusal is audited once."""
    teams_development: bool = False
    """``goodbot serve --teams-development``: Teams without a client secret, loopback only."""
    teams: Any = None
    """The Teams channel when it is served (``channels.teams.TeamsChannel``)."""


GATEWAY = web.AppKey("gateway", Gateway)
EMAIL: web.AppKey[EmailChannel] = web.AppKey("email")
"""The email channel (``channels.email.EmailChannel``), present only when it is configured."""


def database_url(settings: GatewaySettings) -> str:
    """The store's URL: the configured one, or SQLite in the data directory."""
    if settings.database.url:
        return settings.database.url
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return sqlite_url(settings.data_dir)


def make_route(settings: GatewaySettings) -> Route:
    """The configured route."""
    if settings.model.route == "openai":
        from agent.openai_route import OpenAIRoute

        assert settings.model.base_url is not None and settings.model.model is not None
        return OpenAIRoute(
            base_url=settings.model.base_url,
            model=settings.model.model,
            api_key=settings.secret("model"),
            timeout=settings.model.timeout_seconds,
        )
    from agent.rules import RulesRoute

    return RulesRoute()


def default_registry() -> Registry:
    """Every built-in tool."""
    from tools.builtin import default_registry as builtin

    return builtin()


async def build_gateway(
    settings: GatewaySettings,
    *,
    cp_url: str,
    cp_token: str,
    policy_path: Path,
    route: Route | None = None,
    registry: Registry | None = None,
) -> Gateway:
    """Open the store and wire every collaborator; the caller closes it with ``close``."""
    policy = PolicySource.load(policy_path)
    store = await SessionStore.open(
        database_url(settings),
        schema=settings.database.schema_name,
        migrate_schema=settings.database.migrate_on_start,
    )
    metrics = Metrics()
    leases = Leases(
        store.engine,
        namespace=settings.database.schema_name or "",
        retry_seconds=settings.replicas.lease_retry_seconds,
        on_change=lambda duty, held: metrics.duty_held.labels(duty).set(1 if held else 0),
    )
    shared_rate = None
    if store.engine.dialect.name == "postgresql" and settings.replicas.shared_rate_limit:
        from sessions.ratelimit import SharedRateLimiter

        shared_rate = SharedRateLimiter(store.db)
    cp = ControlPlaneClient(cp_url, cp_token, timeout=settings.controlplane.timeout_seconds)
    await cp.__aenter__()
    graph = await open_graph(settings)
    if graph is not None and registry is None:
        from tools.builtin import graph_tools

        registry = default_registry()
        for spec in graph_tools():
            registry.add(spec)
    route = route or make_route(settings)
    executor = ToolExecutor(
        registry or default_registry(),
        store,
        timeout=settings.controlplane.timeout_seconds,
        confirmation_ttl=timedelta(seconds=settings.confirmation_ttl_seconds),
    )
    loop = AgentLoop(route, executor, max_steps=settings.max_steps, history=settings.history)
    from gateway.notifications import Notifications

    notifications = Notifications(store, cp, policy, metrics)
    turns = TurnService(
        policy=policy,
        store=store,
        loop=loop,
        cp=cp,
        metrics=metrics,
        notifications=notifications,
        graph=graph,
        shared_rate=shared_rate,
        link_hosts=tuple(settings.model.link_hosts),
        concurrency=settings.turn_concurrency,
    )
    return Gateway(
        settings,
        store,
        policy,
        cp,
        cp_url,
        route,
        executor,
        loop,
        turns,
        metrics,
        leases,
        notifications,
        Delivery(store, policy, metrics),
    )


async def open_graph(settings: GatewaySettings) -> GraphClient | None:
    """The Microsoft Graph client for the calendar tools, or None when Graph is not configured."""
    conf = settings.graph
    if not conf.enabled:
        return None
    assert conf.tenant_id is not None and conf.client_id is not None
    credential: str | ClientCertificate = conf.secret() or ""
    if conf.client_certificate_file is not None:
        credential = ClientCertificate.load(conf.client_certificate_file)
    graph = GraphClient(
        conf.tenant_id,
        conf.client_id,
        credential,
        authority_host=conf.authority_host,
        base_url=conf.base_url,
        ca_file=str(conf.ca_file) if conf.ca_file is not None else None,
        timeout=conf.timeout_seconds,
        domain=conf.domain,
        allowed_domains=conf.allowed_domains,
    )
    return await graph.__aenter__()


async def close_gateway(gateway: Gateway) -> None:
    """Stop background duties and close every connection."""
    for task in gateway.tasks:
        task.cancel()
    for task in gateway.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await gateway.route.close()
    await gateway.cp.close()
    if gateway.turns.graph is not None:
        await gateway.turns.graph.close()
    await gateway.leases.close()
    await gateway.store.close()


def build_app(gateway: Gateway) -> web.Application:
    """The aiohttp application serving the channels and the health endpoints."""
    middlewares: list[Middleware] = [correlation_middleware]
    if gateway.settings.server.trusted_proxies:
        trusted = [ipaddress.ip_network(n) for n in gateway.settings.server.trusted_proxies]
        middlewares.insert(0, forwarded_middleware(trusted))
    app = web.Application(client_max_size=2 * 1024 * 1024, middlewares=middlewares)
    app.on_response_prepare.append(echo_correlation)
    app[GATEWAY] = gateway
    app.router.add_routes(CliChannel(gateway.turns).routes())
    if gateway.settings.slack.enabled:
        _add_slack(app, gateway)
    if gateway.settings.email.enabled:
        _add_email(app, gateway)
    if gateway.settings.teams.enabled or gateway.teams_development:
        _add_teams(app, gateway)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(_duties)
    return app


def _add_slack(app: web.Application, gateway: Gateway) -> None:
    """The Slack channel: ``/slack/events`` when a signing secret is set, Socket Mode if asked."""
    from channels.slack import SlackChannel

    settings = gateway.settings
    signing_secret = settings.secret("slack", "signing_secret")
    bot_token = settings.secret("slack", "bot_token")
    assert bot_token is not None
    slack = SlackChannel(
        gateway.turns, signing_secret or "", bot_token, settings.slack.api_base_url
    )
    if signing_secret is not None:
        app.router.add_routes(slack.routes())
    if gateway.delivery is not None:
        gateway.delivery.register(slack)
    app_token = settings.secret("slack", "app_token") if settings.slack.socket_mode else None

    async def start_slack(_: web.Application) -> AsyncIterator[None]:
        await slack.start()
        if app_token is not None:
            await slack.start_socket_mode(app_token)
        yield

    app.cleanup_ctx.append(start_slack)

    async def close_slack(_: web.Application) -> None:
        await slack.close()

    app.on_cleanup.append(close_slack)


def _add_email(app: web.Application, gateway: Gateway) -> None:
    """Run the email channel as a duty (only when its mailbox and relay are configured)."""
    import secrets

    from channels.email import EmailChannel, MailConfig
    from channels.email_imap import ImapEndpoint
    from channels.email_smtp import SmtpEndpoint
    from gateway.bootstrap import write_secret

    conf = gateway.settings.email
    assert conf.address and conf.imap_host and conf.smtp_host and conf.imap_username
    ca = str(conf.ca_file) if conf.ca_file is not None else None
    key = conf.password("code")
    if key is None:
        key_file = gateway.settings.data_dir / "email-code-key"
        if not key_file.exists():
            write_secret(key_file, secrets.token_hex(32))
        key = key_file.read_text().strip()
    config = MailConfig(
        address=conf.address.lower(),
        imap=ImapEndpoint(
            conf.imap_host,
            conf.imap_port,
            conf.imap_tls,
            conf.imap_username,
            conf.password("imap") or "",
            conf.imap_mailbox,
            ca,
            conf.timeout_seconds,
        ),
        smtp=SmtpEndpoint(
            conf.smtp_host,
            conf.smtp_port,
            conf.smtp_tls,
            conf.smtp_username,
            conf.password("smtp"),
            ca,
            conf.timeout_seconds,
        ),
        authserv_ids=tuple(conf.trusted_authserv_ids),
        code_secret=key.encode(),
        display_name=conf.display_name,
        own_addresses=frozenset(a.lower() for a in conf.own_addresses),
        idle=conf.imap_idle,
        poll_seconds=conf.poll_seconds,
        max_email_bytes=conf.max_email_bytes,
        sender_rate_per_minute=conf.sender_rate_per_minute,
    )
    channel = EmailChannel(gateway.turns, gateway.store.mail, config)
    app[EMAIL] = channel

    async def close_email(_: web.Application) -> None:
        await channel.close()

    app.on_cleanup.append(close_email)


def _add_teams(app: web.Application, gateway: Gateway) -> None:
    """Serve the Teams channel at ``/api/messages`` (with credentials, or in development mode)."""
    from channels.teams import TeamsChannel
    from channels.teams_auth import DEVELOPMENT_APP_ID, Credentials

    conf = gateway.settings.teams
    secret = conf.secret()
    if secret is None and not gateway.teams_development:
        raise ConfigError(
            "teams.client_secret",
            "set GOODBOT_TEAMS__CLIENT_SECRET or teams.client_secret_file "
            "(or run goodbot serve --teams-development, on loopback only)",
        )
    creds = Credentials(
        app_id=conf.app_id or DEVELOPMENT_APP_ID,
        tenant_id=conf.tenant_id or "common",
        secret=secret,
        authority_host=conf.authority_host,
        ca_file=conf.ca_file,
    )
    teams = TeamsChannel(
        gateway.turns,
        gateway.store.directory,
        creds,
        tenants=conf.tenants(),
        max_concurrent_turns=gateway.settings.turn_concurrency,
        send_attempts=conf.send_attempts,
        sso=_teams_sso(gateway),
        token_service_url=conf.token_service_url,
    )
    teams.install(app)
    gateway.teams = teams
    if gateway.delivery is not None:
        gateway.delivery.register(teams)


def _teams_sso(gateway: Gateway) -> tuple[str, GraphClient] | None:
    """Teams single sign-on: the OAuth connection and the Graph client that exchanges tokens."""
    connection = gateway.settings.teams.sso_connection
    if connection is None:
        return None
    if gateway.turns.graph is None:
        log.warning("teams.sso_connection is set but Graph is not configured: no sign-on")
        return None
    return connection, gateway.turns.graph


async def healthz(_: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the database answers at the schema this code needs, and the control plane
    answers its ``/healthz``."""
    gateway = request.app[GATEWAY]
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            found = await current_revision(gateway.store.engine)
        needed = _head_revision()
        checks["database"] = (
            "ok" if found == needed else f"failing: schema at {found}, needs {needed} (migrate)"
        )
    except Exception as exc:  # any failure means not ready; say which
        checks["database"] = f"failing: {type(exc).__name__}"
    try:
        timeout = aiohttp.ClientTimeout(total=2)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"{gateway.cp_url.rstrip('/')}/healthz") as resp,
        ):
            checks["controlplane"] = "ok" if resp.status == 200 else f"failing: HTTP {resp.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        checks["controlplane"] = f"failing: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    policy = gateway.policy
    body: dict[str, Any] = {
        "ready": ready,
        "checks": checks,
        "policy": policy.current.revision,
        "duties": sorted(gateway.leases.held),
    }
    if policy.last_error is not None:
        body["policy_refused"] = {
            "where": policy.last_error.where,
            "reason": policy.last_error.reason,
        }
    return web.json_response(body, status=200 if ready else 503)


@functools.cache
def _head_revision() -> str | None:
    return head_revision()


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition; queue depths are read from the database at each scrape."""
    gateway = request.app[GATEWAY]
    try:
        async with asyncio.timeout(2):
            for queue, depth in (await gateway.store.queue_depths()).items():
                gateway.metrics.queue_depth.labels(queue).set(depth)
    except Exception as exc:  # the other series still matter when the database does not answer
        log.warning("queue depth unavailable", extra={"error": type(exc).__name__})
    body = gateway.metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def _duties(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    settings = gateway.settings
    leases = gateway.leases
    if not leases.shared:  # one process: whatever is unfinished was left by its crash
        await _recover(gateway, 0.0)
    # Every process reloads its own policy file; every other duty holds a lease.
    gateway.tasks.append(asyncio.create_task(_every(2.0, lambda: _reload(gateway))))
    gateway.tasks.append(
        asyncio.create_task(
            leases.every(
                "confirmations.expiry", settings.expiry_sweep_seconds, lambda: _expire(gateway)
            )
        )
    )
    if settings.retention_days is not None:
        keep = timedelta(days=settings.retention_days)

        async def retain() -> None:
            purged = await gateway.store.purge(keep)
            delivered = await gateway.store.notifications.purge_delivered(keep)
            log.info(
                "retention applied",
                extra={"messages": purged.messages, "notifications": delivered},
            )

        gateway.tasks.append(
            asyncio.create_task(leases.every("retention", settings.retention_sweep_seconds, retain))
        )
    if leases.shared:
        replicas = settings.replicas

        async def recover() -> None:
            await _recover(gateway, replicas.recover_after_seconds)

        gateway.tasks.append(
            asyncio.create_task(leases.every("recovery", replicas.recovery_seconds, recover))
        )
    if gateway.notifications is not None and settings.notifications.enabled:
        gateway.tasks.append(
            asyncio.create_task(
                leases.every(
                    "notifications.poll",
                    settings.notifications.poll_seconds,
                    gateway.notifications.poll,
                )
            )
        )
    if gateway.delivery is not None and gateway.delivery.channels:
        gateway.tasks.append(
            asyncio.create_task(
                leases.every(
                    "notifications.deliver",
                    settings.notifications.deliver_seconds,
                    gateway.delivery.run,
                )
            )
        )
    if EMAIL in app:
        # After ``recover``: the replies recovered turns stored are what its flush sends first.
        gateway.tasks.append(
            asyncio.create_task(leases.while_held("email.mailbox", app[EMAIL].run))
        )
    yield


async def _recover(gateway: Gateway, older_than: float) -> None:
    answered, resumed = await gateway.turns.recover(older_than)
    if answered or resumed:
        log.warning(
            "recovered unfinished work",
            extra={"messages": answered, "confirmations": resumed},
        )


async def _reload(gateway: Gateway) -> None:
    if gateway.policy.reload_if_changed():
        await gateway.store.audit(
            "policy.reloaded", None, None, None, {"revision": gateway.policy.current.revision}
        )
    elif gateway.policy.last_error is not None:
        error = gateway.policy.last_error
        marker = (error.where, error.reason)
        if gateway.refused_policy != marker:
            gateway.refused_policy = marker
            await gateway.store.audit(
                "policy.refused",
                None,
                None,
                None,
                {
                    "where": error.where,
                    "reason": error.reason,
                    "kept": gateway.policy.current.revision,
                },
            )


async def _expire(gateway: Gateway) -> None:
    expired = await gateway.store.expire_due()
    if expired:
        gateway.metrics.confirmations.labels("expired").inc(expired)


async def _every(seconds: float, duty: Callable[[], Awaitable[Any]]) -> None:
    """Run ``duty`` every ``seconds`` until cancelled; a failure is logged, not fatal."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await duty()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background duty failed", extra={"duty": getattr(duty, "__name__", "")})
