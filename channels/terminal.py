"""CLI channel, client side: the operator's terminal → HTTP → the gateway's ``/cli/v1`` routes.

The functions behind ``goodbot ask``, ``chat``, ``confirm``, ``deny``, ``notifications`` and
``whoami``. Each returns the process exit status, prints results on ``out`` and errors on
``err`` (stderr unless told)::

    0  done: a turn answered; a confirmation denied, or confirmed and the action went fine
    1  answered, but it did not work out: the action failed; expired, already decided, changed
    2  refused as malformed or too large (400, 413, other 4xx), or no such confirmation
    3  not allowed: a bad or missing token (401), a policy denial (403), someone else's confirmation
    4  rate limited (429; the message says when to try again)
    5  no usable gateway: none found, unreachable, 5xx, no such route (404), a turn that
       failed or was cut short

Errors, drawn once::

    TerminalError                   exit_code; ``locate`` raises it as is (no gateway, no token)
    ├── GatewayRefusedError         2, 3, 4, 5  an ``{"error": …}`` answer or a failed turn
    └── GatewayUnreachableError     5           no answer, a broken stream, not the protocol

A turn is sent once with a fresh ``event_id``; after a connection error before any response it
is sent once more with the same id, which the gateway de-duplicates. Nothing else is retried.
The token travels in the Authorization header only: ``Target`` hides it from ``repr``, and no
message or log line holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TextIO
from urllib.parse import quote

import aiohttp
from rich.console import Console
from yarl import URL

from channels import terminal_render as render

log = logging.getLogger(__name__)

Json = dict[str, Any]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INVALID: Final = 2
EXIT_NOT_ALLOWED: Final = 3
EXIT_RATE_LIMITED: Final = 4
EXIT_UNAVAILABLE: Final = 5

CONNECT_TIMEOUT: Final = 10.0
"""Seconds to open a connection to the gateway."""
TURN_SILENCE_TIMEOUT: Final = 300.0
"""Longest silence between two lines of a streaming turn (a slow model, a slow control plane)."""
REQUEST_TIMEOUT: Final = 90.0
"""Longest any other request may take; a confirm runs the action before it answers."""
RETRY_DELAY: Final = 0.3
"""Pause before the one retry of a turn whose connection failed."""
LINE_LIMIT: Final = 2**20
"""Read buffer per stream line: a ``done`` line carries every tool result (lines up to 2 MiB)."""
ERROR_BODY_LIMIT: Final = 1 << 20
"""Most bytes read of a non-streaming answer."""
DEFAULT_DATA_DIR: Final = Path(".goodbot")

_PRINCIPAL: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
"""Names accepted for ``--as``; no separators, so a name never walks out of ``cli-tokens/``."""
_CONFIRMATION_ID: Final = re.compile(r"^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,199}$")
_TOKEN: Final = re.compile(r"^[\x21-\x7e]{1,4096}$")
_YES: Final = frozenset({"y", "yes"})


class TerminalError(Exception):
    """Base of every failure the CLI reports; ``message`` is for the operator, never a secret."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: int = EXIT_UNAVAILABLE,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        """A sentence for the operator (the gateway's own ``message`` when it sent one)."""
        self.exit_code = exit_code
        """The process exit status this failure stands for (see the module docstring)."""
        self.status = status
        """The HTTP status, or None when there was no HTTP answer."""
        self.code = code
        """The gateway's error code (``too_large``, ``forbidden``…), when it sent one."""


class GatewayRefusedError(TerminalError):
    """The gateway answered with an error document, or a turn's stream ended in an error."""


class GatewayUnreachableError(TerminalError):
    """No usable answer: refused, timed out, cut short, or something that is not the protocol."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the gateway is and who we are."""

    url: str
    """The gateway's base URL, without a trailing slash."""
    token: str = field(repr=False)
    """The bearer token; only ever sent in the Authorization header."""
    data_dir: Path | None = field(default=None, compare=False)
    """The data directory ``locate`` looked in; ``chat`` keeps its history there."""

    def __post_init__(self) -> None:
        if not _TOKEN.match(self.token):  # a CR or LF in a header value would inject headers
            raise ValueError("the token is malformed (printable ASCII, no spaces)")


def locate(
    data_dir: Path | None,
    gateway: str | None,
    token: str | None,
    as_principal: str | None = None,
) -> Target:
    """The gateway to talk to and the token to show it, from flags or the data directory.

    Args:
        data_dir: The gateway's data directory; None is ``$GOODBOT_DATA_DIR`` or ``.goodbot``.
        gateway: ``--gateway URL``; None reads ``gateway.json`` (written by ``goodbot serve``).
        token: ``--token T``; None reads ``cli-token`` (``cli-tokens/NAME`` with ``--as NAME``).
        as_principal: ``--as NAME``: use that principal's token file.

    Raises:
        TerminalError: No gateway found (exit 5), no usable token (exit 3), a bad flag (exit 2).
    """
    base = data_dir or Path(os.environ.get("GOODBOT_DATA_DIR") or DEFAULT_DATA_DIR)
    url = _checked_url(gateway if gateway else _read_url(base))
    secret = token if token else _read_token(base, as_principal)
    if not _TOKEN.match(secret):
        raise TerminalError(
            "the CLI token is malformed (printable ASCII, no spaces)", exit_code=EXIT_NOT_ALLOWED
        )
    return Target(url=url, token=secret, data_dir=base)


def _read_url(base: Path) -> str:
    path = base / "gateway.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TerminalError(
            f"no gateway found in {base}: start one with `goodbot serve` (or pass --gateway URL)"
        ) from None
    except OSError as exc:
        raise TerminalError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise TerminalError(f"{path} is not JSON; restart `goodbot serve` to rewrite it") from None
    url = document.get("url") if isinstance(document, dict) else None
    if not isinstance(url, str) or not url:
        raise TerminalError(f'{path} names no gateway ("url" is missing)')
    return url


