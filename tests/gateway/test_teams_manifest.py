"""``goodbot teams manifest``: the app package, validated against the schema it declares."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.cli import main
from gateway.teams_manifest import (
    AppInfo,
    ManifestError,
    colour_icon,
    manifest,
    outline_icon,
    package,
)
from gateway.teams_manifest_schema import MANIFEST_VERSION, SCHEMA

BOT = "6F1C2A8E-0B7D-4E55-9A1E-3D2B7C9E0F11"


def _pixels(data: bytes) -> tuple[int, int, list[tuple[int, ...]]]:
    """Width, height and RGBA pixels of one of our PNGs (8-bit RGBA, filter 0)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: dict[bytes, bytes] = {}
    at = 8
    while at < len(data):
        (size,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        body = data[at + 8 : at + 8 + size]
        assert struct.unpack(">I", data[at + 8 + size : at + 12 + size])[0] == zlib.crc32(
            kind + body
        )
        chunks[kind] = chunks.get(kind, b"") + body
        at += 12 + size
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 6)
    raw = zlib.decompress(chunks[b"IDAT"])
    stride = 1 + 4 * width
    pixels = [
        tuple(raw[y * stride + 1 + 4 * x : y * stride + 5 + 4 * x])
        for y in range(height)
        for x in range(width)
    ]
    return width, height, pixels


def test_the_manifest_validates_against_the_schema_of_its_version() -> None:
    document = manifest(AppInfo(bot_id=BOT, domain="bot.example.com"))
    assert document["manifestVersion"] == MANIFEST_VERSION
    assert f"/v{MANIFEST_VERSION}/" in document["$schema"]
    jsonschema.Draft4Validator.check_schema(SCHEMA)
    jsonschema.Draft4Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(document)
    (bot,) = document["bots"]
    assert bot["botId"] == BOT.lower() and document["id"] == BOT.lower()
    assert set(bot["scopes"]) == {"personal", "team", "groupChat"}
    titles = [c["title"] for c in bot["commandLists"][0]["commands"]]
    assert "/pending" in titles and "/approve" in titles
    assert document["validDomains"] == ["bot.example.com"]
    assert "webApplicationInfo" not in document


def test_sso_declares_the_web_application_and_the_token_domain() -> None:
    document = manifest(AppInfo(bot_id=BOT, domain="bot.example.com", sso=True))
    assert document["webApplicationInfo"] == {
        "id": BOT.lower(),
        "resource": f"api://bot.example.com/botid-{BOT.lower()}",
    }
    assert "token.botframework.com" in document["validDomains"]
    titles = [c["title"] for c in document["bots"][0]["commandLists"][0]["commands"]]
    assert titles[0] == "/signin" and len(titles) <= 10


@pytest.mark.parametrize(
    ("info", "where"),
    [
        ({"bot_id": "not-a-guid"}, "bots.0.botId"),
        ({"version": "1.0"}, "version"),
        ({"developer": "x" * 40}, "developer.name"),
        ({"privacy_url": "http://bot.example.com/privacy"}, "developer.privacyUrl"),
        ({"domain": "https://bot.example.com/api"}, "domain"),
    ],
)
def test_an_invalid_manifest_is_refused_naming_the_field(info: dict[str, Any], where: str) -> None:
    values: dict[str, Any] = {"bot_id": BOT, "domain": "bot.example.com", **info}
    with pytest.raises(ManifestError) as caught:
        manifest(AppInfo(**values))
    assert caught.value.where == where


def test_icons_have_the_sizes_teams_requires() -> None:
    width, height, pixels = _pixels(colour_icon())
    assert (width, height) == (192, 192)
    assert all(p[3] == 255 for p in pixels)  # full colour, opaque
    assert len(set(pixels)) == 2
    width, height, pixels = _pixels(outline_icon())
    assert (width, height) == (32, 32)
    # White on transparent only.
    assert set(pixels) == {(255, 255, 255, 255), (0, 0, 0, 0)}


def test_the_package_zips_the_manifest_and_both_icons() -> None:
    data = package(AppInfo(bot_id=BOT, domain="bot.example.com"))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sorted(archive.namelist()) == ["color.png", "manifest.json", "outline.png"]
        document = json.loads(archive.read("manifest.json"))
    assert document["icons"] == {"color": "color.png", "outline": "outline.png"}


def test_the_command_writes_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "goodbot.zip"
    args = ["teams", "manifest", "--endpoint", "https://bot.example.com/api/messages"]
    monkeypatch.delenv("GOODBOT_TEAMS__APP_ID", raising=False)
    assert main([*args, "--out", str(out)]) == 2
    assert "teams.app_id" in capsys.readouterr().err
    monkeypatch.setenv("GOODBOT_TEAMS__APP_ID", BOT)
    monkeypatch.setenv("GOODBOT_TEAMS__TENANT_ID", "72f988bf-86f1-41af-91ab-2d7cd011db47")
    assert main([*args, "--out", str(out), "--app-version", "1.2.3"]) == 0
    with zipfile.ZipFile(out) as archive:
        assert json.loads(archive.read("manifest.json"))["version"] == "1.2.3"
    assert main([*args, "--out", str(out), "--app-version", "1.2"]) == 2
    assert "version" in capsys.readouterr().err
