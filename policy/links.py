"""Outbound links: a model-written reply may link only to allowed hosts (policy).

A model that read a hostile tool result can be told to put what it read into a link to the
attacker's host; chat clients fetch links to unfurl them, so the data would leave without a
click. Every ``http(s)://`` or protocol-relative URL in model-written text whose host is not
allowed is replaced by ``(link removed: <host>)``, Markdown links and images included.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

_MARKDOWN: Final = re.compile(r"!?\[([^\]\n]*)\]\(\s*((?:https?:)?//[^)\s]*)[^)]*\)", re.I)
_URL: Final = re.compile(
    r"(?:https?:|(?<![^\s(\[\"'<]))//([^\s/?#<>()\[\]\"'`|\\]+)[^\s<>()\[\]\"'`|\\]*", re.I
)


@dataclass(frozen=True, slots=True)
class Guarded:
    """Text with its disallowed links removed."""

    text: str
    removed: tuple[str, ...]
    """The hosts whose links were removed, in order of appearance."""


def _host(authority: str) -> str:
    host = authority.rsplit("@", 1)[-1]
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.split(":", 1)[0].lower().rstrip(".")


def allowed(host: str, hosts: Iterable[str]) -> bool:
    """Whether ``host`` is one of ``hosts`` or a subdomain of one."""
    return any(host == h or host.endswith("." + h) for h in (h.lower() for h in hosts))


def guard_links(text: str, hosts: Iterable[str]) -> Guarded:
    """``text`` with every link to a host outside ``hosts`` removed (see the module)."""
    permitted = tuple(hosts)
    removed: list[str] = []

    def url(match: re.Match[str]) -> str:
        host = _host(match.group(1))
        if allowed(host, permitted):
            return match.group(0)
        removed.append(host)
        return f"(link removed: {host})"

    def markdown(match: re.Match[str]) -> str:
        inner = _URL.match(match.group(2))
        if inner is not None and allowed(_host(inner.group(1)), permitted):
            return match.group(0)
        label = match.group(1).strip()
        return f"{label} {_URL.sub(url, match.group(2))}".strip()

    guarded = _URL.sub(url, _MARKDOWN.sub(markdown, text))
    return Guarded(guarded, tuple(removed))
