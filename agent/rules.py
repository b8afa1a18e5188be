"""The rules route: the embedded, deterministic ``Route`` (no model, no network).

Step 0 reads the person's message with the grammar of ``agent.rules_grammar`` and asks for
the tool calls it names, or replies (greetings, help, or exactly what it did not
understand). Once the loop has run the calls, the next step replies with the outcomes'
content, passed through as data: nothing inside a tool's output is ever read as a request,
and the route never asks for tools after step 0, so it cannot loop.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Final

from agent.route import (
    CallTools,
    Entry,
    Reply,
    RouteResult,
    Step,
    StepRequest,
    ToolCall,
    ToolOutput,
    UserText,
)
from agent.rules_grammar import APPROVAL_ID, CHANGES, RINGS, head_of, normalize, parse
from tools.registry import ToolSpec

logger = logging.getLogger(__name__)

# Small talk: (pattern, reply); "{who}" is the principal's name. Matched against the whole
# message without punctuation, so "hi, what is pending?" still reaches the grammar.
_SMALL_TALK: Final = (
    (
        re.compile(
            r"(?:hi|hello|hey|hiya|howdy|yo|good (?:morning|afternoon|evening)|greetings)"
            r"(?: there| goodbot| bot| all| team| everyone)?",
            re.IGNORECASE,
        ),
        'Hello{who}! Ask me something like "{example}", or try /help for what I can do.',
    ),
    (
        re.compile(
            r"(?:thanks|thank you|thx|ty|cheers|much appreciated)"
            r"(?: (?:so much|a lot|very much|again|goodbot|bot))*",
            re.IGNORECASE,
        ),
        "You're welcome! Try /help whenever you need me.",
    ),
    (
        re.compile(r"(?:ok|okay|cool|great|perfect|nice|got it|bye|goodbye)(?: goodbot)?", re.I),
        "Okay. Ask me anything else, or try /help for what I can do.",
    ),
)
_HELP: Final = re.compile(
    r"help|help me|what can you do|what do you do|what can i (?:ask|say|do)"
    r"|how do i use (?:you|this|goodbot)|commands|usage|menu|options",
    re.IGNORECASE,
)
_PUNCTUATION: Final = re.compile(r"[,!.?;:]+")
# Near misses: a message that starts like a known request but lacks what the grammar needs.
_DECIDE_VERB: Final = re.compile(r"(?:approve|accept|deny|reject|decline|refuse)\b", re.I)
_CHANGE_VERB: Final = re.compile(
    r"(?P<verb>promote|push|advance|pause|halt|resume|unpause|roll ?back|rollback|revert)\b", re.I
)
_TO_RING: Final = re.compile(
    r" (?:to|into|onto) (?:the )?(?:ring ?)?(?P<ring>[\w-]+)(?: ring)?$", re.I
)
_DEFAULT_EXAMPLE: Final = "what is waiting for my approval?"
_QUOTE_LIMIT: Final = 120


class RulesRoute:
    """The embedded route: a hand-written grammar picks the tools (see ``agent.rules_grammar``)."""

    name: str = "rules"
    """Route name for logs, metrics and the audit."""
    uses_history: bool = False
    """Each message is read on its own, so the loop need not load the conversation."""

    async def next_step(self, request: StepRequest) -> RouteResult:
        """The next step of the turn (never fails: anything unparsed becomes a ``Reply``)."""
        return RouteResult(step=self._step(request))

    async def close(self) -> None:
        """Nothing to release."""

    def _step(self, request: StepRequest) -> Step:
        transcript = request.transcript
        outputs = _trailing_outputs(transcript)
        if outputs:
            return Reply(_outcomes_text(outputs))
        last = transcript[-1] if transcript else None
        if request.step >= 1 or not isinstance(last, UserText):
            # Only a person's message, read at step 0, ever leads to tool calls.
            return Reply("I have nothing more to do for that request. Try /help for what I can do.")
        return _answer(last.text, request)


def _answer(text: str, request: StepRequest) -> Step:
    said = " ".join(text.split())
    if not said:
        return Reply("I didn't get any text. Try /help for what I can do.")
    if said.startswith("/"):
        command = said.split(" ", 1)[0]
        return Reply(f'I don\'t know the command "{_quote(command)}". Try /help for what I can do.')
    bare = " ".join(_PUNCTUATION.sub(" ", said).split())
    for pattern, reply in _SMALL_TALK:
        if pattern.fullmatch(bare):
            who = f" {request.principal}" if request.principal else ""
            return Reply(reply.format(who=who, example=_example(request.tools)))
    if not bare or _HELP.fullmatch(bare) or _HELP.fullmatch(normalize(said)):
        return Reply(_help_text(request.tools, request.principal))
    parsed = parse(said)
    if parsed is None:
        missing = _missing(said)
        if missing:
            return Reply(
                f'I didn\'t understand "{_quote(said)}": {missing} Try /help for what I can do.'
            )
        return Reply(
            f'I didn\'t understand "{_quote(said)}". Try /help for what I can do, '
            f"or ask like: {_example(request.tools)}"
        )
    if parsed.tool in CHANGES and len(parsed.calls) > 1:
        # The loop refuses a second proposal in one message; say so before anything runs.
        first = parsed.calls[0]
        return Reply(
            "I can propose one change per message; send them one at a time, such as "
            f'"{first.get("decision", "approve")} {first.get("approval_id", "")}".'
        )
    offered = {spec.name for spec in request.tools}
    # A tool the principal is not offered is still called: the executor denies it with the
    # deciding policy rule and audits the attempt, which a silent drop here would hide.
    logger.debug(
        "rules route matched",
        extra={
            "tool": parsed.tool,
            "rule": parsed.rule,
            "calls": len(parsed.calls),
            "offered": parsed.tool in offered,
        },
    )
    calls = tuple(
        ToolCall(id=f"rules-{n}", name=parsed.tool, arguments=dict(args))
        for n, args in enumerate(parsed.calls, start=1)
    )
    return CallTools(calls)


def _missing(text: str) -> str | None:
    """What a message that starts like a known request lacks, as a sentence, or None."""
    head = head_of(text)
    if _DECIDE_VERB.match(head) and not APPROVAL_ID.search(head):
        return (
            "to approve or deny I need the id (apr_… or exc_…); ask "
            '"what is waiting for my approval?" to see them.'
        )
    verb = _CHANGE_VERB.match(head)
    if verb is None:
        return None
    ring = _TO_RING.search(head)
    if ring and ring["ring"].lower() not in (*RINGS, "0", "1", "2", "3", "4", "next"):
        return (
            f'I don\'t know the ring "{ring["ring"]}"; the rings are lab (0), canary (1), '
            "pilot (2), broad (3) and general (4)."
        )
    said = verb["verb"].lower()
    return (
        f"I couldn't tell which app to {said}; name it and, if you like, the version, "
        f'as in "{said} firefox 132".'
    )


def _trailing_outputs(transcript: Sequence[Entry]) -> list[ToolOutput]:
    """The tool outcomes at the end of the transcript, oldest first."""
    outputs: list[ToolOutput] = []
    for entry in reversed(transcript):
        if not isinstance(entry, ToolOutput):
            break
        outputs.append(entry)
    outputs.reverse()
    return outputs


def _outcomes_text(outputs: Sequence[ToolOutput]) -> str:
    """The outcomes' content joined for the person; the content is data and passes as is."""
    parts: list[str] = []
    for output in outputs:
        content = output.content.strip()
        if output.status == "ok":
            parts.append(content or f"{output.name} finished with nothing to show.")
        elif output.status == "confirmation_required":
            parts.append(content or f"{output.name} needs your confirmation.")
        elif output.status == "denied":
            parts.append(f"I couldn't do that, it is not allowed: {content or output.name}")
        else:
            parts.append(f"I couldn't do that: {content or output.name + ' failed'}")
    return "\n\n".join(parts)


