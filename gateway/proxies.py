"""Gateway edge: the client's address behind trusted reverse proxies (first middleware).

Behind a load balancer every request comes from the balancer's address, so per-address
limits (the CLI's failed sign-ins) would let one stranger lock everybody out. When the peer
is one of ``server.trusted_proxies``, the client is the right-most ``X-Forwarded-For`` entry
that is not itself a trusted proxy; from any other peer the header is ignored, so nobody can
choose their own address by sending it.

Written here rather than taken from aiohttp-remotes: its filtered mode skips trusted entries
inside the header but never checks that the peer itself is a trusted proxy.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(peer: str | None, forwarded: Sequence[str], trusted: Sequence[Network]) -> str:
    """The client's address given the peer's, the ``X-Forwarded-For`` values and the proxies.

    Args:
        peer: The TCP peer's address (``request.remote``).
        forwarded: Every ``X-Forwarded-For`` header value, in order.
        trusted: Networks whose addresses are reverse proxies of ours.

    Returns:
        The peer when it is not a trusted proxy (or the header is absent or malformed),
        else the right-most forwarded address outside ``trusted`` (the left-most if all are).
    """

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in trusted)

    if peer is None or not is_trusted(peer):
        return peer or "unknown"
    hops = [part.strip() for value in forwarded for part in value.split(",") if part.strip()]
    try:
        chain = [str(ipaddress.ip_address(hop)) for hop in hops]
    except ValueError:
        log.warning("malformed X-Forwarded-For from a trusted proxy", extra={"peer": peer})
        return peer
    for hop in reversed(chain):
        if not is_trusted(hop):
            return hop
    return chain[0] if chain else peer


def forwarded_middleware(trusted: Sequence[Network]) -> Middleware:
    """A middleware that sets ``request.remote`` to the client behind ``trusted`` proxies."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        forwarded = request.headers.getall(hdrs.X_FORWARDED_FOR, [])
        if forwarded:
            remote = client_address(request.remote, forwarded, trusted)
            if remote != request.remote:
                request = request.clone(remote=remote)
        return await handler(request)

    return middleware
