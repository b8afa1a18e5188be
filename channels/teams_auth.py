"""Teams ingress and egress credentials: the checks goodbot adds around the Agents SDK (channels).

Every ``POST /api/messages`` passes three gates, in this order, before an activity reaches the
SDK's adapter (and so the gateway):

1. ``precheck`` (goodbot, before the SDK): a ``Bearer`` JWT whose header names a key id and
   RS256, and whose (still unverified) issuer is one the configuration accepts. The SDK answers
   a token without ``kid`` with an uncaught ``KeyError`` (HTTP 500) and fetches the signing keys
   of whatever issuer a token names; here both are a plain 401 before any key is fetched.
2. The SDK's ``jwt_authorization_decorator`` on the route (not the app-wide middleware: the
   gateway has other routes): signature against the issuer's published keys, expiry with
   300 s of clock skew, audience = our app id, and the issuer allow-list (``VALIDATE_ISSUER``
   is always on).
3. ``check_activity`` (goodbot, after the SDK): the token's ``serviceurl`` claim names the
   activity's ``serviceUrl`` (the SDK only logs a warning when they differ, and would reply to
   whatever URL the body names), and the activity's Entra tenant is on the allowlist.

A refusal is an ``IngressRefusal`` with the HTTP status (401 for anything about the token, 403
for a tenant not allowed) and a short reason that names no claim value.

Outbound tokens come from msal through ``TeamsMsalAuth``: the SDK's ``MsalAuth`` builds its
``ConfidentialClientApplication`` (OIDC discovery included, synchronous HTTP) on the event
loop, and cannot be told which CA to trust; this subclass takes the authority host and CA
bundle from the settings, and builds the client in a thread (``warm_up``) before the first
token is asked for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
import msal  # type: ignore[import-untyped]
import requests
from microsoft_agents.activity import Activity
from microsoft_agents.authentication.msal import MsalAuth
from microsoft_agents.hosting.core import AgentAuthConfiguration, ConnectionManager
from microsoft_agents.hosting.core.authorization import ClaimsIdentity
from yarl import URL

log = logging.getLogger(__name__)

CHANNEL: Final = "teams"
"""The channel's name in the policy file and the store."""
SERVICE_CONNECTION: Final = "SERVICE_CONNECTION"
"""The SDK's name for the connection it uses for the bot's own tokens."""
TOKEN_MARGIN: Final = 300.0
"""Seconds before expiry a held outbound token is asked for again."""
DEVELOPMENT_APP_ID: Final = "00000000-0000-0000-0000-000000000000"
"""The audience expected in development mode without an app id: no real token carries it."""


class IngressRefusal(Exception):
    """An inbound request refused before the SDK's adapter saw it.

    Attributes:
        status: 401 (the token) or 403 (the tenant).
        code: ``unauthorized`` or ``tenant_not_allowed``.
        reason: What was wrong, without any claim's value.
    """

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason


