"""Fuzzing the parsers that take outside input without a socket: the model's answers and tool
calls (``agent.openai_route``, the executor's argument parsing and every tool's schema), the
policy file (``policy.loader.parse``), the rules grammar and MIME mail (sender, thread, body,
loop guards, Authentication-Results). Each either parses or refuses with its documented error;
nothing else escapes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from agent.openai_route import _parse
from agent.route import CallTools, Reply, RouteOutputError, StepRequest, UserText
from agent.rules import RulesRoute
from agent.rules_grammar import RULES
from channels import email_parse, email_trust
from policy.loader import PolicyError, parse
from tests.security.fuzzing import JSON, fuzz_settings, shaped
from tools.builtin import default_registry, graph_tools
from tools.executor import _parse_arguments
from tools.registry import ArgumentsError

TOOLS = [*default_registry().all(), *graph_tools()]

_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "promote_rollout", "arguments": "{}"},
}
_COMPLETION = {
    "id": "x",
    "object": "chat.completion",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi", "tool_calls": [_CALL]}}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1},
}


def completions() -> st.SearchStrategy[bytes]:
    call = shaped({"id": "c", "function": shaped({"name": "promote_rollout", "arguments": "{}"})})
    message = shaped({"role": "assistant", "content": "hi", "refusal": None, "tool_calls": [_CALL]})
    message = message | st.builds(
        lambda calls, content: {"content": content, "tool_calls": calls},
        st.lists(call, max_size=12),
        st.none() | st.text(max_size=20),
    )
    choice = shaped({"index": 0, "message": message})
    body = shaped(
        {"choices": st.lists(choice, max_size=2), "usage": {"prompt_tokens": 1}}
    ) | st.builds(lambda choices: {**_COMPLETION, "choices": choices}, st.lists(choice, max_size=3))
    return body.map(lambda b: json.dumps(b).encode()) | st.binary(max_size=200)


@given(completions())
@fuzz_settings(300)
def test_a_model_answer_parses_or_is_refused(body: bytes) -> None:
    try:
        step, _ = _parse(body)
    except RouteOutputError as exc:
        refused: RouteOutputError | None = exc
    else:
        refused = None
        assert isinstance(step, Reply | CallTools)
    assert refused is None or refused.message


@given(
    st.sampled_from(TOOLS),
    st.text(max_size=80)
    | JSON.map(json.dumps)
    | st.dictionaries(st.text(max_size=12), JSON, max_size=5).map(json.dumps),
)
@fuzz_settings(300)
def test_tool_call_arguments_validate_or_are_refused(spec: Any, raw: str) -> None:
    try:
        arguments = spec.validate(_parse_arguments(raw))
    except (ArgumentsError, ValueError):
        return
    assert isinstance(arguments, dict)


_POLICY: dict[str, Any] = {
    "version": 1,
    "defaults": {"max_message_bytes": 8192, "rate_limit_per_minute": 30},
    "channels": {"cli": {}, "email": {"read_only": True}},
    "roles": {
        "operator": {"grants": ["rollout.read", {"action": "ring.pause", "scopes": ["scp_x"]}]}
    },
    "principals": {
        "ana": {"roles": ["operator"], "identities": [{"channel": "cli", "id": "sha256:ab"}]}
    },
}


def policies() -> st.SearchStrategy[str]:
    document = shaped(
        {
            "version": 1,
            "defaults": shaped(_POLICY["defaults"]),
            "channels": shaped(_POLICY["channels"]),
            "roles": shaped({"operator": shaped(_POLICY["roles"]["operator"])}),
            "principals": shaped({"ana": shaped(_POLICY["principals"]["ana"])}),
        }
    )
    return document.map(lambda d: yaml.safe_dump(d)) | st.text(max_size=200)


@given(policies())
@fuzz_settings(300)
def test_a_policy_file_loads_or_is_refused_naming_where(text: str) -> None:
    try:
        parse(text)
    except PolicyError as exc:
        refused: PolicyError | None = exc
    else:
        refused = None
    assert refused is None or (refused.where and refused.reason)


_WORDS = sorted(
    {w for rule in RULES for example in rule.examples for w in example.split()}
    | {"dev_000001", "apr_1", "mac-00001", "ring", "2", "'", "\u202e", "\x00", "…"}
)


@given(st.text(max_size=120) | st.lists(st.sampled_from(_WORDS), max_size=14).map(" ".join))
@fuzz_settings(400)
def test_the_rules_grammar_answers_any_text(text: str) -> None:
    route = RulesRoute()
    request = StepRequest([UserText(text)], TOOLS, "ana", 0)
    result = asyncio.run(route.next_step(request))
    assert result.step is not None


_HEADERS = [
    "Authentication-Results",
    "Received",
    "From",
    "Sender",
    "Reply-To",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Auto-Submitted",
    "Subject",
]
_VALUES = st.sampled_from(
    [
        "mx.example.com; dmarc=pass header.from=example.com",
        "mx.example.com; dkim=pass header.d=example.com (",
        '"ana@example.com" <mallory@attacker.example>',
        "ana@example.com, li@example.com",
        "=?utf-8?q?ana=40example=2Ecom?= <x@y>",
        "<a@b> <c@d",
        'multipart/mixed; boundary="b"',
        "text/html; charset=x-unknown",
        "base64",
        "quoted-printable",
        "",
    ]
) | st.text(max_size=40).map(lambda t: t.replace("\r", " ").replace("\n", " "))


def mails() -> st.SearchStrategy[bytes]:
    headers = st.lists(st.tuples(st.sampled_from(_HEADERS), _VALUES), max_size=10)
    body = st.sampled_from(["hello", "--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--", "=ZZ"])
    built = st.builds(
        lambda hs, b: ("\r\n".join(f"{k}: {v}" for k, v in hs) + "\r\n\r\n" + b).encode(),
        headers,
        body | st.text(max_size=80),
    )
    return built | st.binary(max_size=300)


@given(mails())
@fuzz_settings(300)
def test_a_mime_message_parses_to_a_sender_a_thread_and_a_body_or_none(raw: bytes) -> None:
    message = email_parse.parse(raw)
    found = email_parse.sender(message)
    assert found is None or "@" in found
    email_parse.thread(message, raw)
    email_parse.body(message)
    email_parse.loop_reason(message, "goodbot@example.com", frozenset({"goodbot@example.com"}))
    try:
        headers = message.items()  # parses every header with the modern policy
    except Exception:
        return  # the channel sets such a message aside, audited as email.unreadable
    email_trust.verify(headers, "example.com", ["mx.example.com"])
