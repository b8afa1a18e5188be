"""CLI channel, client side, the terminal itself: what the operator sees and types (you ⇄ gateway).

``channels.terminal`` speaks HTTP; this module prints what came back and reads what the operator
answers. Everything printed came from the gateway, much of it from a model or the fleet, so it
is text, never markup: rich markup and emoji codes are off, and terminal control characters and
bidirectional overrides are replaced before printing (a summary cannot repaint the screen or
read backwards). Colour only on a terminal; elsewhere plain text, 100 columns, no trailing blanks.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import signal
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Self, TextIO, cast

from rich.console import Console, Group
from rich.markdown import Markdown
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

log = logging.getLogger(__name__)

Json = dict[str, Any]

PLAIN_WIDTH: Final = 100
"""Columns used when the output is not a terminal (a pipe, a file, a test)."""
TRACE_MAX: Final = 160
"""Longest one-line tool-call trace; longer arguments are cut with an ellipsis."""
_UNSAFE: Final = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
"""C0/C1 controls (ESC, CR, BEL…) but newline and tab, DEL, and bidirectional controls."""
_BARE: Final = re.compile(r"^[\w.:@/+-]{1,60}$")
"""Argument values short and plain enough to show unquoted in a trace."""


def clean(text: object) -> str:
    """``text`` as a string safe to print on a terminal: unsafe controls become U+FFFD."""
    return _UNSAFE.sub("\ufffd", str(text))


class _TrimmedLines(io.TextIOBase):
    """A text stream that drops trailing blanks from each line (rich pads to the width)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._partial = ""

    def write(self, s: str) -> int:
        lines = (self._partial + s).split("\n")
        self._partial = lines.pop()
        if lines:
            self._out.write("".join(line.rstrip(" ") + "\n" for line in lines))
        return len(s)

    def flush(self) -> None:
        if self._partial:
            self._out.write(self._partial)
            self._partial = ""
        self._out.flush()


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (False for anything that cannot tell)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def make_console(out: TextIO) -> Console:
    """A rich console writing to ``out``: colour on a terminal, plain 100-column text elsewhere."""
    tty = is_terminal(out)
    return Console(
        # rich only writes and flushes its file.
        file=out if tty else cast(TextIO, _TrimmedLines(out)),
        force_terminal=tty,
        width=None if tty else PLAIN_WIDTH,
        markup=False,
        emoji=False,
        highlight=False,
    )


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=False)


def print_json(out: TextIO, document: Any) -> None:
    """``document`` as the one JSON document on ``out`` (ASCII only: no control reaches a tty)."""
    out.write(json.dumps(document, indent=2) + "\n")
    out.flush()


def trace_line(name: str, arguments: Mapping[str, Any]) -> str:
    """The one-line trace of a tool call: ``→ rollout_status(app=google-chrome)``."""
    parts = []
    for key, value in arguments.items():
        shown = value if isinstance(value, str) and _BARE.match(value) else _json(value)
        parts.append(f"{key}={shown}")
    line = clean(f"→ {name}({', '.join(parts)})")
    return line if len(line) <= TRACE_MAX else line[: TRACE_MAX - 2] + "…)"


def show_tool_call(console: Console, name: str, arguments: Mapping[str, Any]) -> None:
    """A tool call, dim, on one line."""
    console.print(Text(trace_line(name, arguments), style="dim"), soft_wrap=True)


def show_tool_result(console: Console, name: str, status: str, text: str) -> None:
    """A tool result worth a line: one that failed or was refused (``ok`` shows in the reply)."""
    if status in ("error", "denied"):
        line = clean(f"  ✗ {name} {status}: {text}".rstrip(": "))
        console.print(Text(line, style="dim red" if status == "error" else "dim yellow"))


def show_notification(console: Console, item: Mapping[str, Any]) -> None:
    """A notification waiting for the operator, with its time."""
    when = clean(item.get("created_at") or "")
    line = Text()
    line.append("● ", style="cyan")
    line.append(f"[{when}] " if when else "", style="dim")
    line.append(clean(item.get("text") or ""))
    console.print(line)


def show_reply(console: Console, text: str) -> None:
    """The assistant's reply, Markdown (pipe tables become tables)."""
    if text.strip():
        console.print(Markdown(clean(text), justify="default", hyperlinks=False))


def show_note(console: Console, text: str, style: str = "dim") -> None:
    """A line of the client's own (``cancelled``, ``denied``…)."""
    console.print(Text(clean(text), style=style))


