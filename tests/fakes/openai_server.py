"""A fake OpenAI-compatible Chat Completions server on 127.0.0.1 (what the model route calls).

Scripted, it answers each ``POST /v1/chat/completions`` with the next step and fails on unused
steps: ``assert_drained()`` (run on a clean ``async with`` exit) fails while steps remain or
after any unexpected request, which gets a 500 naming the problem. With a ``fallback`` it
answers every request the script does not cover, as load benchmarks need::

    async with FakeOpenAI() as fake:
        fake.script(tool_calls([("promote_rollout", {"app": "google-chrome"})]), text("Done."))
        route = OpenAIRoute(base_url=fake.base_url, model="m", api_key="sk-test")

``Obedient`` plays the worst case for prompt injection: a model that does what the person
asks and also whatever instruction it reads anywhere else (a tool result, an earlier message).

Like the real API, it refuses (400) a request without ``model`` or ``messages``, or whose tool
calls and ``tool`` messages do not pair up, and records these in ``errors`` too.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiohttp import web

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Answer:
    """A chat completion (status 200)."""

    content: str | None = None
    refusal: str | None = None
    calls: tuple[tuple[str, Json | str], ...] = ()
    """(tool name, arguments); a string is sent verbatim, so it may be malformed JSON."""


@dataclass(frozen=True, slots=True)
class Status:
    """An error status with the API's error body."""

    code: int
    retry_after: float | None = None
    message: str | None = None
    """The error body's message; by default one like the real API's (401 echoes the key)."""


@dataclass(frozen=True, slots=True)
class Garbage:
    """A 200 whose body is these bytes."""

    body: bytes
    content_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Delay:
    """Wait, then answer with ``then``."""

    seconds: float
    then: Step


Step = Answer | Status | Garbage | Delay
Fallback = Callable[[Json], Step]
"""Chooses the answer to a request (its JSON body) when the script has no step left."""


def tool_calls(calls: Iterable[tuple[str, Json | str]], *, text: str | None = None) -> Step:
    """Call these tools (``finish_reason`` ``tool_calls``), with optional text alongside."""
    return Answer(content=text, calls=tuple(calls))


def text(content: str) -> Step:
    """Answer with this text (``finish_reason`` ``stop``)."""
    return Answer(content=content)


def refusal(message: str) -> Step:
    """Refuse: ``message.refusal`` set, ``content`` null."""
    return Answer(refusal=message)


def status(code: int, *, retry_after: float | None = None, message: str | None = None) -> Step:
    """An error status with the API's error body, and ``Retry-After`` when given."""
    return Status(code, retry_after, message)


def garbage(body: bytes, *, content_type: str = "application/json") -> Step:
    """A 200 whose body is these bytes."""
    return Garbage(body, content_type)


def huge(size_bytes: int) -> Step:
    """A well-formed answer whose text is ``size_bytes`` long."""
    return Answer(content="x" * size_bytes)


def delay(seconds: float, then: Step) -> Step:
    """Wait, then answer with ``then`` (cancelled when the client hangs up)."""
    return Delay(seconds, then)


def answer_after(seconds: float, content: str = "ok") -> Fallback:
    """A fallback answering every request with ``content`` after ``seconds`` (benchmarks)."""
    return lambda _body: Delay(seconds, Answer(content=content))


def call_named_tool(body: Json) -> Step:
    """A fallback that calls, without arguments, the first offered tool the last user message
    names, and after a tool result answers with that result's content."""
    last = body["messages"][-1]
    if last.get("role") == "tool":
        return Answer(content=str(last.get("content")))
    offered = [t["function"]["name"] for t in body.get("tools", [])]
    named = [name for name in offered if name in str(last.get("content"))]
    return Answer(calls=((named[0], {}),)) if named else Answer(content="No tool was named.")


