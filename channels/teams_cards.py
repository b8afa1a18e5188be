"""Teams rendering: replies as Teams Markdown in messages within its size limit, and the Adaptive
Cards goodbot sends (confirmations, their final states, notifications, sign-in) (channels).

Teams renders a subset of Markdown in a text message: bold, italic, links, lists (desktop),
code and quotes, but no headings and no tables, and a bot message may not exceed 40 KB counted
as UTF-16. So headings become bold lines, a table becomes one line per row naming each column,
and a long reply is split into messages of at most ``MESSAGE_UNITS`` UTF-16 code units, at
paragraph or line boundaries and never inside a code block without closing and reopening it.

Cards are Adaptive Cards 1.5 (the first version with ``Action.Execute``, Universal Actions). A
confirmation card shows the summary and the exact structured arguments, one fact per argument
with its JSON value, and Confirm / Deny as ``Action.Execute`` whose data carries the
confirmation id, its arguments hash and the conversation it was posted in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

CARD_CONTENT_TYPE: Final = "application/vnd.microsoft.card.adaptive"
CARD_VERSION: Final = "1.5"
CONFIRM: Final = "goodbot.confirm"
DENY: Final = "goodbot.deny"
ASK: Final = "goodbot.ask"
"""A notification's action: ask goodbot the text in the action's data, as the clicker."""
MESSAGE_UNITS: Final = 12_000
"""Most UTF-16 code units of text in one message: Teams refuses bot messages over 40 KB
(UTF-16, envelope included) with 413, and this leaves room for the envelope."""
CARD_TEXT_CAP: Final = 2_000
"""Most characters of one text block on a card."""

_HEADING: Final = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
_TABLE_RULE: Final = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_FENCE: Final = re.compile(r"^\s*(```|~~~)")
_ROLLOUT_COMMAND: Final = re.compile(r"(/rollout [^()\n]+?)\s*\(")


def _units(text: str) -> int:
    """Length in UTF-16 code units, as Teams counts it."""
    return len(text.encode("utf-16-le")) // 2


def _cells(row: str) -> list[str]:
    body = row.strip()
    body = body.removeprefix("|").removesuffix("|")
    # A cell's own pipes arrive escaped (``\|``) from the tool renderer.
    parts = re.split(r"(?<!\\)\|", body)
    return [p.strip() for p in parts]


def _table_lines(rows: list[str]) -> list[str]:
    """A pipe table (header, rule, rows) as one bullet per row naming each column."""
    headers = _cells(rows[0])
    out = []
    for row in rows[2:]:
        values = _cells(row)
        first = values[0] if values else ""
        rest = [
            f"{header}: {value}"
            for header, value in zip(headers[1:], values[1:], strict=False)
            if value.strip()
        ]
        out.append(f"- **{first}**" + (" · " + " · ".join(rest) if rest else ""))
    return out


def teams_markdown(markdown: str) -> str:
    """The gateway's Markdown as Teams renders it in a message: headings bold, tables as lists."""
    lines = markdown.splitlines()
    out: list[str] = []
    fenced = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            fenced = not fenced
            out.append(line)
            i += 1
            continue
        if fenced:
            out.append(line)
            i += 1
            continue
        heading = _HEADING.match(line)
        if heading:
            out.append(f"**{heading.group(1)}**")
            i += 1
            continue
        if line.lstrip().startswith("|") and i + 1 < len(lines) and _TABLE_RULE.match(lines[i + 1]):
            rows = [line, lines[i + 1]]
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(lines[i])
                i += 1
            out.extend(_table_lines(rows))
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def split_message(text: str, limit: int = MESSAGE_UNITS) -> list[str]:
    """``text`` in parts of at most ``limit`` UTF-16 units, cut at blank lines, then at line
    ends, then anywhere; a code block cut in two is closed and reopened."""
    if _units(text) <= limit:
        return [text]
    parts: list[str] = []
    current: list[str] = []
    size = 0
    fence: str | None = None

    def flush() -> None:
        nonlocal current, size
        if current:
            chunk = "\n".join(current)
            if fence is not None:
                chunk += "\n" + fence
            parts.append(chunk)
        current = [fence] if fence is not None else []
        size = _units(fence) + 1 if fence is not None else 0

    budget = limit - 8  # room for a closing fence
    for line in text.split("\n"):
        pieces = [line]
        if _units(line) > budget:
            pieces = []
            rest = line
            while _units(rest) > budget:
                cut = budget
                while _units(rest[:cut]) > budget:
                    cut -= 1
                pieces.append(rest[:cut])
                rest = rest[cut:]
            pieces.append(rest)
        for piece in pieces:
            cost = _units(piece) + 1
            if size + cost > budget or (not piece.strip() and size > budget // 2):
                flush()
            if not piece.strip() and not current:
                continue
            current.append(piece)
            size += cost
        match = _FENCE.match(line)
        if match:
            fence = None if fence is not None else match.group(1)
    if fence is not None:
        fence = None
    if current:
        parts.append("\n".join(current))
    return [p for p in parts if p.strip()]


def _clip(text: str, limit: int = CARD_TEXT_CAP) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _card(
    body: list[dict[str, Any]], actions: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    card: dict[str, Any] = {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": CARD_VERSION,
        "body": body,
    }
    if actions:
        card["actions"] = actions
    return card


def attachment(card: Mapping[str, Any]) -> dict[str, Any]:
    """A card as a message attachment."""
    return {"contentType": CARD_CONTENT_TYPE, "content": dict(card)}


def _text(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": _clip(text), "wrap": True, **style}


def _arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    facts = [
        {"title": str(key), "value": _clip(json.dumps(value, sort_keys=True, ensure_ascii=False))}
        for key, value in sorted(arguments.items())
    ]
    return {"type": "FactSet", "id": "arguments", "facts": facts}


def confirmation_body(confirmation: Mapping[str, Any], owner: str) -> list[dict[str, Any]]:
    """What a confirmation card shows in every state: summary, tool, exact arguments, owner."""
    return [
        _text(f"Confirm: {confirmation['summary']}", weight="Bolder", size="Medium"),
        _text(f"Tool `{confirmation['tool']}` with exactly these arguments:", isSubtle=True),
        _arguments(confirmation.get("arguments") or {}),
        _text(
            f"For {owner} · expires {confirmation.get('expires_at')} · "
            f"id {confirmation['id']} · arguments sha256 "
            f"{str(confirmation.get('arguments_hash') or '')[:12]}",
            isSubtle=True,
            size="Small",
        ),
    ]


def confirmation_card(
    confirmation: Mapping[str, Any], *, owner: str, conversation: str
) -> dict[str, Any]:
    """A pending confirmation with Confirm and Deny (``Action.Execute``)."""
    data = {
        "confirmation_id": confirmation["id"],
        "arguments_hash": confirmation.get("arguments_hash") or "",
        "conversation": conversation,
        "owner": owner,
    }
    actions = [
        {
            "type": "Action.Execute",
            "verb": CONFIRM,
            "title": "Confirm",
            "style": "positive",
            "data": data,
        },
        {
            "type": "Action.Execute",
            "verb": DENY,
            "title": "Deny",
            "style": "destructive",
            "data": data,
        },
    ]
    return _card(confirmation_body(confirmation, owner), actions)


def final_line(state: str, result: Mapping[str, Any] | None, who: str) -> tuple[str, str] | None:
    """A confirmation's state as a card line (text, colour); None while it is pending.

    Args:
        state: The confirmation's state (``sessions.results.ConfirmationState``).
        result: The execution's ``status`` and ``text`` when it ran in this decision.
        who: The display name of the person who decided.
    """
    outcome = result or {}
    if state == "executed" and outcome.get("status", "ok") == "ok":
        done = f"\n\n{outcome['text']}" if outcome.get("text") else ""
        return f"✅ Confirmed by {who} and done.{done}", "Good"
    if state in ("executed", "failed"):
        why = outcome.get("text") or "it did not go through"
        return f"❌ Confirmed by {who}, but it failed: {why}", "Attention"
    if state in ("confirmed", "executing"):
        return f"⏳ Confirmed by {who}; running.", "Accent"
    if state == "denied":
        return f"🚫 Denied by {who}. Nothing was changed.", "Warning"
    if state == "expired":
        return "⌛ Expired before it was confirmed. Nothing was changed.", "Warning"
    return None


def final_card(
    confirmation: Mapping[str, Any], *, owner: str, line: tuple[str, str], note: str | None = None
) -> dict[str, Any]:
    """A settled confirmation: the same facts, its final state, and no actions."""
    body = confirmation_body(confirmation, owner)
    body.append(_text(line[0], weight="Bolder", color=line[1], id="state"))
    if note:
        body.append(_text(note, isSubtle=True, id="note"))
    return _card(body)


def notification_card(item: Mapping[str, Any]) -> dict[str, Any]:
    """A notification from the outbox as a card, with the actions its topic offers."""
    topic = str(item.get("topic") or "")
    text = str(item.get("text") or "")
    titles = {
        "approval.requested": "CAB approval waiting for you",
        "exception.requested": "Risk exception waiting for your review",
        "rollout.paused": "Rollout paused",
        "exception.expiring": "Risk exception expiring",
    }
    body = [_text(titles.get(topic, "goodbot"), weight="Bolder", size="Medium"), _text(text)]
    actions: list[dict[str, Any]] = []
    if topic in ("approval.requested", "exception.requested"):
        actions.append(_ask("Show what is waiting for me", "/pending"))
    # The poller names the rollout's slash command in the text ("Details: /rollout APP VER").
    rollout = _ROLLOUT_COMMAND.search(text)
    if topic == "rollout.paused" and rollout:
        actions.append(_ask("Show the rollout", rollout.group(1)))
    return _card(body, actions)


def _ask(title: str, text: str) -> dict[str, Any]:
    return {"type": "Action.Execute", "verb": ASK, "title": title, "data": {"text": text}}


def sign_in_card(connection: str, text: str = "Sign in to goodbot") -> dict[str, Any]:
    """An OAuthCard naming the Azure Bot resource's OAuth connection (SSO fallback)."""
    return {
        "contentType": "application/vnd.microsoft.card.oauth",
        "content": {
            "text": text,
            "connectionName": connection,
            "buttons": [{"type": "signin", "title": "Sign in", "value": ""}],
        },
    }


def card_texts(card: Mapping[str, Any]) -> list[str]:
    """Every text block's text on a card (tests and logs)."""
    out: list[str] = []

    def walk(items: Sequence[Any]) -> None:
        for item in items:
            if isinstance(item, Mapping):
                if item.get("type") == "TextBlock":
                    out.append(str(item.get("text")))
                for key in ("body", "items", "columns"):
                    if isinstance(item.get(key), list):
                        walk(item[key])

    walk(list(card.get("body") or []))
    return out