def describe_expiry(expires_at: str, now: datetime | None = None) -> str:
    """``2025-06-01 12:05 UTC (in 4 min)``, or the string as sent when it is not a timestamp."""
    try:
        when = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    except ValueError:
        return clean(expires_at)
    if when.tzinfo is None:
        return clean(expires_at)
    left = (when - (now or datetime.now(UTC))).total_seconds()
    if left <= 0:
        relative = "expired"
    elif left < 90:
        relative = f"in {int(left)} s"
    elif left < 5400:
        relative = f"in {round(left / 60)} min"
    else:
        relative = f"in {left / 3600:.1f} h"
    return f"{when.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({relative})"


def confirm_hint(confirmation_id: str) -> str:
    """The commands that answer a confirmation."""
    cid = clean(confirmation_id)
    return f"confirm with: goodbot confirm {cid}   (or deny with: goodbot deny {cid})"


def show_confirmation(console: Console, confirmation: Mapping[str, Any], *, hint: bool) -> None:
    """A proposed action waiting for the operator: what, with exactly which arguments, until when.

    Args:
        console: Where to print.
        confirmation: The gateway's confirmation object.
        hint: Also print the ``goodbot confirm ID`` / ``goodbot deny ID`` commands.
    """
    arguments = confirmation.get("arguments")
    shown: Table | Text
    if isinstance(arguments, Mapping) and arguments:
        shown = grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        for key, value in arguments.items():
            grid.add_row(clean(key), clean(_json(value)))
    else:
        shown = Text(clean(_json(arguments)) if arguments else "(none)")
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim", no_wrap=True)
    facts.add_column(overflow="fold")
    facts.add_row("tool", clean(confirmation.get("tool", "")))
    facts.add_row("arguments", shown)
    facts.add_row("id", Text(clean(confirmation.get("id", "")), style="bold"))
    facts.add_row("expires", describe_expiry(str(confirmation.get("expires_at", ""))))
    summary = Text(clean(confirmation.get("summary", "")), style="bold")
    console.print(
        Panel(
            Group(summary, Text(""), facts),
            title="confirmation required",
            title_align="left",
            border_style="yellow",
            expand=False,
        )
    )
    if hint:
        console.print(Text(confirm_hint(str(confirmation.get("id", "")))), soft_wrap=True)


def show_decision(console: Console, document: Mapping[str, Any]) -> None:
    """The outcome of ``confirm``/``deny`` that went through: denied, or confirmed and run."""
    confirmation = document.get("confirmation") or {}
    summary = clean(confirmation.get("summary", "")) if isinstance(confirmation, Mapping) else ""
    if document.get("outcome") == "denied":
        show_note(console, f"denied{': ' + summary if summary else ''}", style="yellow")
        return
    result = document.get("result") or {}
    status = result.get("status") if isinstance(result, Mapping) else None
    if status == "ok":
        show_note(console, f"✓ confirmed and done{': ' + summary if summary else ''}", "green")
    else:
        show_note(console, f"✗ confirmed, but the action failed ({status or 'no result'})", "red")
    if isinstance(result, Mapping):
        show_reply(console, str(result.get("text", "")))


def show_inbox(
    console: Console, notifications: Sequence[Mapping[str, Any]], pending: Sequence[Json]
) -> None:
    """``goodbot notifications``: what arrived, then the confirmations still waiting."""
    if not notifications and not pending:
        show_note(console, "no notifications, no pending confirmations")
        return
    for item in notifications:
        show_notification(console, item)
    if pending:
        show_note(console, f"{len(pending)} pending confirmation(s):", style="bold")
        for confirmation in pending:
            show_confirmation(console, confirmation, hint=True)


def show_whoami(console: Console, document: Mapping[str, Any], url: str) -> None:
    """Who the gateway takes us for, and what we may ask for."""
    roles = ", ".join(clean(r) for r in document.get("roles") or []) or "none"
    tools = ", ".join(clean(t) for t in document.get("tools") or []) or "none"
    show_note(console, f"{clean(document.get('principal', '?'))} at {clean(url)}", style="bold")
    show_note(console, f"roles: {roles}", style="")
    show_note(console, f"tools: {tools}", style="")