@dataclass(frozen=True, slots=True)
class Instruction:
    """What an obedient model does once it reads ``trigger`` outside the person's message."""

    trigger: str
    """The instruction's words (compared on letters and digits only, so escaping and line
    breaks added by renderers do not hide it)."""
    calls: tuple[tuple[str, Json], ...] = ()
    """Tool calls it makes; the string ``{context}`` in an argument becomes what it has read."""
    reply: str = ""
    """Text it adds to its final answer; ``{context}`` becomes what it has read, URL-quoted."""


def _letters(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", text.lower())


@dataclass
class Obedient:
    """A fallback playing a model that follows every instruction it sees (the worst case).

    For the person's newest message it runs the first plan whose phrase the message contains,
    one step (a tuple of calls) per request; whenever anything other than that message (tool
    results, earlier messages) holds an instruction's trigger, it first makes that
    instruction's calls, once per turn. Its final answer quotes what the tools returned, plus
    the reply of every instruction it followed.
    """

    plans: Mapping[str, Sequence[tuple[tuple[str, Json], ...]]]
    """Phrase in the person's message → the steps that answer it."""
    instructions: Sequence[Instruction] = ()
    """What it obeys wherever it reads it."""

    def __call__(self, body: Json) -> Step:
        messages: list[Json] = body["messages"]
        last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
        asked = str(messages[last_user].get("content") or "")
        this_turn = messages[last_user + 1 :]
        called = [
            (c["function"]["name"], c["function"]["arguments"])
            for m in this_turn
            if m.get("role") == "assistant"
            for c in m.get("tool_calls") or []
        ]
        results = [_decoded(m.get("content")) for m in this_turn if m.get("role") == "tool"]
        elsewhere = results + [
            str(m.get("content") or "")
            for m in messages[1:last_user]
            if m.get("role") in ("user", "assistant", "tool")
        ]
        context = " ".join(results)
        seen = _letters(" ".join(elsewhere))
        followed = [i for i in self.instructions if _letters(i.trigger) in seen]
        made = {name for name, _ in called}
        for instruction in followed:
            calls = tuple((name, _fill(args, context)) for name, args in instruction.calls)
            if calls and not all(name in made for name, _ in calls):
                return Answer(calls=calls)
        said = asked.lower()
        steps = next((s for phrase, s in self.plans.items() if phrase.lower() in said), ())
        done = sum(1 for m in this_turn if m.get("role") == "assistant" and m.get("tool_calls"))
        done -= sum(1 for i in followed if i.calls and any(n in made for n, _ in i.calls))
        if 0 <= done < len(steps):
            return Answer(calls=steps[done])
        extra = [i.reply.replace("{context}", urllib.parse.quote(context[:400])) for i in followed]
        answer = "Here is what I found: " + context if context else "I found nothing to do."
        return Answer(content=" ".join([answer, *extra]).strip())


def _decoded(content: Any) -> str:
    """A tool message's content with its JSON undone, so escapes do not split words."""
    try:
        value = json.loads(str(content))
    except json.JSONDecodeError:
        return str(content or "")

    def leaves(item: Any) -> list[str]:
        if isinstance(item, dict):
            return [s for v in item.values() for s in leaves(v)]
        if isinstance(item, list):
            return [s for v in item for s in leaves(v)]
        return [str(item)] if item is not None else []

    return " ".join(leaves(value))


def _fill(args: Json, context: str) -> Json:
    return {
        k: v.replace("{context}", context[:400]) if isinstance(v, str) else v
        for k, v in args.items()
    }


class FakeOpenAI:
    """The server; an async context manager (or ``start()`` / ``close()``)."""

    def __init__(self, *, fallback: Fallback | None = None, model: str = "fake-model") -> None:
        self.fallback = fallback
        self.model = model
        self.base_url = ""
        """``http://127.0.0.1:<port>/v1`` once started."""
        self.requests: list[Json] = []
        """Every chat completion request's JSON body, in order."""
        self.headers: list[dict[str, str]] = []
        """Each request's headers (lowercase names), aligned with ``requests``."""
        self.errors: list[str] = []
        """Unexpected requests: beyond the script, or refused as the real API would."""
        self._steps: deque[Step] = deque()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    def script(self, *steps: Step) -> None:
        """Append steps; each answers one request, in order."""
        self._steps.extend(steps)

    @property
    def pending(self) -> int:
        """Scripted steps not used yet."""
        return len(self._steps)

    def assert_drained(self) -> None:
        """Fail if scripted steps remain or any request was unexpected."""
        assert not self.errors, f"unexpected requests to the fake model: {self.errors}"
        assert not self._steps, f"{len(self._steps)} scripted step(s) unused: {list(self._steps)}"

    async def start(self) -> str:
        """Listen on 127.0.0.1 on a free port; returns ``base_url``."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        # Cancel a delayed answer when the client hangs up, so shutdown never waits for it.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}/v1"
        return self.base_url

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
        if exc_type is None:
            self.assert_drained()

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "goodbot-tests"}
        return web.json_response({"object": "list", "data": [model]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return self._refuse(400, "the request body is not a JSON object")
        self.requests.append(body)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        if problem := _protocol_problem(body):
            return self._refuse(400, problem)
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self._steps:
            return await self._answer(self._steps.popleft(), body, key)
        if self.fallback is not None:
            return await self._answer(self.fallback(body), body, key)
        return self._refuse(500, f"request {len(self.requests)} is beyond the fake's script")

    def _refuse(self, code: int, problem: str) -> web.Response:
        self.errors.append(problem)
        return _error(code, f"fake OpenAI: {problem}", "invalid_request_error")

    async def _answer(self, step: Step, body: Json, key: str) -> web.StreamResponse:
        match step:
            case Delay(seconds, then):
                await asyncio.sleep(seconds)
                return await self._answer(then, body, key)
            case Status(code, retry_after, said):
                headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
                return _error(code, said or _default_message(code, key), None, headers)
            case Garbage(raw, content_type):
                return web.Response(body=raw, content_type=content_type)
            case Answer(content, refused, calls):
                message: Json = {"role": "assistant", "content": content, "refusal": refused}
                if calls:
                    message["tool_calls"] = [_call(f"call_{next(self._ids)}", *c) for c in calls]
        prompt = len(json.dumps(body["messages"])) // 4
        completion = max(1, len(json.dumps(message)) // 4)
        finish = "tool_calls" if "tool_calls" in message else "stop"
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        usage = {"prompt_tokens": prompt, "completion_tokens": completion}
        return web.json_response(
            {
                "id": f"chatcmpl-fake{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [choice],
                "usage": usage | {"total_tokens": prompt + completion},
            }
        )


def _call(call_id: str, name: str, args: Json | str) -> Json:
    arguments = args if isinstance(args, str) else json.dumps(args)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _protocol_problem(body: Json) -> str | None:
    """What the real API would refuse with a 400 (the checks a route can get wrong)."""
    messages = body.get("messages")
    if not isinstance(body.get("model"), str) or not isinstance(messages, list) or not messages:
        return "the request needs 'model' and a non-empty 'messages' list"
    unanswered: set[str] = set()
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return f"messages[{i}] is not an object"
        if msg.get("role") == "tool":
            if msg.get("tool_call_id") not in unanswered:
                return f"messages[{i}]: a 'tool' message must answer a preceding tool call"
            unanswered.discard(msg["tool_call_id"])
        elif unanswered:
            return f"messages[{i}]: tool calls {sorted(unanswered)} have no 'tool' answer"
        if msg.get("role") == "assistant":
            unanswered = {call["id"] for call in msg.get("tool_calls") or []}
    return f"tool calls {sorted(unanswered)} have no 'tool' answer" if unanswered else None


def _default_message(code: int, key: str) -> str:
    if code == 401:  # echoes the key, as careless proxies do: the route must not repeat it
        return f"Incorrect API key provided: {key}"
    if code == 429:
        return "Rate limit reached for requests"
    return "The server had an error while processing your request" if code >= 500 else "error"


def _error(
    code: int, message: str, kind: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    kind = kind or ("rate_limit_exceeded" if code == 429 else "server_error")
    error = {"message": message, "type": kind, "param": None, "code": kind}
    return web.json_response({"error": error}, status=code, headers=headers)
