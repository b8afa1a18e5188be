"""Email channel, sender verification: the receiving server's Authentication-Results (channels).

The From header proves nothing by itself; what counts is what the receiving server found and
wrote into an ``Authentication-Results`` header (RFC 8601). A sender is trusted only when such
a header reports ``dmarc=pass`` for the From domain, or ``dkim=pass`` with a signing domain
(``header.d``) aligned with it: the From domain itself or a parent of it.

Which headers count: only ones whose authserv-id is a configured receiving server, and of
those only the top-most group: reading from the top, the first header with a configured
authserv-id and the ones right after it, up to the first ``Received`` header or a header
with another authserv-id. Anything lower was there before the trusted server received the
message, so the sender could have written it (RFC 8601 section 5 asks servers to remove such
forgeries, but not every one does). Headers from other servers are ignored.

Written by hand: the grammar is small (RFC 8601 section 2.2) and the PyPI parsers for it are
either unmaintained or bundled with DKIM signing code the channel does not need.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

_VALUE: Final = r'(?:"(?:[^"\\]|\\.)*"|[^\s;"]+)'
_METHOD: Final = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*(?:/\s*\d+\s*)?=\s*([A-Za-z0-9_-]+)")
_REASON: Final = re.compile(rf"^\s*reason\s*=\s*{_VALUE}", re.I)
_PROPERTY: Final = re.compile(rf"([A-Za-z0-9_-]+)\s*\.\s*([A-Za-z0-9_-]+)\s*=\s*({_VALUE})")
_AUTHSERV: Final = re.compile(rf"^\s*({_VALUE})")


@dataclass(frozen=True, slots=True)
class MethodResult:
    """One ``method=result`` of an Authentication-Results header, with its properties."""

    method: str
    """Lower-cased: ``dmarc``, ``dkim``, ``spf``, …"""
    result: str
    """Lower-cased: ``pass``, ``fail``, ``none``, …"""
    properties: dict[str, str] = field(default_factory=dict)
    """``ptype.property`` (lower-cased) to its value, such as ``header.d`` → ``example.com``."""


@dataclass(frozen=True, slots=True)
class AuthResults:
    """One parsed Authentication-Results header."""

    authserv_id: str
    """The server that wrote it, lower-cased."""
    results: tuple[MethodResult, ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a message's sender is trusted, and why."""

    trusted: bool
    reason: str
    """A sentence for the audit record."""
    rule: str
    """``email.dmarc``, ``email.dkim_aligned`` or the refusing rule (``email.untrusted``…)."""


def _uncomment(text: str) -> str:
    """``text`` with its RFC 5322 comments (nested, with quoted pairs) replaced by spaces."""
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for char in text:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(char)
            continue
        if char == "\\":
            escaped = True
            if depth == 0:
                out.append(char)
            continue
        if depth == 0 and char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
            continue
        elif not quoted and char == ")" and depth > 0:
            depth -= 1
            if depth == 0:
                out.append(" ")
            continue
        if depth == 0:
            out.append(char)
    return "".join(out)


def _split(text: str) -> list[str]:
    """Split on ``;`` outside quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_header(value: str) -> AuthResults | None:
    """Parse one Authentication-Results value; None when it has no authserv-id."""
    segments = _split(_uncomment(value.replace("\r", " ").replace("\n", " ")))
    head = _AUTHSERV.match(segments[0])
    if head is None:
        return None
    results: list[MethodResult] = []
    for segment in segments[1:]:
        method = _METHOD.match(segment)
        if method is None:
            continue  # "none", or a result this parser cannot read: it proves nothing
        rest = segment[method.end() :]
        reason = _REASON.match(rest)
        if reason is not None:
            rest = rest[reason.end() :]
        properties = {
            f"{p.group(1).lower()}.{p.group(2).lower()}": _unquote(p.group(3))
            for p in _PROPERTY.finditer(rest)
        }
        results.append(MethodResult(method.group(1).lower(), method.group(2).lower(), properties))
    return AuthResults(_unquote(head.group(1)).lower(), tuple(results))


def trusted_headers(
    headers: Iterable[tuple[str, str]], authserv_ids: Sequence[str]
) -> list[AuthResults]:
    """The top-most group of Authentication-Results written by a configured server.

    Args:
        headers: The message's header fields, top first (``EmailMessage.items()``).
        authserv_ids: The receiving servers trusted to write them.
    """
    wanted = {a.lower() for a in authserv_ids}
    found: list[AuthResults] = []
    for name, value in headers:
        lname = name.lower()
        if lname == "received" and found:
            break
        if lname != "authentication-results":
            continue
        parsed = parse_header(str(value))
        if parsed is not None and parsed.authserv_id in wanted:
            found.append(parsed)
        elif found:
            break
    return found


def aligned(signing_domain: str, from_domain: str) -> bool:
    """Relaxed alignment without the public-suffix list: the same domain or a parent of it.

    Stricter than RFC 7489's organizational-domain rule (a sibling subdomain does not align),
    and a one-label signing domain never aligns.
    """
    d, f = signing_domain.lower().strip(".").lstrip("@"), from_domain.lower().strip(".")
    return "." in d and (f == d or f.endswith("." + d))


def verify(
    headers: Iterable[tuple[str, str]], from_domain: str, authserv_ids: Sequence[str]
) -> Verdict:
    """Decide whether the From domain was authenticated by a trusted receiving server."""
    if not authserv_ids:
        return Verdict(False, "no receiving server is trusted", "email.untrusted")
    found = trusted_headers(headers, authserv_ids)
    if not found:
        return Verdict(
            False,
            f"no Authentication-Results from a trusted server ({', '.join(authserv_ids)})",
            "email.untrusted",
        )
    domain = from_domain.lower()
    seen: list[str] = []
    for header in found:
        for result in header.results:
            seen.append(f"{result.method}={result.result}")
            if result.method == "dmarc" and result.result == "pass":
                checked = result.properties.get("header.from", domain).lower()
                if checked == domain:
                    return Verdict(
                        True, f"dmarc=pass for {domain} at {header.authserv_id}", "email.dmarc"
                    )
            if result.method == "dkim" and result.result == "pass":
                signer = (
                    result.properties.get("header.d")
                    or result.properties.get("header.i", "").rpartition("@")[2]
                )
                if signer and aligned(signer, domain):
                    return Verdict(
                        True,
                        f"dkim=pass by {signer}, aligned with {domain}, at {header.authserv_id}",
                        "email.dkim_aligned",
                    )
    summary = ", ".join(seen) or "no results"
    return Verdict(
        False,
        f"neither DMARC pass nor aligned DKIM pass for {domain} ({summary})",
        "email.unauthenticated",
    )