def _help_text(tools: Sequence[ToolSpec], principal: str) -> str:
    """What this principal can ask for here, built from the offered tools only."""
    if not tools:
        return (
            "There is nothing I can do for you here: no tools are offered to you on this "
            "channel. Ask an administrator if you think that is wrong."
        )
    who = f", {principal}" if principal else ""
    lines = [f"Here is what I can do for you{who}:"]
    for spec in sorted(tools, key=lambda s: s.name):
        confirm = " (I ask you to confirm first)" if spec.mutating else ""
        lines.append(f"- **{spec.name}**: {spec.description}{confirm}")
        if spec.examples:
            lines.append("  e.g. " + ", ".join(f'"{example}"' for example in spec.examples))
    return "\n".join(lines)


def _example(tools: Sequence[ToolSpec]) -> str:
    """A request to suggest: the approvals question when offered, else the first example."""
    names = {spec.name for spec in tools}
    if not tools or "pending_approvals" in names:
        return _DEFAULT_EXAMPLE
    for spec in sorted(tools, key=lambda s: s.name):
        if spec.examples:
            return spec.examples[0]
    return _DEFAULT_EXAMPLE


def _quote(text: str) -> str:
    return text if len(text) <= _QUOTE_LIMIT else text[: _QUOTE_LIMIT - 1] + "…"
