"""Tool rendering: the Markdown the built-in tools reply with (tools → reply text).

Whatever the control plane stores as free text (descriptions, reasons, notes, names, event
data) is data, never instructions. It reaches a reply only inside a table cell or quotation
marks, capped at ``TEXT_CAP`` characters, on one line, with the characters that could break out
of either (``|``, line breaks, link and HTML brackets, quotation marks) escaped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final

TEXT_CAP: Final = 300
"""Most characters of one free-text field shown to a person or a model."""
RINGS: Final = {0: "lab", 1: "canary", 2: "pilot", 3: "department", 4: "global"}
"""The control plane's ring names. Rollouts carry ``ring_name``; these name the other rings
(the one a promotion goes to, the one a person types)."""

_BREAK: Final = re.compile(r"\r\n|[\r\n\x0b\x0c\x85\u2028\u2029]")
_CONTROL: Final = re.compile(r"[\x00-\x08\x0e-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
_ACTIVE: Final = re.compile(r"([\\|\[\]<>`])")


def clip(text: str, limit: int = TEXT_CAP) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def one_line(value: object, limit: int = TEXT_CAP) -> str:
    """Free text on one line: line breaks shown as ``↵``, control and bidi characters
    dropped, capped at ``limit``."""
    text = "" if value is None else str(value)
    text = _BREAK.sub(" ↵ ", text).replace("\t", " ")
    return clip(_CONTROL.sub("", text), limit)


def cell(value: object, limit: int = TEXT_CAP) -> str:
    """One Markdown table cell: one line, capped, with ``|``, backslashes, backticks and
    link/HTML brackets escaped so nothing in it can end the cell or become markup."""
    text = _ACTIVE.sub(r"\\\1", one_line(value, limit))
    return text or " "


def quoted(value: object, limit: int = TEXT_CAP) -> str:
    """Free text for a sentence: one line, capped, escaped like a cell, in quotation marks."""
    text = cell(value, limit).replace("“", '"').replace("”", '"')
    return f"“{text.strip()}”"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown pipe table; every value goes through ``cell``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def measure(value: object) -> str:
    """A measured value or threshold for people: ``—`` for none, short floats, long digests
    cut to 12 characters."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    if re.fullmatch(r"[0-9a-f]{40,}", text):
        return text[:12]
    return clip(text, 80)


def ring_label(ring: int) -> str:
    """``canary (ring 1)``."""
    return f"{RINGS.get(ring, 'ring')} (ring {ring})"
