"""``goodbot teams manifest``: the Teams app package to upload, written offline (gateway).

The package is a zip of ``manifest.json`` (app manifest schema 1.22: the bot's Microsoft App
ID, its scopes, one command list per scope, the valid domains) and two PNG icons drawn here
without any network or imaging library: ``color.png`` (192x192, full colour) and
``outline.png`` (32x32, white on transparent), as Teams requires. The manifest is validated
against ``gateway.teams_manifest_schema.SCHEMA`` before anything is written.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import jsonschema

from agent.commands import COMMANDS
from gateway.teams_manifest_schema import MANIFEST_VERSION, SCHEMA

SCHEMA_URL: Final = f"https://developer.microsoft.com/json-schemas/teams/v{MANIFEST_VERSION}/MicrosoftTeams.schema.json"
ACCENT: Final = "#2F5AA8"
SCOPES: Final = ("personal", "team", "groupChat")
"""Where goodbot can be used: personal chats, channels in a team, group chats."""
SSO_DOMAIN: Final = "token.botframework.com"
"""The Bot Framework token service, a valid domain when the sign-in card is used."""

Pixel = tuple[int, int, int, int]


class ManifestError(Exception):
    """The manifest would not be valid: ``where`` names the field, ``reason`` why."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


@dataclass(frozen=True)
class AppInfo:
    """What the manifest says about the app and who publishes it."""

    bot_id: str
    """The bot's Microsoft App ID (``teams.app_id``)."""
    domain: str
    """The host of the messaging endpoint (``https://<domain>/api/messages``)."""
    app_id: str | None = None
    """The Teams app's own id (a GUID); the bot id by default."""
    version: str = "1.0.0"
    """The package version; raise it for every upload that changes the manifest."""
    developer: str = "goodbot"
    """The publisher's name as Teams shows it."""
    website_url: str | None = None
    """The publisher's https page; ``https://<domain>/`` by default."""
    privacy_url: str | None = None
    """The privacy statement (https); ``https://<domain>/privacy`` by default."""
    terms_url: str | None = None
    """The terms of use (https); ``https://<domain>/terms`` by default."""
    sso: bool = False
    """Declare single sign-on (``webApplicationInfo``) for the bot's app registration."""


def commands(*, sso: bool = False) -> list[dict[str, str]]:
    """The gateway's slash commands as a bot command list (title ≤ 32, description ≤ 128);
    with single sign-on, ``/signin`` first."""
    out = []
    if sso:
        out.append({"title": "/signin", "description": "sign in so goodbot can use your calendar"})
    for usage, what in COMMANDS:
        title = usage.split(" ", 1)[0]
        description = f"{usage}: {what}" if " " in usage else what
        out.append({"title": title[:32], "description": description[:128]})
    return out


def manifest(info: AppInfo) -> dict[str, Any]:
    """The app manifest for ``info``; raises ``ManifestError`` if the schema refuses it."""
    domain = info.domain.strip().lower()
    if "/" in domain or ":" in domain or not domain:
        raise ManifestError("domain", "give the host name only, such as bot.example.com")
    site = f"https://{domain}"
    document: dict[str, Any] = {
        "$schema": SCHEMA_URL,
        "manifestVersion": MANIFEST_VERSION,
        "version": info.version,
        "id": (info.app_id or info.bot_id).lower(),
        "developer": {
            "name": info.developer,
            "websiteUrl": info.website_url or f"{site}/",
            "privacyUrl": info.privacy_url or f"{site}/privacy",
            "termsOfUseUrl": info.terms_url or f"{site}/terms",
        },
        "name": {"short": "goodbot", "full": "goodbot: endpoint operations chat-ops"},
        "description": {
            "short": "Approvals, drift and rollouts, with every change confirmed and audited.",
            "full": (
                "goodbot answers questions about CAB approvals, configuration drift and "
                "rollouts, and proposes changes (promote, pause, resume, roll back, decide an "
                "approval) as cards that only the person who asked can confirm. Every change "
                "waits for that explicit confirmation and is audited."
            ),
        },
        "icons": {"color": "color.png", "outline": "outline.png"},
        "accentColor": ACCENT,
        "bots": [
            {
                "botId": info.bot_id.lower(),
                "scopes": list(SCOPES),
                "supportsFiles": False,
                "isNotificationOnly": False,
                "commandLists": [
                    {"scopes": [scope], "commands": commands(sso=info.sso)} for scope in SCOPES
                ],
            }
        ],
        "permissions": ["identity", "messageTeamMembers"],
        "validDomains": [domain, *([SSO_DOMAIN] if info.sso else [])],
    }
    if info.sso:
        document["webApplicationInfo"] = {
            "id": info.bot_id.lower(),
            "resource": f"api://{domain}/botid-{info.bot_id.lower()}",
        }
    validate(document)
    return document