def _checked_url(url: str) -> str:
    try:
        parsed = URL(url.strip())
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise TerminalError(
            f"not a gateway URL: {render.clean(url)!r} (want http://host:port)",
            exit_code=EXIT_INVALID,
        )
    return str(parsed).rstrip("/")


def _read_token(base: Path, as_principal: str | None) -> str:
    if as_principal is None:
        path, whose = base / "cli-token", ""
    elif _PRINCIPAL.match(as_principal):
        path, whose = base / "cli-tokens" / as_principal, f" for {as_principal}"
    else:
        raise TerminalError(
            f"not a principal name: {render.clean(as_principal)!r}", exit_code=EXIT_INVALID
        )
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise TerminalError(
            f"no CLI token{whose} in {base} ({path} is missing): `goodbot serve` writes it,"
            " or pass --token",
            exit_code=EXIT_NOT_ALLOWED,
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise TerminalError(f"cannot read {path}: {reason}", exit_code=EXIT_NOT_ALLOWED) from None


def _shown(url: str) -> str:
    """A URL fit for a message: no user or password in it."""
    with contextlib.suppress(ValueError):
        return str(URL(url).with_user(None))
    return render.clean(url)


def _exit_for_status(status: int) -> int:
    if status in (404, 405):  # no such route: not a goodbot gateway, or an older one
        return EXIT_UNAVAILABLE
    if status in (401, 403):
        return EXIT_NOT_ALLOWED
    if status == 429:
        return EXIT_RATE_LIMITED
    if 400 <= status < 500:
        return EXIT_INVALID
    return EXIT_UNAVAILABLE


def _refusal(status: int, body: Any, retry_after: str | None) -> GatewayRefusedError:
    """The error an ``{"error": {"code", "message"}}`` answer stands for."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    message = error.get("message")
    if not isinstance(message, str) or not message:
        message = f"the gateway answered HTTP {status}"
        if status in (404, 405):
            message += " (is this a goodbot gateway, and as new as this client?)"
    if status == 401:
        message += " (check the CLI token: --token, or cli-token in the data directory)"
    if status == 429 and retry_after and retry_after.isdigit():
        message += f" (try again in {retry_after} s)"
    code = error.get("code")
    return GatewayRefusedError(
        message,
        exit_code=_exit_for_status(status),
        status=status,
        code=code if isinstance(code, str) else None,
    )


def _unreachable(url: str, exc: BaseException) -> GatewayUnreachableError:
    os_error = getattr(exc, "os_error", None)
    reason = getattr(os_error, "strerror", None) or str(exc) or type(exc).__name__
    return GatewayUnreachableError(
        f"cannot reach the gateway at {_shown(url)}: {reason} (is `goodbot serve` running?)"
    )


class _Gateway:
    """One HTTP session with the gateway; the only place that speaks the protocol."""

    def __init__(self, target: Target, session: aiohttp.ClientSession) -> None:
        self._target = target
        self.session = session

    def _url(self, path: str) -> str:
        return f"{self._target.url}{path}"

    async def turn(self, text: str, conversation: str, on_event: Callable[[Json], None]) -> None:
        """Send one message and hand each line of the streamed turn to ``on_event``."""
        payload = {"text": text, "conversation": conversation, "event_id": uuid.uuid4().hex}
        url = self._url("/cli/v1/turns")
        timeout = aiohttp.ClientTimeout(
            total=None, connect=CONNECT_TIMEOUT, sock_read=TURN_SILENCE_TIMEOUT
        )
        for attempt in (1, 2):
            try:
                response = await self.session.post(
                    url, json=payload, timeout=timeout, allow_redirects=False
                )
                break
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                if attempt == 2:
                    raise _unreachable(self._target.url, exc) from exc
                log.info(
                    "turn resent after a connection error",
                    extra={"event_id": payload["event_id"], "error": type(exc).__name__},
                )
                await asyncio.sleep(RETRY_DELAY)
        async with response:
            if response.status != 200:
                raise _refusal(
                    response.status, await self._body(response), response.headers.get("Retry-After")
                )
            if response.content_type != "application/x-ndjson":
                raise GatewayUnreachableError(
                    f"the gateway answered {response.content_type}, not a turn stream"
                )
            while True:
                try:
                    raw = await response.content.readline()
                except ValueError as exc:  # longer than LINE_LIMIT
                    raise GatewayUnreachableError("the gateway sent an overlong line") from exc
                except (aiohttp.ClientError, TimeoutError) as exc:
                    log.info("turn stream broke", extra={"error": type(exc).__name__})
                    raise GatewayUnreachableError(
                        "the connection to the gateway broke during the turn"
                    ) from exc
                if not raw:
                    return
                if not raw.strip():
                    continue
                try:
                    event = json.loads(raw)
                except ValueError:
                    event = None
                if not isinstance(event, dict):
                    raise GatewayUnreachableError("the gateway sent a line that is not an event")
                on_event(event)

    @staticmethod
    async def _body(response: aiohttp.ClientResponse) -> Any:
        try:
            return json.loads(await response.content.read(ERROR_BODY_LIMIT))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def call(self, method: str, path: str, payload: Json | None = None) -> tuple[int, Any]:
        """One plain request: its status and its JSON body (None when it has none)."""
        try:
            async with self.session.request(
                method, self._url(path), json=payload, allow_redirects=False
            ) as response:
                return response.status, await self._body(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(self._target.url, exc) from exc

    async def get(self, path: str) -> Json:
        """GET a JSON document; any status but 200 raises ``GatewayRefusedError``."""
        status, body = await self.call("GET", path)
        if status != 200:
            raise _refusal(status, body, None)
        if not isinstance(body, dict):
            raise GatewayUnreachableError(f"the gateway's answer to {path} is not a JSON object")
        return body

    async def decide(self, confirmation_id: str, decision: str, arguments_hash: str | None) -> Json:
        """POST a decision; the answer document when it names an outcome, else an error."""
        payload: Json = {"decision": decision}
        if arguments_hash:
            payload["arguments_hash"] = arguments_hash
        path = f"/cli/v1/confirmations/{quote(confirmation_id, safe='')}"
        status, body = await self.call("POST", path, payload)
        if isinstance(body, dict) and isinstance(body.get("outcome"), str):
            return body
        if status == 200:
            raise GatewayUnreachableError("the gateway's answer to a decision names no outcome")
        raise _refusal(status, body, None)


@contextlib.asynccontextmanager
async def _connect(target: Target) -> AsyncIterator[_Gateway]:
    headers = {"Authorization": f"Bearer {target.token}", "User-Agent": "goodbot-cli"}
    async with aiohttp.ClientSession(
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT),
        read_bufsize=LINE_LIMIT,
    ) as session:
        yield _Gateway(target, session)


def _result_of(turn: render.TurnView) -> Json:
    """The result of a turn whose stream has ended; raises when it failed or was cut short."""
    turn.close()
    if turn.error is not None:
        message, code = turn.error.get("message"), turn.error.get("code")
        raise GatewayRefusedError(
            f"the turn failed: {render.clean(message)}" if message else "the turn failed",
            code=code if isinstance(code, str) else None,
        )
    if turn.result is None:
        raise GatewayUnreachableError("the gateway ended the turn without a result")
    return turn.result


def _streams(out: TextIO | None, err: TextIO | None) -> tuple[TextIO, TextIO]:
    # Resolved per call, not as defaults, so a redirected sys.stdout is honoured.
    return out or sys.stdout, err or sys.stderr


def _report(err: TextIO, exc: TerminalError) -> int:
    print(f"goodbot: {render.clean(exc.message)}", file=err)
    return exc.exit_code


async def ask(
    target: Target,
    text: str,
    *,
    json_output: bool,
    conversation: str = "default",
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``goodbot ask TEXT``: one turn, printed as it streams; the exit status.

    Args:
        target: The gateway and our token.
        text: The message.
        json_output: Print only one JSON document: the ``done`` result plus ``notifications``.
        conversation: The conversation to continue.
        out: Where results go (stdout).
        err: Where errors go (stderr).
    """
    out, err = _streams(out, err)
    if not text.strip():
        return _report(err, TerminalError("nothing to ask", exit_code=EXIT_INVALID))
    turn = render.TurnView(None if json_output else render.make_console(out), hint=True)
    try:
        async with _connect(target) as gateway:
            await gateway.turn(text, conversation, turn)
        result = _result_of(turn)
    except TerminalError as exc:
        return _report(err, exc)
    if json_output:
        render.print_json(out, {**result, "notifications": turn.notifications})
    return EXIT_OK


def _decision_exit(document: Json) -> int:
    outcome = document.get("outcome")
    if outcome == "denied":
        return EXIT_OK
    if outcome == "confirmed":
        result = document.get("result")
        ok = isinstance(result, dict) and result.get("status") == "ok"
        return EXIT_OK if ok else EXIT_FAILED
    return {"unknown": EXIT_INVALID, "wrong_principal": EXIT_NOT_ALLOWED}.get(
        str(outcome), EXIT_FAILED
    )


def _show_decided(
    document: Json, confirmation_id: str, console: Console | None, out: TextIO, err: TextIO
) -> int:
    if console is None:
        render.print_json(out, document)
    elif document.get("outcome") in ("confirmed", "denied"):
        render.show_decision(console, document)
    else:
        reason, outcome = document.get("reason") or "", document.get("outcome")
        print(f"goodbot: {render.clean(f'{confirmation_id}: {reason} ({outcome})')}", file=err)
    return _decision_exit(document)


async def decide(
    target: Target,
    confirmation_id: str,
    decision: Literal["confirm", "deny"],
    *,
    json_output: bool = False,
    arguments_hash: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``goodbot confirm ID`` / ``goodbot deny ID``: decide a pending confirmation.

    Args:
        target: The gateway and our token.
        confirmation_id: The id a proposal showed.
        decision: ``confirm`` runs the action; ``deny`` drops it.
        json_output: Print the gateway's answer document as JSON, nothing else.
        arguments_hash: The hash shown with the proposal, so a changed action is refused.
        out: Where results go (stdout).
        err: Where errors go (stderr).

    Returns:
        0 for denied, or confirmed and the action went fine; see the module docstring.
    """
    out, err = _streams(out, err)
    if not _CONFIRMATION_ID.match(confirmation_id):
        message = f"not a confirmation id: {render.clean(confirmation_id)!r}"
        return _report(err, TerminalError(message, exit_code=EXIT_INVALID))
    try:
        async with _connect(target) as gateway:
            document = await gateway.decide(confirmation_id, decision, arguments_hash)
    except TerminalError as exc:
        return _report(err, exc)
    console = None if json_output else render.make_console(out)
    return _show_decided(document, confirmation_id, console, out, err)


def _items(document: Json) -> list[Json]:
    items = document.get("items")
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


async def notifications(
    target: Target,
    *,
    json_output: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``goodbot notifications``: what arrived for us, and our confirmations still pending.

    With ``json_output`` one document: ``{"items": [...], "confirmations": [...]}``.
    """
    out, err = _streams(out, err)
    try:
        async with _connect(target) as gateway:
            inbox = _items(await gateway.get("/cli/v1/notifications"))
            pending = _items(await gateway.get("/cli/v1/confirmations"))
    except TerminalError as exc:
        return _report(err, exc)
    if json_output:
        render.print_json(out, {"items": inbox, "confirmations": pending})
    else:
        render.show_inbox(render.make_console(out), inbox, pending)
    return EXIT_OK


async def whoami(
    target: Target,
    *,
    json_output: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``goodbot whoami``: the principal, roles and tools the gateway grants our token."""
    out, err = _streams(out, err)
    try:
        async with _connect(target) as gateway:
            document = await gateway.get("/cli/v1/whoami")
    except TerminalError as exc:
        return _report(err, exc)
    if json_output:
        render.print_json(out, document)
    else:
        render.show_whoami(render.make_console(out), document, _shown(target.url))
    return EXIT_OK


async def chat(
    target: Target,
    *,
    conversation: str = "default",
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    history_file: Path | None = None,
) -> int:
    """``goodbot chat``: a conversation at the prompt until ``/quit``, Ctrl-D or Ctrl-C.

    On a terminal: readline editing with history in ``history_file`` (default: ``chat_history``
    in the target's data directory, if it exists), a spinner while a turn streams, and Ctrl-C
    stops waiting for the running turn (the gateway still finishes it and keeps the reply).
    Elsewhere (a pipe, a test) it reads plain lines from ``stdin`` and echoes each as ``you> …``.
    A proposed action is asked about at once: ``y``/``yes`` confirms it (with the arguments hash
    shown), any other answer denies it.

    Returns:
        0 when the operator leaves; 3 when the gateway refuses the token; 5 when it is not there.
    """
    out, err = _streams(out, err)
    stdin = stdin or sys.stdin
    interactive = stdin is sys.stdin and render.is_terminal(stdin)
    console = render.make_console(out)
    if history_file is None and target.data_dir is not None and target.data_dir.is_dir():
        history_file = target.data_dir / "chat_history"
    async with _connect(target) as gateway:
        try:
            me = await gateway.get("/cli/v1/whoami")
        except TerminalError as exc:
            return _report(err, exc)
        if interactive:
            who = render.clean(me.get("principal", "?"))
            render.show_note(console, f"goodbot chat: {who} at {_shown(target.url)}; /quit leaves")
        with render.OperatorInput(stdin, out, interactive, history_file) as lines:
            while (line := lines.read("you> ")) is not None:
                text = line.strip()
                if text in ("/quit", "/exit"):
                    break
                if not text:
                    continue
                if not interactive:
                    render.show_note(console, f"you> {text}", style="bold")
                if await _chat_turn(gateway, console, out, err, lines, text, conversation):
                    return EXIT_NOT_ALLOWED
    return EXIT_OK


async def _chat_turn(
    gateway: _Gateway,
    console: Console,
    out: TextIO,
    err: TextIO,
    lines: render.OperatorInput,
    text: str,
    conversation: str,
) -> bool:
    """One turn of ``chat``, and its confirmation if it proposed one; True to stop (bad token)."""
    turn = render.TurnView(console, hint=False)
    spinner = (
        console.status("waiting for the gateway…")
        if lines.interactive and console.is_terminal
        else contextlib.nullcontext()
    )
    try:
        with spinner:
            streamed = gateway.turn(text, conversation, turn)
            finished = await render.until_interrupted(streamed, lines.interactive)
        if not finished:
            note = "cancelled (the gateway still finishes the turn and keeps its reply)"
            render.show_note(console, note, style="yellow")
            return False
        _result_of(turn)
        if turn.confirmation is None:
            return False
        confirmation_id = str(turn.confirmation.get("id", ""))
        hash_ = turn.confirmation.get("arguments_hash")
        answer = lines.answer("Confirm? [y/N] ").lower()
        document = await gateway.decide(
            confirmation_id,
            "confirm" if answer in _YES else "deny",
            hash_ if isinstance(hash_, str) else None,
        )
    except TerminalError as exc:
        _report(err, exc)
        return exc.status == 401
    _show_decided(document, confirmation_id, console, out, err)
    return False
