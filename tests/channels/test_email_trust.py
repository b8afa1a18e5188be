"""Email sender trust: RFC 8601 parsing, which headers count, DMARC and aligned DKIM."""

from __future__ import annotations

import pytest

from channels.email_parse import parse
from channels.email_trust import aligned, parse_header, trusted_headers, verify

MX = "mx.example.com"


def headers(*lines: str) -> list[tuple[str, str]]:
    raw = "\r\n".join(lines) + "\r\nFrom: ana@example.com\r\nSubject: x\r\n\r\nbody\r\n"
    return [(k, str(v)) for k, v in parse(raw.encode()).items()]


def test_the_rfc_8601_examples_parse() -> None:
    parsed = parse_header(
        "example.com; (comment; with a semicolon) dkim=pass (good signature)"
        ' reason="a; b" header.d=example.net header.b=abc; spf=fail'
        " smtp.mailfrom=x@example.org; dmarc=pass (p=none dis=none) header.from=example.net"
    )
    assert parsed is not None
    assert parsed.authserv_id == "example.com"
    assert [(r.method, r.result) for r in parsed.results] == [
        ("dkim", "pass"),
        ("spf", "fail"),
        ("dmarc", "pass"),
    ]
    assert parsed.results[0].properties == {"header.d": "example.net", "header.b": "abc"}
    assert parsed.results[2].properties == {"header.from": "example.net"}


def test_a_version_a_quoted_authserv_id_and_none() -> None:
    parsed = parse_header('"mx.example.com" 1; none')
    assert parsed is not None and parsed.authserv_id == "mx.example.com"
    assert parsed.results == ()
    folded = parse_header("mx.example.com;\r\n\tdkim = pass\r\n\theader . d = example.com")
    assert folded is not None and folded.results[0].properties["header.d"] == "example.com"


def test_garbage_proves_nothing() -> None:
    assert parse_header("   ") is None
    parsed = parse_header("mx.example.com; dmarc")
    assert parsed is not None and parsed.results == ()


@pytest.mark.parametrize(
    ("lines", "trusted", "rule"),
    [
        (
            [f"Authentication-Results: {MX}; dmarc=pass header.from=example.com"],
            True,
            "email.dmarc",
        ),
        (
            [f"Authentication-Results: {MX}; dkim=pass header.d=example.com"],
            True,
            "email.dkim_aligned",
        ),
        (
            [f"Authentication-Results: {MX}; dkim=pass header.i=@example.com"],
            True,
            "email.dkim_aligned",
        ),
        ([f"Authentication-Results: {MX}; dkim=pass header.d=mail.example.com"], False, None),
        ([f"Authentication-Results: {MX}; dkim=pass header.d=com"], False, None),
        ([f"Authentication-Results: {MX}; dkim=pass header.d=notexample.com"], False, None),
        ([f"Authentication-Results: {MX}; dmarc=pass header.from=other.example"], False, None),
        ([f"Authentication-Results: {MX}; spf=pass smtp.mailfrom=example.com"], False, None),
        ([f"Authentication-Results: {MX}; dmarc=fail header.from=example.com"], False, None),
        (["Authentication-Results: evil.example; dmarc=pass header.from=example.com"], False, None),
        ([], False, "email.untrusted"),
    ],
    ids=[
        "dmarc-pass",
        "dkim-aligned",
        "dkim-identity",
        "dkim-subdomain-of-from-is-not-a-parent",
        "dkim-one-label",
        "dkim-lookalike",
        "dmarc-other-domain",
        "spf-alone",
        "dmarc-fail",
        "other-server",
        "none",
    ],
)
def test_verdicts(lines: list[str], trusted: bool, rule: str | None) -> None:
    verdict = verify(headers(*lines), "example.com", [MX])
    assert verdict.trusted is trusted, verdict
    if rule is not None:
        assert verdict.rule == rule


def test_a_subdomain_sender_aligns_with_its_parent_signature() -> None:
    lines = [f"Authentication-Results: {MX}; dkim=pass header.d=example.com"]
    assert verify(headers(*lines), "eu.example.com", [MX]).trusted
    assert aligned("example.com", "eu.example.com")
    assert not aligned("eu.example.com", "example.com")


def test_only_the_top_most_group_of_the_trusted_server_counts() -> None:
    forged_below = headers(
        f"Authentication-Results: {MX}; dmarc=fail header.from=example.com",
        "Received: from attacker by mx.example.com",
        f"Authentication-Results: {MX}; dmarc=pass header.from=example.com",
    )
    assert not verify(forged_below, "example.com", [MX]).trusted
    # Two headers of the receiving server next to each other (one per milter) both count.
    pair = headers(
        f"Authentication-Results: {MX}; dkim=fail header.d=example.com",
        f"Authentication-Results: {MX}; dmarc=pass header.from=example.com",
        "Received: from mail.example.com by mx.example.com",
    )
    assert verify(pair, "example.com", [MX]).trusted
    # A header of another server in between ends the group.
    interrupted = headers(
        f"Authentication-Results: {MX}; dkim=fail header.d=example.com",
        "Authentication-Results: relay.example.org; dmarc=pass header.from=example.com",
        f"Authentication-Results: {MX}; dmarc=pass header.from=example.com",
    )
    assert not verify(interrupted, "example.com", [MX]).trusted
    # An internal hop's headers above the receiving server's are skipped, not trusted.
    internal_above = headers(
        "Authentication-Results: internal.example.com; dmarc=pass header.from=example.com",
        "Received: from mx.example.com by internal.example.com",
        f"Authentication-Results: {MX}; dmarc=pass header.from=example.com",
    )
    assert [h.authserv_id for h in trusted_headers(internal_above, [MX])] == [MX]


def test_the_authserv_id_is_compared_without_case() -> None:
    lines = ["Authentication-Results: MX.Example.COM; dmarc=pass header.from=Example.com"]
    assert verify(headers(*lines), "example.com", [MX]).trusted


def test_nothing_is_trusted_without_a_configured_server() -> None:
    lines = [f"Authentication-Results: {MX}; dmarc=pass header.from=example.com"]
    assert not verify(headers(*lines), "example.com", []).trusted
