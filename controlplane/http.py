"""Control plane HTTP conventions: route registry, middlewares, JSON in and out, pagination.

Handlers are registered on an ``Api`` with their permission, body, query and response models;
the same registry mounts them on aiohttp and describes them in the OpenAPI document, so the
document cannot drift from what is served. It also honours ``Idempotency-Key`` on every
mutating route, once, around the handler (``controlplane.idempotency``).
"""

from __future__ import annotations

import base64
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, cast

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controlplane import idempotency
from controlplane.access import Caller, authenticate, bootstrap_ok, hash_token, permits, require
from controlplane.errors import (
    ApiError,
    BadRequestError,
    IdempotencyKeyUnsupportedError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    UnauthorizedError,
    UnprocessableError,
    UnsupportedMediaTypeError,
)
from controlplane.models import utcnow
from controlplane.state import STATE, ServiceState

log = logging.getLogger(__name__)

REQUEST_ID: Final = web.RequestKey("request_id", str)
"""The request id, set by ``errors_middleware`` on every request."""
CALLER: Final = web.RequestKey("caller", Caller)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


class Strict(BaseModel):
    """Base of every request model: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Page(Strict):
    """Cursor pagination query parameters."""

    limit: int = Field(default=100, ge=1, le=1000)
    """Most items to return."""
    cursor: str | None = Field(default=None, max_length=200)
    """Opaque cursor from a previous page's ``next_cursor``."""


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str
    field: str | None = None
    details: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    """The one error shape every failing request returns."""

    error: ErrorDetail


