"""Email translate-in: the new text, threading, loop markers and the confirmation codes."""

from __future__ import annotations

import pytest

from channels.email_codes import code_for, code_hash, decision_in, normalize
from channels.email_parse import (
    body,
    html_text,
    loop_reason,
    new_text,
    parse,
    reply_subject,
    sender,
    thread,
)

OWN = frozenset({"goodbot@example.com"})


def message(text: str, *headers: str, content_type: str = "text/plain; charset=utf-8") -> bytes:
    lines = ["From: Ana <Ana@Example.com>", "To: goodbot@example.com", "Subject: hello", *headers]
    lines += ["MIME-Version: 1.0", f"Content-Type: {content_type}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + text).encode()


def test_the_sender_is_the_one_lower_cased_from_address() -> None:
    assert sender(parse(message("x"))) == "ana@example.com"
    two = parse(b"From: a@example.com, b@example.com\r\n\r\nx")
    assert sender(two) is None
    assert sender(parse(b"Subject: no from\r\n\r\nx")) is None
    assert sender(parse(b"From: undisclosed-recipients:;\r\n\r\nx")) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "what is pending my approval?\n\nThanks,\nAna\n\n"
            "On Mon, 1 Dec 2026 at 10:00, goodbot <goodbot@example.com> wrote:\n> earlier\n",
            "what is pending my approval?",
        ),
        ("promote zoom to pilot\n\n-- \nAna Costa\nPlatform team\n", "promote zoom to pilot"),
        ("rollout status of zoom\n\nSent from my iPhone\n", "rollout status of zoom"),
        (
            "drift of web\n\n-----Original Message-----\nFrom: goodbot\nSent: Monday\n\nold\n",
            "drift of web",
        ),
        (
            "status please\n\nAm Mo., 1. Dez. 2026 um 10:00 Uhr schrieb goodbot "
            "<goodbot@example.com>:\n> alt\n",
            "status please",
        ),
        ("> quoted only first\nmy answer\n", "my answer"),
        ("- promote zoom\n- to pilot\n", "- promote zoom\n- to pilot"),
    ],
    ids=["gmail-quote", "sig-dashes", "mobile", "outlook", "german", "inline-quote", "lists"],
)
def test_only_the_new_text_is_kept(text: str, expected: str) -> None:
    assert new_text(text) == expected


def test_html_becomes_text_without_its_quoted_blocks() -> None:
    html = (
        "<html><head><style>p {color: red}</style></head><body><p>what is <b>pending</b></p>"
        "<p>my approval?</p><blockquote>old request</blockquote>"
        "<div id='divRplyFwdMsg'>From: goodbot</div></body></html>"
    )
    text = html_text(html)
    assert "pending" in text and "approval" in text
    assert "old request" not in text and "goodbot" not in text and "color" not in text


def test_a_plain_part_is_preferred_and_attachments_are_named() -> None:
    raw = message(
        "--B\r\nContent-Type: multipart/alternative; boundary=A\r\n\r\n"
        "--A\r\nContent-Type: text/plain\r\n\r\nplain words\r\n"
        "--A\r\nContent-Type: text/html\r\n\r\n<p>html words</p>\r\n--A--\r\n"
        "--B\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename=devices.csv"
        "\r\n\r\na,b\r\n"
        "--B\r\nContent-Type: image/png\r\n\r\nPNG\r\n--B--\r\n",
        content_type="multipart/mixed; boundary=B",
    )
    request = body(parse(raw))
    assert request.text == "plain words"
    assert request.attachments == ("devices.csv", "image/png")


def test_an_html_only_message_is_read() -> None:
    raw = message("<p>rollout status of <i>zoom</i></p>", content_type="text/html; charset=utf-8")
    assert body(parse(raw)).text == "rollout status of zoom"


