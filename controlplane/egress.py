"""Control plane egress guard: outbound webhooks reach public addresses only, unless allowed.

A webhook URL is chosen by a tenant administrator; without this guard the control plane could
be pointed at its own loopback services or the private network (SSRF). Literal addresses are
refused when the subscription is created; host names are checked on every connection by the
resolver itself, so a name that later resolves to a private address (DNS rebinding) is refused
too.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver


def is_public(address: str) -> bool:
    """Whether an IP address is globally routable (not loopback, private, link-local, …)."""
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_global
    except ValueError:
        return False


def literal_refusal(host: str) -> str | None:
    """Why a literal-address host may not be a webhook target, or None when it may."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if is_public(host.strip("[]")):
        return None
    return f"{host} is not a public address; webhooks go to public addresses only"


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then drops every non-public address."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        public = [r for r in results if is_public(r["host"])]
        if not public:
            # errno + strerror, because aiohttp shows only the strerror in the error it raises.
            raise OSError(errno.EACCES, f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


def connector_kwargs(allow_private: bool) -> dict[str, Any]:
    """Keyword arguments for ``aiohttp.TCPConnector`` applying the guard."""
    return {} if allow_private else {"resolver": PublicOnlyResolver()}