def validate(document: dict[str, Any]) -> None:
    """Check ``document`` against the schema of the version it declares."""
    if document.get("manifestVersion") != MANIFEST_VERSION:
        raise ManifestError("manifestVersion", f"only {MANIFEST_VERSION} is known here")
    validator = jsonschema.Draft4Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "manifest"
        raise ManifestError(where, first.message)


def png(width: int, height: int, pixel: Callable[[int, int], Pixel]) -> bytes:
    """An 8-bit RGBA PNG whose pixels ``pixel(x, y)`` gives."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(
        b"\x00" + bytes(c for x in range(width) for c in pixel(x, y)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def _mark(x: float, y: float, size: float) -> bool:
    """goodbot's mark: a ring with a check mark inside, in a ``size`` square."""
    cx = cy = size / 2
    r = math.hypot(x - cx, y - cy)
    ring = 0.34 * size <= r <= 0.44 * size

    # Two strokes of the check: (0.3, 0.52) → (0.44, 0.66) → (0.7, 0.38), of width 0.07.
    def near(ax: float, ay: float, bx: float, by: float) -> bool:
        ax, ay, bx, by = ax * size, ay * size, bx * size, by * size
        dx, dy = bx - ax, by - ay
        t = max(0.0, min(1.0, ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy)))
        return math.hypot(x - ax - t * dx, y - ay - t * dy) <= 0.045 * size

    return ring or near(0.3, 0.52, 0.44, 0.66) or near(0.44, 0.66, 0.7, 0.38)


def colour_icon() -> bytes:
    """192x192: the white mark on the accent colour, edge to edge."""
    accent = tuple(int(ACCENT[i : i + 2], 16) for i in (1, 3, 5))
    white: Pixel = (255, 255, 255, 255)
    fill: Pixel = (accent[0], accent[1], accent[2], 255)
    return png(192, 192, lambda x, y: white if _mark(x + 0.5, y + 0.5, 192) else fill)


def outline_icon() -> bytes:
    """32x32: the mark in white on a transparent background."""
    return png(
        32,
        32,
        lambda x, y: (255, 255, 255, 255) if _mark(x + 0.5, y + 0.5, 32) else (0, 0, 0, 0),
    )


def package(info: AppInfo) -> bytes:
    """The zip to upload: ``manifest.json``, ``color.png``, ``outline.png`` at its root."""
    document = manifest(info)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", json.dumps(document, indent=2) + "\n")
        archive.writestr("color.png", colour_icon())
        archive.writestr("outline.png", outline_icon())
    return buffer.getvalue()


def write_package(path: Path, info: AppInfo) -> Path:
    """Write the package to ``path`` (a ``.zip``); returns the path."""
    data = package(info)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def host_of(endpoint: str) -> str:
    """The host of a messaging endpoint URL, or the host itself."""
    if "//" in endpoint:
        return urlsplit(endpoint).hostname or endpoint
    return endpoint