def test_threading() -> None:
    raw = message("x", "Message-ID: <c@x>", "In-Reply-To: <b@x>", "References: <a@x> <b@x>")
    t = thread(parse(raw), raw)
    assert (t.message_id, t.in_reply_to, t.references, t.root) == (
        "<c@x>",
        "<b@x>",
        ("<a@x>", "<b@x>"),
        "<a@x>",
    )
    assert t.reply_references() == ["<a@x>", "<b@x>", "<c@x>"]
    first = message("x", "Message-ID: <a@x>")
    assert thread(parse(first), first).root == "<a@x>"
    anonymous = message("x")
    assert thread(parse(anonymous), anonymous).message_id.startswith("<sha256:")
    long = message(
        "x", "Message-ID: <z@x>", "References: " + " ".join(f"<{n}@x>" for n in range(40))
    )
    refs = thread(parse(long), long).reply_references()
    assert len(refs) == 20 and refs[0] == "<0@x>" and refs[-1] == "<z@x>"


def test_reply_subject() -> None:
    assert reply_subject("approvals") == "Re: approvals"
    assert reply_subject("RE: approvals") == "RE: approvals"
    assert reply_subject("") == "Re: your message to goodbot"


@pytest.mark.parametrize(
    ("headers", "address", "loop"),
    [
        ((), "ana@example.com", None),
        (("Auto-Submitted: no",), "ana@example.com", None),
        (("Auto-Submitted: auto-replied",), "ana@example.com", "Auto-Submitted"),
        (("Auto-Submitted: auto-generated; owner-email=x@y",), "ana@example.com", "Auto-Submitted"),
        (("Return-Path: <>",), "ana@example.com", "empty return path"),
        (("Precedence: list",), "ana@example.com", "Precedence"),
        (("Precedence: Bulk",), "ana@example.com", "Precedence"),
        (("List-Id: <ops.lists.example.com>",), "ana@example.com", "List-Id"),
        (("X-Auto-Response-Suppress: All",), "ana@example.com", "Suppress"),
        ((), "MAILER-DAEMON@example.com".lower(), "mailer-daemon"),
        ((), "goodbot@example.com", "own address"),
        ((), "ops-request@example.com", "list robot"),
    ],
)
def test_loop_markers(headers: tuple[str, ...], address: str, loop: str | None) -> None:
    found = loop_reason(parse(message("x", *headers)), address, OWN)
    if loop is None:
        assert found is None
    else:
        assert found is not None and loop in found


def test_a_delivery_report_is_a_bounce() -> None:
    raw = message(
        "--R\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--R--\r\n",
        content_type="multipart/report; report-type=delivery-status; boundary=R",
    )
    assert loop_reason(parse(raw), "ana@example.com", OWN) == "a delivery or disposition report"


def test_codes_are_bound_stable_and_stored_only_hashed() -> None:
    secret = b"k" * 32
    code = code_for(secret, "cf_1", "ana", "ana@example.com")
    assert code == code_for(secret, "cf_1", "ana", "ana@example.com")  # a resend repeats it
    assert len(code) == 14 and code.count("-") == 2
    others = {
        code_for(secret, "cf_2", "ana", "ana@example.com"),
        code_for(secret, "cf_1", "sam", "ana@example.com"),
        code_for(secret, "cf_1", "ana", "other@example.com"),
        code_for(b"j" * 32, "cf_1", "ana", "ana@example.com"),
    }
    assert code not in others and len(others) == 4
    assert code_hash(code) == code_hash(code.lower().replace("-", ""))
    assert normalize("o1il-0000-0000") == "0111" + "0" * 8


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("CONFIRM 7KQ2-9XD4-M3PA", ("confirm", "7KQ29XD4M3PA")),
        ("confirm: 7kq29xd4m3pa\nthanks", ("confirm", "7kq29xd4m3pa")),
        ("  DENY 7KQ2-9XD4-M3PA please", ("deny", "7KQ29XD4M3PA")),
        ("I confirm 7KQ2-9XD4-M3PA", None),
        ("CONFIRM 7KQ2-9XD4", None),
        ("confirmation needed", None),
    ],
)
def test_decisions(text: str, found: tuple[str, str] | None) -> None:
    assert decision_in(text) == found
