"""Correlation ids and JSON logs: the first thing every request meets (gateway).

Each request gets a correlation id: the caller's ``X-Request-Id`` when it is sane (the load
balancer's, say: nginx sets ``$request_id``), else a new one. It is echoed in the response's
``X-Request-Id``, carried by every log record written while the request is handled, used as
the turn's request id (so it is in the turn's audit records) and sent to the control plane as
its ``X-Request-Id``, where it becomes the correlation id of the events the call appends. One
id therefore joins the balancer's log, the gateway's logs and audit chain, and the control
plane's events.

``configure_logging(level, "json")`` writes one JSON object per line with the record's
structured fields (``extra=``); the default ``text`` format stays human-readable.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson
from aiohttp import web

HEADER: Final = "X-Request-Id"
_SANE: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_CORRELATION: ContextVar[str | None] = ContextVar("goodbot_correlation_id", default=None)

# Attributes every LogRecord has; anything else came through ``extra=``.
_STANDARD: Final = frozenset(
    set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def correlation_id() -> str | None:
    """The correlation id of the request being handled, if any."""
    return _CORRELATION.get()


def new_request_id() -> str:
    """The current correlation id, or a fresh one outside a request (recovery, duties)."""
    return _CORRELATION.get() or uuid.uuid4().hex


@web.middleware
async def correlation_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind the request's correlation id for everything the handler does."""
    given = request.headers.get(HEADER, "")
    current = given if _SANE.match(given) else uuid.uuid4().hex
    token = _CORRELATION.set(current)
    try:
        response = await handler(request)
    finally:
        _CORRELATION.reset(token)
    if not response.prepared:  # a streamed answer got it in ``echo_correlation``
        response.headers[HEADER] = current
    return response


async def echo_correlation(_: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: answer with the id (also for streamed answers)."""
    current = _CORRELATION.get()
    if current is not None:
        response.headers[HEADER] = current


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, correlation id and extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = _CORRELATION.get()
        if current is not None:
            entry["correlation_id"] = current
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str, fmt: Literal["text", "json"] = "text") -> None:
    """Log to stderr at ``level`` in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    # Not forced: a process that configured logging already (a test runner) keeps its own.
    logging.basicConfig(level=level.upper(), handlers=[handler])
