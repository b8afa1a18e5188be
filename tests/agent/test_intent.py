"""The intent gate: a route may propose only the kind of change the person asked for."""

from __future__ import annotations

import pytest

from agent.intent import unasked


@pytest.mark.parametrize(
    ("action", "arguments", "asked", "allowed"),
    [
        ("ring.promote", {"app": "google-chrome"}, "promote chrome to pilot", True),
        ("ring.promote", {"app": "google-chrome"}, "push google-chrome to the next ring", True),
        ("ring.promote", {"app": "crowdstrike-falcon"}, "promote chrome to pilot", False),
        ("ring.promote", '{"app": "google-chrome"}', "what is pending my approval?", False),
        ("ring.pause", {"app": "firefox"}, "how is firefox doing?\nok, pause it", True),
        ("ring.pause", {"app": "firefox"}, "how is firefox doing?", False),
        ("ring.rollback", {"app": "zoom"}, "roll back zoom 6.2", True),
        ("approval.decide", {"approval_id": "apr_1"}, "approve apr_1", True),
        ("approval.decide", {"approval_id": "apr_1"}, "what is pending my approval?", False),
        ("approval.decide", {"approval_id": "apr_1"}, "deny the zoom request", True),
        ("calendar.book", {}, "book a CAB review with li next tuesday", True),
        ("calendar.book", {}, "when is li free?", False),
        ("something.new", {}, "hello", True),  # not gated
        ("ring.promote", "{not json", "promote it", True),  # the executor refuses it
    ],
)
def test_the_person_must_ask_for_the_change(
    action: str, arguments: dict[str, str] | str, asked: str, allowed: bool
) -> None:
    assert (unasked(action, arguments, asked) is None) is allowed