@dataclass
class TurnView:
    """One turn's stream, printed as it arrives (unless ``console`` is None), and what it said."""

    console: Console | None
    """Where to print the turn; None collects it silently (``--json``)."""
    hint: bool
    """Print the ``goodbot confirm ID`` commands under a confirmation."""
    notifications: list[Json] = field(default_factory=list)
    """The notifications delivered before the turn, as ``{id, text, created_at}``."""
    result: Json | None = None
    """The ``done`` event's result."""
    confirmation: Json | None = None
    """The confirmation the turn proposed, if any."""
    error: Json | None = None
    """The ``error`` event's error, if the turn failed."""
    _replied: bool = False
    _shown_confirmation: bool = False

    def __call__(self, event: Json) -> None:
        kind, console = event.get("type"), self.console
        if kind == "notification":
            item = {key: event.get(key) for key in ("id", "text", "created_at")}
            self.notifications.append(item)
            if console:
                show_notification(console, item)
        elif kind == "accepted":
            if console and event.get("duplicate"):
                show_note(console, "(the gateway had this message already: its answer)")
        elif kind == "tool_call":
            if console:
                args = event.get("arguments")
                show_tool_call(
                    console, str(event.get("name", "?")), args if isinstance(args, dict) else {}
                )
        elif kind == "tool_result":
            if console:
                show_tool_result(
                    console,
                    str(event.get("name", "?")),
                    str(event.get("status", "")),
                    str(event.get("text", "")),
                )
        elif kind == "confirmation":
            self.confirmation = {key: value for key, value in event.items() if key != "type"}
        elif kind == "reply":
            self._reply(str(event.get("text", "")))
        elif kind == "done":
            result = event.get("result")
            if not isinstance(result, dict):
                log.warning("done event without a result ignored")
                return
            self.result = result
            if isinstance(result.get("confirmation"), dict):
                self.confirmation = result["confirmation"]
            if not self._replied:
                self._reply(str(result.get("reply", "")))
            self._show_confirmation()
        elif kind == "error":
            error = event.get("error")
            self.error = error if isinstance(error, dict) else {}
        else:
            log.debug("unknown turn event ignored", extra={"event_type": clean(kind)})

    def _reply(self, text: str) -> None:
        self._replied = True
        if self.console:
            show_reply(self.console, text)

    def _show_confirmation(self) -> None:
        if self.console and self.confirmation and not self._shown_confirmation:
            self._shown_confirmation = True
            show_confirmation(self.console, self.confirmation, hint=self.hint)

    def close(self) -> None:
        """The stream has ended: show a proposal not shown yet (no ``done`` came)."""
        self._show_confirmation()


class OperatorInput:
    """The operator's side of ``chat``: readline and history on a terminal, plain lines else."""

    def __init__(
        self, stdin: TextIO, out: TextIO, interactive: bool, history_file: Path | None
    ) -> None:
        self._stdin, self._out = stdin, out
        self.interactive = interactive
        self._history = history_file if interactive else None
        self._readline: Any = None

    def __enter__(self) -> Self:
        if self._history is not None:
            try:
                import readline  # only a terminal session wants line editing

                readline.set_history_length(1000)
                if self._history.exists():
                    readline.read_history_file(self._history)
                self._readline = readline
            except (ImportError, OSError) as exc:
                log.debug("chat history unavailable", extra={"error": type(exc).__name__})
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._readline is not None and self._history is not None:
            try:
                self._readline.write_history_file(self._history)
                self._history.chmod(0o600)
            except OSError as exc:
                log.debug("chat history not saved", extra={"error": type(exc).__name__})

    def read(self, prompt: str) -> str | None:
        """The next line; None at end of input, or on Ctrl-C/Ctrl-D at a terminal."""
        if not self.interactive:
            line = self._stdin.readline()
            return line.rstrip("\n") if line else None
        with interruptible_input():
            try:
                return input(prompt)
            except (EOFError, KeyboardInterrupt):
                self._out.write("\n")
                return None

    def answer(self, prompt: str) -> str:
        """A yes/no answer (kept out of the history); empty at end of input or Ctrl-C."""
        if not self.interactive:
            self._out.write(prompt)
            line = self._stdin.readline().strip()
            self._out.write(f"{clean(line)}\n")
            return line
        line = self.read(prompt) or ""
        if line and self._readline is not None:
            with contextlib.suppress(ValueError):
                self._readline.remove_history_item(self._readline.get_current_history_length() - 1)
        return line.strip()


@contextlib.contextmanager
def interruptible_input() -> Iterator[None]:
    """While a blocking ``input()`` waits, Ctrl-C raises ``KeyboardInterrupt`` in it."""
    # asyncio.run() turns Ctrl-C into cancelling the main task, which a blocking input() never
    # sees, so the prompt would hang until Enter.
    try:
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


async def until_interrupted(work: Awaitable[None], enabled: bool) -> bool:
    """Run ``work``; False when Ctrl-C cancelled it (only when ``enabled``: a terminal)."""
    if not enabled:
        await work
        return True
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    previous = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
        await task
        return True
    try:
        await task
        return True
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if interrupted and not (current and current.cancelling()):
            return False
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
