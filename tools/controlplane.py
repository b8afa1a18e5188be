"""Control-plane client: the tools' one way out, over HTTP to the control plane (tools → /api/v1).

Every call asserts the acting principal with ``X-Act-As`` under the gateway's own service
token, so the control plane applies that principal's RBAC and separation of duties and audits
the change as ``name (via gateway)``. Every call carries a correlation id as ``X-Request-Id``
(generated when the caller has none), which the control plane stamps on the events it appends.
Failures raise the tree in ``tools.errors``.

Time: ``timeout`` bounds a whole request, retries included, so a tool can promise an answer
("the control plane is not answering") within it; the methods that page make up to
``MAX_PAGES`` requests. Retries: only GETs, at most ``retries`` more attempts with a short
exponential backoff, and only on ``ControlPlaneUnavailableError``; a POST is never retried, since
a lost response does not mean a lost change.

Exactly once: mutating calls accept an ``idempotency_key`` and send it as ``Idempotency-Key``.
The control plane honours it: a repeat by the same acting principal with the same key and the
same request is not run again but replays the first response (for 24 hours, with
``Idempotent-Replayed: true``); the same key on another request is an ``InvalidError``, and on
one still running a ``ConflictError``. So a call retried after a lost response with its key
changes nothing twice. The gateway's confirmation store still decides that a confirmation is
executed once (one conditional UPDATE), and ``promote`` stays safe to repeat on its own through
``from_ring``: a second promote of the same step finds the rollout in another ring and gets a
``ConflictError``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, Self

import aiohttp
from opentelemetry.propagate import inject
from pydantic import SecretStr

from tools.errors import ControlPlaneError, ControlPlaneUnavailableError, InvalidError, error_for

log = logging.getLogger(__name__)

Json = dict[str, Any]
RolloutStatus = Literal["Healthy", "Progressing", "Paused", "Degraded"]

PAGE_SIZE: Final = 1000
"""Items per page when the client pages through a list itself (the API's maximum)."""
MAX_PAGES: Final = 5
"""Most pages a list read (an event read, a name lookup) fetches: 5,000 items, a few hundred
ms."""
_ID: Final = re.compile(r"^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,99}$")
"""Control-plane ids; no leading dot, so a model-supplied ``..`` never walks the URL path."""


@dataclass(frozen=True, slots=True)
class WhoAmI:
    """The principal the control plane judges a call as."""

    tenant_id: str
    """The principal's tenant."""
    principal_id: str
    """The control plane's id of the principal."""
    name: str
    """The principal's unique name in the tenant (what ``X-Act-As`` names)."""
    roles: tuple[str, ...]
    """Control-plane roles, such as ``cab_approver``."""
    scope_id: str
    """Root of the scope subtree the principal may act in."""
    via: str | None
    """The gateway credential's principal when acting for someone, else None."""


@dataclass(frozen=True, slots=True)
class PendingApprovals:
    """What the acting principal may decide now."""

    principal: str
    """Whom the list is for."""
    items: tuple[Json, ...]
    """CAB requests (``kind`` ``cab_approval``) and risk exceptions (``exception``)."""
    truncated: bool
    """More CAB requests wait than ``items`` holds."""


@dataclass(frozen=True, slots=True)
class Matches:
    """The result of a name lookup (the list's ``?name=`` filter)."""

    items: tuple[Json, ...]
    """The objects whose name matched."""
    complete: bool
    """False when the lookup stopped at ``MAX_PAGES`` with more matches left unread."""


class ControlPlaneClient:
    """An async client for the control plane's ``/api/v1``, owning its HTTP session.

    Use it as ``async with ControlPlaneClient(url, token) as cp: await cp.whoami("ana")``.
    Each method takes ``act_as``, the acting principal's control-plane name, and an optional
    ``request_id``; lists come back as plain dicts in the API's JSON shape.
    """

    def __init__(
        self,
        base_url: str,
        token: SecretStr | str,
        *,
        timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.05,
    ) -> None:
        """Configure the client; the HTTP session opens on ``__aenter__``.

        Args:
            base_url: The control plane's root, such as ``http://127.0.0.1:8081``.
            token: The gateway's service token (a principal that may act for others).
            timeout: Seconds a whole call may take, retries included.
            retries: Extra attempts of a GET after ``ControlPlaneUnavailableError``.
            backoff: Seconds before the first retry; doubled for each later one.
        """
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self._http: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"ControlPlaneClient(base_url={self.base_url!r}, timeout={self.timeout!r})"

    async def __aenter__(self) -> Self:
        # No session timeout: ``asyncio.timeout`` in ``_call`` bounds a call, retries included.
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def whoami(self, act_as: str, *, request_id: str | None = None) -> WhoAmI:
        """The principal the control plane sees behind this client acting as ``act_as``."""
        body = await self._call("GET", "/whoami", act_as, request_id)
        return WhoAmI(
            tenant_id=body["tenant_id"],
            principal_id=body["principal_id"],
            name=body["name"],
            roles=tuple(body["roles"]),
            scope_id=body["scope_id"],
            via=body.get("via"),
        )

    async def pending_approvals(
        self, act_as: str, *, request_id: str | None = None
    ) -> PendingApprovals:
        """CAB requests and exceptions ``act_as`` may decide now (never their own)."""
        body = await self._call("GET", "/approvals/pending", act_as, request_id)
        return PendingApprovals(body["principal"], tuple(body["items"]), bool(body["truncated"]))

    async def decide_approval(
        self,
        act_as: str,
        approval_id: str,
        decision: Literal["approve", "deny"],
        comment: str = "",
        conditions: tuple[str, ...] | list[str] = (),
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> Json:
        """Approve or deny a CAB request as ``act_as``; the decided approval.

        Raises:
            ConflictError: It was decided already, or it lapsed.
            NotAllowedError: ``act_as`` requested it or lacks the approval's role.
        """
        body = {"decision": decision, "comment": comment, "conditions": list(conditions)}
        path = _path("approvals", approval_id, "decision")
        return await self._call("POST", path, act_as, request_id, body=body, key=idempotency_key)

    async def approval(
        self, act_as: str, approval_id: str, *, request_id: str | None = None
    ) -> Json:
        """One CAB approval: its subject, ring, requester and decision."""
        path = _path("approvals", approval_id)
        return await self._call("GET", path, act_as, request_id)

    async def decide_exception(
        self,
        act_as: str,
        exception_id: str,
        decision: Literal["approve", "deny"],
        comment: str = "",
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> Json:
        """Approve or deny a risk exception as ``act_as``; the decided exception.

        Raises:
            ConflictError: It was decided already, or it expired.
            NotAllowedError: ``act_as`` requested it or is not a security reviewer.
        """
        body = {"decision": decision, "comment": comment}
        path = _path("exceptions", exception_id, "decision")
        return await self._call("POST", path, act_as, request_id, body=body, key=idempotency_key)

    async def device_compliance(
        self, act_as: str, device_id: str, *, request_id: str | None = None
    ) -> Json:
        """A device's compliance record: state, policy version and each violation."""
        path = _path("devices", device_id, "compliance")
        return await self._call("GET", path, act_as, request_id)

    async def find_devices(
        self, act_as: str, name: str, *, request_id: str | None = None
    ) -> Matches:
        """Devices named ``name`` (case-insensitive) among those ``act_as`` can see.

        One request: ``GET /devices?name=`` (a device name is unique in its tenant).
        """
        return await self._find("/devices", act_as, name, request_id)

    async def device(self, act_as: str, device_id: str, *, request_id: str | None = None) -> Json:
        """One device: name, platform, ring and the scopes it belongs to."""
        path = _path("devices", device_id)
        return await self._call("GET", path, act_as, request_id)

    async def scope_compliance(
        self, act_as: str, scope_id: str, *, request_id: str | None = None
    ) -> Json:
        """Compliance counts of a scope's subtree, by state and by drift category."""
        path = _path("scopes", scope_id, "compliance")
        return await self._call("GET", path, act_as, request_id)

    async def find_scopes(
        self, act_as: str, name: str, *, request_id: str | None = None
    ) -> Matches:
        """Scopes named ``name`` (case-insensitive) in ``act_as``'s subtree.

        One request, ``GET /scopes?name=``; scopes under different parents may share a name.
        """
        return await self._find("/scopes", act_as, name, request_id)

    async def scope(self, act_as: str, scope_id: str, *, request_id: str | None = None) -> Json:
        """One scope, with ``path`` (``/root/…/scope_id/``) naming its ancestors."""
        path = _path("scopes", scope_id)
        return await self._call("GET", path, act_as, request_id)

    async def apps(
        self, act_as: str, name: str | None = None, *, request_id: str | None = None
    ) -> list[Json]:
        """Catalog applications (the first page), or the one named ``name``."""
        body = await self._call("GET", "/apps", act_as, request_id, params=_params(name=name))
        return list(body["items"])

    async def app(self, act_as: str, app_id: str, *, request_id: str | None = None) -> Json:
        """One catalog application."""
        path = _path("apps", app_id)
        return await self._call("GET", path, act_as, request_id)

    async def versions(
        self, act_as: str, app_id: str, *, request_id: str | None = None
    ) -> list[Json]:
        """An application's versions (up to ``MAX_PAGES`` pages), in id order."""
        items, _ = await self._pages(_path("apps", app_id, "versions"), act_as, request_id, {})
        return items

    async def version(self, act_as: str, version_id: str, *, request_id: str | None = None) -> Json:
        """One version of an application, with its supply-chain gate and evidence status."""
        path = _path("versions", version_id)
        return await self._call("GET", path, act_as, request_id)

    async def rollouts(
        self,
        act_as: str,
        app_id: str | None = None,
        status: RolloutStatus | None = None,
        *,
        request_id: str | None = None,
    ) -> list[Json]:
        """Rollouts ``act_as`` can see (the first page) with their last recorded gates."""
        params = _params(app_id=app_id, status=status)
        body = await self._call("GET", "/rollouts", act_as, request_id, params=params)
        return list(body["items"])

    async def rollout(self, act_as: str, rollout_id: str, *, request_id: str | None = None) -> Json:
        """One rollout with every gate of its ring measured now."""
        path = _path("rollouts", rollout_id)
        return await self._call("GET", path, act_as, request_id)

    async def intent(self, act_as: str, intent_id: str, *, request_id: str | None = None) -> Json:
        """One deployment intent: its version, target scope, ring and state."""
        path = _path("intents", intent_id)
        return await self._call("GET", path, act_as, request_id)

    async def promote(
        self,
        act_as: str,
        rollout_id: str,
        from_ring: int,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> Json:
        """Promote to the next ring if the rollout is still in ``from_ring``; the rollout.

        Raises:
            ConflictError: Not in ``from_ring`` any more, paused, or a gate refused; ``details``
                holds ``gates``, ``waiting_for`` and any CAB ``approval_id``.
        """
        path = _path("rollouts", rollout_id, "promote")
        body = {"from_ring": from_ring}
        return await self._call("POST", path, act_as, request_id, body=body, key=idempotency_key)

    async def pause(
        self,
        act_as: str,
        rollout_id: str,
        reason: str,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> Json:
        """Pause a rollout (a no-op when paused already); the rollout."""
        path = _path("rollouts", rollout_id, "pause")
        body = {"reason": reason}
        return await self._call("POST", path, act_as, request_id, body=body, key=idempotency_key)

    async def resume(
        self,
        act_as: str,
        rollout_id: str,
        reason: str = "",
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> Json:
        """Resume a paused rollout, measuring its gates again; the rollout."""
        path = _path("rollouts", rollout_id, "resume")
        body = {"reason": reason}
        return await self._call("POST", path, act_as, request_id, body=body, key=idempotency_key)

    async def rollback(
        self,
        act_as: str,
        rollout_id: str,
        reason: str,
        *,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> Json:
        """Roll a rollout back (every install of its intent); the rollout."""
        path = _path("rollouts", rollout_id, "rollback")
        body = {"reason": reason}
        return await self._call("POST", path, act_as, request_id, body=body, key=idempotency_key)

    async def version_risk(
        self, act_as: str, version_id: str, *, request_id: str | None = None
    ) -> Json:
        """A version's latest risk assessment, each factor and each ring's CAB need explained."""
        path = _path("versions", version_id, "risk")
        return await self._call("GET", path, act_as, request_id)

    async def events(
        self,
        act_as: str,
        *,
        device_id: str | None = None,
        scope_id: str | None = None,
        type: str | None = None,
        since: datetime | None = None,
        limit: int = 20,
        request_id: str | None = None,
    ) -> list[Json]:
        """The newest ``limit`` audit events matching the filters, oldest first.

        The API lists events oldest first only, so this reads forward from ``since`` (at
        most ``MAX_PAGES`` pages) and keeps the last ``limit``; pass ``since`` to make
        "recent" cheap on a long chain. Reading events needs an organization-wide principal.
        """
        params = _params(device_id=device_id, scope_id=scope_id, type=type)
        if since is not None:
            params["since"] = since.isoformat()
        items, _ = await self._pages("/events", act_as, request_id, params)
        return items[-max(1, limit) :]

    async def _find(self, path: str, act_as: str, name: str, request_id: str | None) -> Matches:
        wanted = name.strip()
        if not wanted:
            return Matches((), True)  # no object has an empty name
        items, complete = await self._pages(path, act_as, request_id, {"name": wanted})
        return Matches(tuple(items), complete)

    async def _pages(
        self, path: str, act_as: str, request_id: str | None, params: dict[str, str]
    ) -> tuple[list[Json], bool]:
        """The items of up to ``MAX_PAGES`` pages, and whether that was all of them."""
        request_id = request_id or uuid.uuid4().hex
        query, items = {**params, "limit": str(PAGE_SIZE)}, []
        for _ in range(MAX_PAGES):
            body = await self._call("GET", path, act_as, request_id, params=query)
            items.extend(body["items"])
            if body.get("next_cursor") is None:
                return items, True
            query["cursor"] = body["next_cursor"]
        log.info("stopped paging", extra={"path": path, "pages": MAX_PAGES})
        return items, False

    async def _call(
        self,
        method: str,
        path: str,
        act_as: str,
        request_id: str | None,
        *,
        params: dict[str, str] | None = None,
        body: Json | None = None,
        key: str | None = None,
    ) -> Json:
        request_id = request_id or uuid.uuid4().hex
        if not act_as or not act_as.isprintable():
            raise InvalidError("act_as must be a principal name", field="X-Act-As", code="invalid")
        headers = {
            "Authorization": f"Bearer {self._token.get_secret_value()}",
            "X-Act-As": act_as,
            "X-Request-Id": request_id,
            "Accept": "application/json",
        }
        if key is not None:
            headers["Idempotency-Key"] = key
        inject(headers)  # W3C traceparent when tracing is configured; nothing otherwise
        attempts = 1 + self.retries if method == "GET" else 1
        try:
            async with asyncio.timeout(self.timeout):
                for attempt in range(attempts):
                    try:
                        return await self._once(method, path, headers, params, body, request_id)
                    except ControlPlaneUnavailableError as exc:
                        if attempt + 1 == attempts:
                            raise
                        extra = {"request_id": request_id, "reason": exc.message}
                        log.warning("control plane unavailable; retrying", extra=extra)
                        await asyncio.sleep(self.backoff * 2**attempt)
        except TimeoutError:
            raise ControlPlaneUnavailableError(
                f"the control plane did not answer within {self.timeout:g} s",
                code="unavailable",
                request_id=request_id,
            ) from None
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _once(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        params: dict[str, str] | None,
        body: Json | None,
        request_id: str,
    ) -> Json:
        if self._http is None:
            raise RuntimeError("use ControlPlaneClient inside 'async with'")
        url = f"{self.base_url}/api/v1{path}"
        try:
            async with self._http.request(
                method, url, params=params, json=body, headers=headers
            ) as resp:
                answered = resp.headers.get("X-Request-Id", request_id)
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = None
                if resp.status >= 400:
                    raise error_for(resp.status, data, answered, fallback=f"HTTP {resp.status}")
                if resp.status == 204:
                    return {}
                if not isinstance(data, dict):
                    raise ControlPlaneError(
                        f"the control plane answered {resp.status} without a JSON object",
                        status=resp.status,
                        code="bad_response",
                        request_id=answered,
                    )
                return data
        except ControlPlaneError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The exception's text names the host and the failure, never our headers.
            raise ControlPlaneUnavailableError(
                f"the control plane is not answering ({type(exc).__name__})",
                code="unavailable",
                request_id=request_id,
            ) from None


def _path(collection: str, object_id: str, *rest: str) -> str:
    """``/collection/{id}/…``, refusing an id the control plane could never have issued."""
    if not _ID.match(object_id):
        field = collection.removesuffix("s") + "_id"
        raise InvalidError(f"{object_id!r} is not a valid {field}", field=field, code="invalid")
    return "/".join(("", collection, object_id, *rest))


def _params(**values: str | None) -> dict[str, str]:
    return {k: v for k, v in values.items() if v is not None}
