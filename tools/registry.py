"""Tool registry: each tool is one async function whose signature and docstring are its schema.

A read-only tool is ``@tool("drift.read")`` on ``async def scope_drift(ctx, scope: str) ->
ToolResult``. A mutating tool is ``@tool("ring.promote", mutating=True)`` on a function that
only *proposes* the change (it resolves names to exact ids and returns a ``Proposal``), plus
``@promote_rollout.executor`` on the function that makes the change once the principal has
confirmed the proposal's exact arguments. The executor (``tools.executor``) is the only caller.

Arguments are validated by a pydantic model built from the signature, so a model that sends a
wrong type or an unknown key gets an ``ArgumentsError`` naming the field, and the JSON schema
offered to a model is that model's schema with the docstring's per-argument descriptions.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from tools.controlplane import ControlPlaneClient
from tools.graph import GraphClient

Json = dict[str, Any]
_ARG_LINE: Final = re.compile(r"^\s{4,}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$")
_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class Verdict(Protocol):
    """A policy decision as the tools see it (``policy.engine.Decision`` satisfies it)."""

    @property
    def allowed(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def rule(self) -> str: ...


class Guard(Protocol):
    """What the layer above lends the tools: authorization and redaction for one principal.

    The gateway implements it with the policy file; tools never import the policy layer.
    """

    def authorize(self, action: str, scope_path: Sequence[str] | None) -> Verdict:
        """May this principal, on this channel, use ``action`` on a target in ``scope_path``?

        ``None`` asks before the target is known: is ``action`` granted here for some target?
        """
        ...

    def redact(self, text: str) -> str:
        """Text with secrets masked, for the audit record and the model."""
        ...


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Who a tool acts for and how it reaches the control plane; first argument of every tool."""

    principal: str
    """The gateway principal (policy file key) on whose behalf the tool runs."""
    act_as: str
    """The control-plane principal name asserted with ``X-Act-As``."""
    channel: str
    """Channel the request came from (``cli``, ``teams``…)."""
    conversation_id: str
    """Conversation the request belongs to."""
    request_id: str
    """Correlation id sent to the control plane and written into the audit."""
    cp: ControlPlaneClient
    """The control-plane client (the gateway's credential; ``act_as`` on each call)."""
    guard: Guard
    """Authorization and redaction for this principal and channel."""
    idempotency_key: str | None = None
    """Set when executing a confirmed proposal: pass it to the control plane's mutating call."""
    audit_log: list[tuple[str, dict[str, Any]]] | None = None
    """When set, the executor adds its ``tool.*`` audit records here, and the turn commits them
    with its reply in one transaction; otherwise each record is appended at once."""
    graph: GraphClient | None = None
    """The Microsoft Graph client for the calendar tools; None when Graph is not configured."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool returns: structured data plus a rendering for people."""

    data: Any
    """JSON-compatible structured result (for ``--json``, the model and the audit)."""
    text: str
    """The result for people: short Markdown, tables for lists (Markdown pipe tables)."""
    scope_path: tuple[str, ...] = ()
    """Control-plane scope ids from the root to the target's scope, when the tool knows it;
    the executor re-checks the policy with it before anything is shown."""


@dataclass(frozen=True, slots=True)
class Proposal:
    """What a mutating tool proposes: the exact change the principal is asked to confirm."""

    arguments: Json
    """Exact, resolved arguments (ids, the ring it moves from…) handed to the executor
    function once confirmed; shown to the principal verbatim and hashed."""
    summary: str
    """One line for people, such as "Promote google-chrome 131.0.6778 from canary to pilot"."""
    scope_path: tuple[str, ...] = ()
    """Control-plane scope ids from the root to the target's scope."""


class ArgumentsError(Exception):
    """Arguments that do not fit a tool's schema; ``problems`` name each field and why."""

    def __init__(self, tool: str, problems: Sequence[str]) -> None:
        super().__init__(f"invalid arguments for {tool}: " + "; ".join(problems))
        self.tool = tool
        self.problems = tuple(problems)


class ToolInputError(Exception):
    """A tool could not do what was asked for a reason the person can fix (no such app…).

    Raised by tool functions; the executor turns it into an ``error`` outcome whose text is
    the message, shown to the person and returned to the model.
    """


ReadFn = Callable[..., Awaitable[ToolResult]]
ProposeFn = Callable[..., Awaitable[Proposal]]
ExecuteFn = Callable[[ToolContext, Json], Awaitable[ToolResult]]


