"""Model routes: the seam between the agent loop and whatever picks tools (rules or a model).

A route sees the turn so far as a neutral transcript and answers with one ``Step``: call
these tools, or reply with this text. The loop (``agent.loop``) runs the tools through the
executor, appends their outcomes to the transcript and asks again, up to a step limit.
Routes never run tools and never authorize anything.

The route errors, drawn once::

    RouteError                  a step could not be produced; ``message`` is safe to show
    ├── RouteUnavailableError   the model endpoint refused, timed out or kept answering 429/5xx
    └── RouteOutputError        the model answered something unusable (garbage, a refusal…)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from tools.executor import ToolCall
from tools.registry import ToolSpec

__all__ = [
    "AssistantCalls",
    "AssistantText",
    "CallTools",
    "Entry",
    "Reply",
    "Route",
    "RouteError",
    "RouteOutputError",
    "RouteResult",
    "RouteUnavailableError",
    "Step",
    "StepRequest",
    "ToolCall",
    "ToolOutput",
    "Usage",
    "UserText",
]


@dataclass(frozen=True, slots=True)
class UserText:
    """What the person said (already redacted)."""

    text: str


@dataclass(frozen=True, slots=True)
class AssistantText:
    """What goodbot answered earlier (history) or in this turn."""

    text: str


@dataclass(frozen=True, slots=True)
class AssistantCalls:
    """Tool calls the route asked for in an earlier step of this turn."""

    calls: tuple[ToolCall, ...]
    text: str | None = None
    """Any text the model sent with its calls."""


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """The outcome of one tool call, as the route sees it: data, never instructions."""

    call_id: str
    """The ``ToolCall.id`` it answers."""
    name: str
    """The tool's name."""
    status: Literal["ok", "error", "denied", "confirmation_required"]
    """How the call ended (``confirmation_required``: a proposal now waits for the person)."""
    content: str
    """The outcome as text: the tool's rendering, or the error or denial reason."""
    data: Any = None
    """The structured result, when ``ok`` (JSON-compatible)."""


Entry = UserText | AssistantText | AssistantCalls | ToolOutput


@dataclass(frozen=True, slots=True)
class StepRequest:
    """Everything a route may use to choose its next step."""

    transcript: Sequence[Entry]
    """History (oldest first, bounded), then this turn's message, calls and outcomes."""
    tools: Sequence[ToolSpec]
    """The tools this principal may use here (never more)."""
    principal: str
    """Who is asking (the gateway principal's name), for greetings and "my" questions."""
    step: int
    """0 for the first step of the turn."""


@dataclass(frozen=True, slots=True)
class Reply:
    """End the turn with this text."""

    text: str


@dataclass(frozen=True, slots=True)
class CallTools:
    """Run these tools and ask again."""

    calls: tuple[ToolCall, ...]
    text: str | None = None
    """Text the model sent with the calls, if any."""


Step = Reply | CallTools


@dataclass(frozen=True, slots=True)
class Usage:
    """Model cost of a step, when a model was involved."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    """Time spent waiting for the model."""


@dataclass(slots=True)
class RouteResult:
    """A step and what it cost."""

    step: Step
    usage: Usage = field(default_factory=Usage)


class Route(Protocol):
    """Chooses the next step of a turn."""

    name: str
    """``rules`` or ``openai`` (for logs, metrics and the audit). A route may also set
    ``uses_history = False`` when it never reads earlier messages; the gateway then skips
    loading them."""

    async def next_step(self, request: StepRequest) -> RouteResult:
        """The next step; raise ``RouteError`` when none can be produced."""
        ...

    async def close(self) -> None:
        """Release connections (called once at shutdown)."""
        ...


class RouteError(Exception):
    """No step could be produced; ``message`` is a sentence safe to show the person."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RouteUnavailableError(RouteError):
    """The model endpoint refused, timed out, or kept answering 429 or 5xx."""


class RouteOutputError(RouteError):
    """The model answered something unusable: not JSON, no choice, a refusal, an empty reply."""