def encode_cursor(value: str) -> str:
    """An opaque cursor for the last key of a page."""
    return base64.urlsafe_b64encode(f"c1:{value}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    """The key a cursor stands for; a cursor this service did not issue is a 400."""
    if cursor is None:
        return None
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        text = raw.decode()
    except (ValueError, UnicodeDecodeError):
        text = ""
    if not text.startswith("c1:"):
        raise BadRequestError("cursor is not one this service issued", field="cursor")
    return text[3:]


@dataclass(slots=True)
class ApiRequest:
    """What a handler receives: the raw request, the caller and the validated inputs."""

    request: web.Request
    state: ServiceState
    caller: Caller | None
    body: BaseModel | None
    query: BaseModel | None
    raw: dict[str, Any] | None = None
    """The request body's JSON exactly as sent (signatures cover it, not a re-serialization)."""

    @property
    def me(self) -> Caller:
        """The authenticated caller (every route but the bootstrap and public ones has one)."""
        if self.caller is None:
            raise UnauthorizedError("authentication required")
        return self.caller

    def path(self, name: str) -> str:
        """A path parameter (no id contains a NUL, and PostgreSQL text cannot hold one)."""
        value = self.request.match_info[name]
        if "\x00" in value:
            raise NotFoundError(f"no such {name}", field=name)
        return value

    @property
    def correlation_id(self) -> str:
        """The request id, propagated as the correlation id of events this request emits."""
        return self.request[REQUEST_ID]


Handler = Callable[[ApiRequest], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    permission: str | None
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    auth: str
    """``token`` (an API token), ``bootstrap`` (the platform token) or ``none``."""
    tag: str
    content_type: str = "application/json"
    shows_secret: bool = False
    """The response holds a secret shown once (a token), so it is never stored for replay."""

    @property
    def idempotent(self) -> bool:
        """Whether the route honours ``Idempotency-Key``: every mutating route of a principal,
        except those whose response shows a secret once."""
        return (
            self.method in idempotency.MUTATING and self.auth == "token" and not self.shows_secret
        )


@dataclass
class Api:
    """A collection of routes under ``/api/v1``."""

    prefix: str = "/api/v1"
    routes: list[Route] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        permission: str | None,
        tag: str,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        auth: str = "token",
        content_type: str = "application/json",
        shows_secret: bool = False,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append(
                Route(
                    method,
                    self.prefix + path,
                    handler,
                    summary,
                    permission,
                    body,
                    query,
                    response,
                    status,
                    auth,
                    tag,
                    content_type,
                    shows_secret,
                )
            )
            return handler

        return register

    def include(self, other: Api) -> None:
        self.routes.extend(other.routes)

    def mount(self, app: web.Application) -> None:
        for route in self.routes:
            app.router.add_route(route.method, route.path, _endpoint(route))


def json_response(data: Any, status: int = 200) -> web.Response:
    """Serialize pydantic models, dataclasses and plain data with orjson."""
    if isinstance(data, BaseModel):
        payload = data.model_dump_json().encode()
    else:
        payload = orjson.dumps(data, default=_default)
    return web.Response(body=payload, status=status, content_type="application/json")


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot serialize {type(value).__name__}")


def _first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    if err["type"] == "extra_forbidden":
        return where, f"unknown field {where!r}"
    return where, f"{where}: {err['msg']}"


async def _read_body(
    request: web.Request, model: type[BaseModel]
) -> tuple[BaseModel, dict[str, Any]]:
    if not request.body_exists:
        # No body at all means "no fields": fine for a model whose fields are all optional
        # (POST /rollouts/{id}/promote), and a 422 naming the first required field otherwise.
        try:
            return model.model_validate({}), {}
        except ValidationError as exc:
            where, message = _first_error(exc)
            raise UnprocessableError(message, field=where) from None
    if request.content_type != "application/json":
        raise UnsupportedMediaTypeError(
            f"send application/json, not {request.content_type!r}", field="Content-Type"
        )
    raw = await request.read()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequestError("body must be a JSON object")
    nul_at = _nul_at(data, "")
    if nul_at is not None:
        # PostgreSQL text cannot store U+0000; refuse it for every backend alike.
        raise UnprocessableError("NUL characters are not accepted", field=nul_at or "body")
    try:
        return model.model_validate(data), data
    except ValidationError as exc:
        where, message = _first_error(exc)
        raise UnprocessableError(message, field=where) from None


def _nul_at(value: Any, where: str) -> str | None:
    """The path of the first string (or key) holding a NUL character, if any."""
    if isinstance(value, str):
        return where if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            if "\x00" in key:
                return inner
            found = _nul_at(item, inner)
            if found is not None:
                return found
    elif isinstance(value, list):
        for n, item in enumerate(value):
            found = _nul_at(item, f"{where}.{n}" if where else str(n))
            if found is not None:
                return found
    return None


def _read_query(request: web.Request, model: type[BaseModel]) -> BaseModel:
    values: dict[str, Any] = {}
    for key, raw in request.query.items():
        if "\x00" in key or "\x00" in raw:
            raise BadRequestError("NUL characters are not accepted", field=key)
    for key in request.query:
        items = request.query.getall(key)
        annotation = model.model_fields.get(key)
        is_list = annotation is not None and "list" in str(annotation.annotation)
        values[key] = items if is_list else items[-1]
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        where, message = _first_error(exc)
        raise BadRequestError(message, field=where) from None


def _endpoint(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def endpoint(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        caller: Caller | None = None
        if route.auth == "token":
            caller = await _authenticate(request, state)
            if route.permission is not None:
                require(permits(caller, route.permission))
        elif route.auth == "bootstrap":
            secret = _bearer(request)
            configured = state.settings.bootstrap_token
            if not bootstrap_ok(secret, configured.get_secret_value() if configured else None):
                raise UnauthorizedError("the platform bootstrap token is required")
        query = _read_query(request, route.query) if route.query else None
        if route.query is None and request.query:
            unknown = next(iter(request.query))
            raise BadRequestError(f"unknown query parameter {unknown!r}", field=unknown)
        body, raw = await _read_body(request, route.body) if route.body else (None, None)
        req = ApiRequest(request, state, caller, body, query, raw)
        key = (
            idempotency.key_from(request.headers)
            if request.method in idempotency.MUTATING
            else None
        )
        if key is None:
            return await _respond(route, req)
        if not route.idempotent or caller is None:
            why = "shows a secret once" if route.shows_secret else "has no acting principal"
            raise IdempotencyKeyUnsupportedError(
                f"{route.method} {route.path} {why}, so it is never replayed;"
                f" send it without {idempotency.HEADER}",
                field=idempotency.HEADER,
            )
        fingerprint = idempotency.Fingerprint(
            caller.tenant_id,
            caller.principal_id,
            key,
            request.method,
            request.path_qs,
            idempotency.request_hash(raw, await request.read()),
        )
        return await idempotency.once(
            state,
            fingerprint,
            run=lambda: _respond(route, req),
            render=lambda exc: _error(exc, req.correlation_id),
        )

    endpoint.__name__ = route.handler.__name__
    return endpoint


async def _respond(route: Route, req: ApiRequest) -> web.StreamResponse:
    result = await route.handler(req)
    if isinstance(result, web.StreamResponse):
        return result
    if result is None:
        return web.Response(status=204)
    return json_response(result, route.status)


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise UnauthorizedError("send Authorization: Bearer <token>", field="Authorization")
    return secret.strip()


async def _authenticate(request: web.Request, state: ServiceState) -> Caller:
    secret = _bearer(request)
    act_as = request.headers.get("X-Act-As")
    caller = await _cached_caller(state, hash_token(secret), secret, act_as)
    retry_after = state.limiter.take(caller.principal_id, time.monotonic())
    if retry_after is not None:
        raise RateLimitedError(
            f"rate limit of {state.settings.rate_limit_per_second:g} requests/s exceeded",
            retry_after=retry_after,
        )
    request[CALLER] = caller
    return caller


AUTH_CACHE_MAX: Final = 10_000


async def _cached_caller(
    state: ServiceState, token_hash: str, secret: str, act_as: str | None
) -> Caller:
    """The caller for a token, from the short-lived cache or the database.

    The lookup is most of the cost of a cheap request on SQLite (several driver round trips);
    failures are never cached, so a new token works at once and a bad one is checked each time.
    """
    key = (token_hash, act_as)
    now = time.monotonic()
    hit = state.auth_cache.get(key)
    if hit is not None and hit[0] > now:
        return cast(Caller, hit[1])
    async with state.sessions() as session:
        caller, expires_at = await authenticate(session, secret, act_as)
    ttl = state.settings.auth_cache_seconds
    if expires_at is not None:
        ttl = min(ttl, (expires_at - utcnow()).total_seconds())
    if ttl > 0:
        if len(state.auth_cache) >= AUTH_CACHE_MAX:
            state.auth_cache.clear()
        state.auth_cache[key] = (now + ttl, caller)
    return caller


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Give every request an id and turn every failure into the one error shape."""
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _SAFE_ID.match(given) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except ApiError as exc:
        response = _error(exc, request_id)
    except web.HTTPRequestEntityTooLarge as exc:
        limit = exc.text or ""
        response = _error(
            PayloadTooLargeError(
                f"request body exceeds the limit of {request.app[STATE].settings.max_body_bytes}"
                " bytes",
                details={"limit_bytes": request.app[STATE].settings.max_body_bytes, "raw": limit},
            ),
            request_id,
        )
    except web.HTTPMethodNotAllowed as exc:
        response = _error(
            MethodNotAllowedError(
                f"{request.method} is not allowed here; allowed: {sorted(exc.allowed_methods)}"
            ),
            request_id,
        )
        response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
    except web.HTTPNotFound:
        response = _error(NotFoundError(f"no route for {request.path}"), request_id)
    except web.HTTPException:
        raise
    except Exception:
        # The outermost layer: log with the exception, answer politely, leak nothing.
        log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
        response = _error(ApiError("internal error; quote the request id"), request_id)
    response.headers["X-Request-Id"] = request_id
    return response


def _error(exc: ApiError, request_id: str) -> web.Response:
    response = json_response(exc.body(request_id), exc.status)
    response.headers.update(exc.headers)
    return response


def paginate[T](
    items: Iterable[T], limit: int, key: Callable[[T], str]
) -> tuple[list[T], str | None]:
    """Cut a page from ``limit + 1`` fetched items and compute the next cursor."""
    rows = list(items)
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(key(rows[-1]))
