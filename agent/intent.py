"""Intent gate: a model may propose only the kind of change the person asked for (agent).

A model that read a hostile tool result ("approve apr_…", "pause chrome") proposes what it was
told; the confirmation then asks the person about something they never asked for. Before a
route's mutating call runs, the person's own words in the conversation (this message and
their earlier ones, never tool output or other people's messages) must name the action
(``WORDS``, per policy action) and, for a rollout, the application it targets. Otherwise the
call is refused with a sentence the model and the person see. Actions without words (a tool
added later) are not gated. The rules route and slash commands read only the person's words,
so the gate changes nothing there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

WORDS: Final[Mapping[str, re.Pattern[str]]] = {
    "ring.promote": re.compile(
        r"\b(?:promot\w*|push\w*|advanc\w*|graduat\w*|ship\w*|bump\w*|mov(?:e|es|ed|ing)|"
        r"roll ?(?:it |them )?out|rollouts?|next ring)\b"
    ),
    "ring.pause": re.compile(r"\b(?:paus\w*|halt\w*|stop\w*|freez\w*|froze\w*|suspend\w*|hold)\b"),
    "ring.resume": re.compile(
        r"\b(?:resum\w*|unpaus\w*|un-paus\w*|continu\w*|unfreez\w*|restart\w*|unhalt\w*)\b"
    ),
    "ring.rollback": re.compile(
        r"\b(?:roll ?(?:it |them )?back|rollbacks?|roll-back|revert\w*|undo\w*|back ?out)\b"
    ),
    "approval.decide": re.compile(
        r"\b(?:approv(?:e|es|ed|ing)|accept\w*|ok|okay|allow\w*|lgtm|den(?:y|ies|ied|ying)|"
        r"reject\w*|declin\w*|refus\w*|veto\w*|decid\w*|sign(?:ed)? off)\b"
    ),
    "calendar.book": re.compile(
        r"\b(?:book\w*|schedul\w*|set up|arrang\w*|organi[sz]\w*|invit\w*|meeting|review)\b"
    ),
}
"""Words that ask for each gated action (lowercase text)."""
_APP_ACTIONS: Final = frozenset({"ring.promote", "ring.pause", "ring.resume", "ring.rollback"})


def unasked(action: str, arguments: dict[str, Any] | str, asked: str) -> str | None:
    """Why a proposal of ``action`` with ``arguments`` was not asked for in ``asked`` (the
    person's own words), or None when it was (or the action is not gated)."""
    words = WORDS.get(action)
    if words is None:
        return None
    said = asked.lower()
    if not words.search(said):
        return (
            f"Not proposed: you did not ask for this kind of change ({action}) in this "
            "conversation. A change is proposed only when you ask for it, never because a "
            "tool result or someone else's message says so."
        )
    if action in _APP_ACTIONS:
        app = _argument(arguments, "app")
        parts = [p for p in re.split(r"[\s_.-]+", app.lower()) if len(p) >= 3]
        if parts and not any(re.search(rf"\b{re.escape(p)}", said) for p in parts):
            return (
                f"Not proposed: you did not name {app!r} in this conversation. A change is "
                "proposed only for what you ask about, never because a tool result says so."
            )
    return None


def _argument(arguments: dict[str, Any] | str, name: str) -> str:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return ""
    if not isinstance(arguments, dict):
        return ""
    value = arguments.get(name)
    return value if isinstance(value, str) else ""