def _unauthorized(reason: str) -> IngressRefusal:
    return IngressRefusal(401, "unauthorized", reason)


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header; ``IngressRefusal`` if there is none."""
    if not header:
        raise _unauthorized("no Authorization header")
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise _unauthorized("the Authorization header is not a bearer token")
    return parts[1]


def precheck(header: str | None, issuers: frozenset[str]) -> None:
    """Refuse, before the SDK sees it, a token the SDK would mishandle or fetch keys for.

    Args:
        header: The request's ``Authorization`` header.
        issuers: Accepted issuers, lower case (the SDK configuration's ``ISSUERS``).
    """
    token = bearer(header)
    try:
        head = jwt.get_unverified_header(token)
        # Read only to route: the SDK verifies the signature and every claim after this.
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise _unauthorized("the token is not a JWT") from None
    if head.get("alg") != "RS256":
        raise _unauthorized("the token is not signed with RS256")
    kid = head.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _unauthorized("the token names no key id")
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or issuer.lower() not in issuers:
        raise _unauthorized("the token's issuer is not accepted")


def same_service_url(claimed: str, actual: str) -> bool:
    """Whether two service URLs name the same endpoint (scheme and host case-insensitively,
    the path exactly, a trailing slash ignored)."""
    try:
        a, b = URL(claimed), URL(actual)
    except (ValueError, TypeError):
        return False
    if not a.is_absolute() or not b.is_absolute():
        return False
    return (
        a.scheme.lower() == b.scheme.lower()
        and (a.host or "").lower() == (b.host or "").lower()
        and a.port == b.port
        and a.path.rstrip("/") == b.path.rstrip("/")
    )


def tenant_of(activity: Activity) -> str | None:
    """The activity's Entra tenant id (lower case): ``channelData.tenant.id`` and
    ``conversation.tenantId`` must agree when both are present."""
    found: set[str] = set()
    data = activity.channel_data
    if isinstance(data, Mapping):
        tenant = data.get("tenant")
        if isinstance(tenant, Mapping) and isinstance(tenant.get("id"), str):
            found.add(str(tenant["id"]).lower())
    conversation = activity.conversation
    if conversation is not None and conversation.tenant_id:
        found.add(conversation.tenant_id.lower())
    return found.pop() if len(found) == 1 else None


def identity_of(tenant: str, activity: Activity) -> str:
    """``<tenant id>:<Entra object id>`` of the sender ('' when Teams sent no object id)."""
    sender = activity.from_property
    oid = sender.aad_object_id if sender is not None else None
    return f"{tenant}:{oid.lower()}" if oid else ""


def check_activity(claims: ClaimsIdentity, activity: Activity, tenants: frozenset[str]) -> str:
    """Refuse an activity whose service URL is not the signed one or whose tenant is not allowed.

    Returns:
        The activity's tenant id (lower case).
    """
    claimed = claims.get_claim_value("serviceurl")
    if not isinstance(claimed, str) or not activity.service_url:
        raise _unauthorized("the token or the activity names no service URL")
    if not same_service_url(claimed, activity.service_url):
        raise _unauthorized("the activity's service URL is not the one the token was issued for")
    tenant = tenant_of(activity)
    if tenant is None or tenant not in tenants:
        raise IngressRefusal(403, "tenant_not_allowed", "the tenant is not on the allowlist")
    return tenant


@dataclass(frozen=True, slots=True)
class Credentials:
    """The bot's own identity, as the settings give it."""

    app_id: str
    """The Microsoft App ID (audience of inbound tokens, client id of outbound ones)."""
    tenant_id: str
    """The app registration's tenant."""
    secret: str | None
    """The client secret; None only in development mode (outbound messages carry no token)."""
    authority_host: str = "https://login.microsoftonline.com"
    """Entra's root."""
    ca_file: Path | None = None
    """A CA bundle for the token endpoint instead of the system's."""

    @property
    def authority(self) -> str:
        """The tenant's authority URL."""
        return f"{self.authority_host.rstrip('/')}/{self.tenant_id}"


def auth_configuration(creds: Credentials) -> AgentAuthConfiguration:
    """The SDK configuration: issuer validation on, anonymous requests refused."""
    return AgentAuthConfiguration(
        client_id=creds.app_id,
        tenant_id=creds.tenant_id,
        client_secret=creds.secret,
        authority=creds.authority,
        connection_name=SERVICE_CONNECTION,
        anonymous_allowed=False,
        validate_issuer=True,
    )


class TeamsMsalAuth(MsalAuth):
    """The SDK's msal token provider, with the authority host and CA bundle of the settings."""

    def __init__(self, configuration: AgentAuthConfiguration, creds: Credentials) -> None:
        super().__init__(configuration)
        self._creds = creds
        self._sessions: list[requests.Session] = []
        self._ready = False
        self._building = asyncio.Lock()
        self._tokens: dict[tuple[str, tuple[str, ...]], tuple[str, float]] = {}

    def _create_client_application(self, tenant_id: str | None = None) -> Any:
        session = requests.Session()
        self._sessions.append(session)
        if self._creds.ca_file is not None:
            # requests lets REQUESTS_CA_BUNDLE override ``verify``; the configured CA must win.
            session.trust_env = False
            session.verify = str(self._creds.ca_file)
        tenant = tenant_id or self._creds.tenant_id
        return msal.ConfidentialClientApplication(
            self._creds.app_id,
            client_credential=self._creds.secret,
            authority=f"{self._creds.authority_host.rstrip('/')}/{tenant}",
            # A loopback IdP is not in Entra's instance metadata; a real one is.
            instance_discovery=self._creds.ca_file is None,
            http_client=session,
        )

    async def warm_up(self) -> None:
        """Build the msal client (OIDC discovery) in a thread, not on the event loop, once."""
        if self._ready:
            return
        async with self._building:
            if not self._ready:
                await asyncio.to_thread(self._get_client)
                self._ready = True

    async def get_access_token(
        self, resource_url: str, scopes: list[str], force_refresh: bool = False
    ) -> str:
        """The bot's token for ``scopes``: held here until five minutes before it expires.

        The SDK asks twice per activity (connector and token service); msal would answer from
        its cache too, but each lookup is a thread hop and a cache search on the hot path.
        """
        key = (resource_url, tuple(scopes))
        held = self._tokens.get(key)
        if held is not None and not force_refresh and held[1] - time.time() > TOKEN_MARGIN:
            return held[0]
        await self.warm_up()
        fresh = await self._get_access_token(resource_url, scopes, force_refresh)
        self._tokens[key] = (fresh.token, float(fresh.expires_on))
        return str(fresh.token)

    def close(self) -> None:
        """Close msal's HTTP connections."""
        for session in self._sessions:
            session.close()


class NoTokenProvider(TeamsMsalAuth):
    """Development mode without a client secret: outbound requests carry no token."""

    async def get_access_token(
        self, resource_url: str, scopes: list[str], force_refresh: bool = False
    ) -> str:
        # The SDK's connector sends no Authorization header for a token of length <= 1.
        return ""

    async def warm_up(self) -> None:
        return None


def connection_manager(creds: Credentials) -> tuple[ConnectionManager, TeamsMsalAuth]:
    """The SDK connection manager for the bot's connection, and its token provider."""
    config = auth_configuration(creds)
    provider: TeamsMsalAuth = (
        TeamsMsalAuth(config, creds) if creds.secret else NoTokenProvider(config, creds)
    )
    manager = ConnectionManager(
        provider_factory=lambda _: provider,
        connections_configurations={SERVICE_CONNECTION: config},
    )
    return manager, provider