@dataclass(eq=False)
class ToolSpec:
    """One registered tool."""

    name: str
    """The function's name, which is the tool's name for models and people."""
    action: str
    """The dotted policy action it needs, such as ``ring.promote``."""
    mutating: bool
    """True: calling it only proposes; the change waits for a confirmation."""
    description: str
    """The docstring's first paragraph."""
    arguments: type[BaseModel]
    """Validates and documents the arguments (built from the signature)."""
    function: Callable[..., Awaitable[Any]]
    """The tool function (read, or propose for a mutating tool)."""
    execute_function: ExecuteFn | None = None
    """For a mutating tool, makes the confirmed change."""
    idempotent: bool = False
    """Repeating the same call changes nothing more (for MCP annotations)."""
    destructive: bool = False
    """The change may remove or undo something (rollback)."""
    examples: tuple[str, ...] = field(default_factory=tuple)
    """Plain-English requests this tool answers, for ``/help``."""
    _schema: Json | None = field(default=None, repr=False)

    def executor(self, fn: ExecuteFn) -> ExecuteFn:
        """Register the function that makes a mutating tool's confirmed change."""
        if not self.mutating:
            raise TypeError(f"{self.name} is read-only; only mutating tools have an executor")
        self.execute_function = fn
        return fn

    def validate(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Validated keyword arguments for the function; ``ArgumentsError`` names each field."""
        try:
            model = self.arguments.model_validate(dict(raw))
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "arguments"
                why = "unknown argument" if err["type"] == "extra_forbidden" else err["msg"]
                problems.append(f"{where}: {why}")
            raise ArgumentsError(self.name, problems) from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    def json_schema(self) -> Json:
        """The arguments' JSON schema (an ``object``), as offered to a model.

        Built once (pydantic takes milliseconds per tool, and a model route offers every tool
        on every step); callers must not modify it.
        """
        if self._schema is None:
            schema = self.arguments.model_json_schema()
            schema.pop("title", None)
            for prop in schema.get("properties", {}).values():
                prop.pop("title", None)
            self._schema = schema
        return self._schema

    def openai_tool(self) -> Json:
        """The Chat Completions ``tools`` entry for this tool."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.json_schema(),
            },
        }


class _Arguments(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _docstring_parts(doc: str) -> tuple[str, dict[str, str]]:
    """The first paragraph, and each ``Args:`` entry's text (Google style)."""
    doc = inspect.cleandoc(doc)
    first = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    described: dict[str, str] = {}
    lines = doc.splitlines()
    in_args, current = False, ""
    for line in lines:
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:"):
            in_args = True
            continue
        if in_args:
            if stripped.endswith(":") and not line.startswith(" "):
                break
            match = _ARG_LINE.match(line)
            if match and len(line) - len(line.lstrip()) == 4:
                current = match.group(1)
                described[current] = match.group(2).strip()
            elif current and stripped:
                described[current] += " " + stripped
    return first, described


def tool(
    action: str,
    *,
    mutating: bool = False,
    idempotent: bool = False,
    destructive: bool = False,
    examples: Iterable[str] = (),
) -> Callable[[Callable[..., Awaitable[Any]]], ToolSpec]:
    """Register an async function as a tool needing the policy ``action``.

    The function's first parameter is the ``ToolContext``; every other parameter becomes a
    typed argument (keyword-only in spirit: models send objects), described by the
    docstring's ``Args:`` section.

    Args:
        action: The dotted policy action, such as ``drift.read`` or ``ring.promote``.
        mutating: The function proposes a change (returns a ``Proposal``); register the
            function that makes it with ``@spec.executor``.
        idempotent: Repeating the change has no further effect.
        destructive: The change removes or undoes something.
        examples: Plain-English requests the tool answers.
    """

    def register(fn: Callable[..., Awaitable[Any]]) -> ToolSpec:
        name = fn.__name__
        if not _NAME.match(name):
            raise ValueError(f"tool name {name!r} must be lowercase with underscores")
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"tool {name} must be an async function")
        description, described = _docstring_parts(fn.__doc__ or name)
        hints = get_type_hints(fn)
        params = list(inspect.signature(fn).parameters.values())
        if not params or hints.get(params[0].name) is not ToolContext:
            raise TypeError(f"tool {name}: the first parameter must be a ToolContext")
        fields: dict[str, Any] = {}
        for param in params[1:]:
            if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                raise TypeError(f"tool {name}: *args and **kwargs are not tool arguments")
            if param.name not in hints:
                raise TypeError(f"tool {name}: argument {param.name} needs a type")
            default = ... if param.empty is param.default else param.default
            fields[param.name] = (
                hints[param.name],
                Field(default=default, description=described.get(param.name)),
            )
        model = create_model(f"{name}_arguments", __base__=_Arguments, **fields)
        return ToolSpec(
            name=name,
            action=action,
            mutating=mutating,
            description=description,
            arguments=model,
            function=fn,
            idempotent=idempotent,
            destructive=destructive,
            examples=tuple(examples),
        )

    return register


class Registry:
    """The tools the gateway offers, by name."""

    def __init__(self, specs: Iterable[ToolSpec] = ()) -> None:
        self._specs: dict[str, ToolSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: ToolSpec) -> None:
        """Register a tool; names are unique, and a mutating tool needs its executor."""
        if spec.name in self._specs:
            raise ValueError(f"tool {spec.name} is registered twice")
        if spec.mutating and spec.execute_function is None:
            raise ValueError(f"mutating tool {spec.name} has no executor")
        self._specs[spec.name] = spec

    def get(self, name: str) -> ToolSpec | None:
        """A tool by name, or None."""
        return self._specs.get(name)

    def all(self) -> list[ToolSpec]:
        """Every tool, sorted by name."""
        return [self._specs[k] for k in sorted(self._specs)]

    def offered(self, actions: Iterable[str]) -> list[ToolSpec]:
        """The tools whose action is among ``actions`` (those the principal may use)."""
        allowed = set(actions)
        return [spec for spec in self.all() if spec.action in allowed]
