"""Redaction of secrets and the message size and rate limits."""

from __future__ import annotations

import pytest

from policy.limits import RateLimiter, check_size
from policy.redact import redact

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbmEifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.mark.parametrize(
    ("text", "secret", "kind"),
    [
        (f"my token is {JWT} ok", JWT, "jwt"),
        ("Authorization: Bearer abcdefghijklmnop1234", "abcdefghijklmnop1234", "bearer"),
        ("key AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE", "aws_access_key"),
        ("slack xoxb-1234567890-abcdefghij", "xoxb-1234567890-abcdefghij", "slack_token"),
        ("gh ghp_" + "a" * 36, "ghp_" + "a" * 36, "github_token"),
        ("use gbt_" + "Z" * 43, "gbt_" + "Z" * 43, "goodbot_token"),
        ("OPENAI sk-proj-" + "x" * 30, "sk-proj-" + "x" * 30, "api_key"),
        ("db postgres://app:hunter22@db:5432/x", "hunter22", "url_password"),
        ("password: correct horse", "correct", "named_secret"),
        ('client_secret="s3cr3t value"', "s3cr3t value", "named_secret"),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA\n-----END OPENSSH PRIVATE KEY-----",
            "b3BlbnNzaA",
            "private_key",
        ),
    ],
)
def test_secrets_are_masked(text: str, secret: str, kind: str) -> None:
    out = redact(text)
    assert secret not in out.text
    assert kind in out.kinds
    assert f"[REDACTED:{kind}]" in out.text


def test_ordinary_requests_pass_unchanged() -> None:
    for text in (
        "promote firefox 131 to pilot",
        "what is waiting for my approval?",
        "why is mac-00017 non-compliant with policy org-baseline@3?",
        "book a CAB review with ana@contoso.example next Tuesday",
    ):
        out = redact(text)
        assert out.text == text and out.kinds == ()


def test_size_limit_names_the_limit() -> None:
    assert check_size("é" * 10, 20).allowed
    refused = check_size("é" * 11, 20)
    assert not refused.allowed and "limit is 20 bytes" in refused.reason


def test_rate_limit_refills() -> None:
    limiter = RateLimiter()
    assert all(limiter.take("ana", 3, 0.0).allowed for _ in range(3))
    refused = limiter.take("ana", 3, 0.0)
    assert not refused.allowed and "try again in 20 s" in refused.reason
    assert limiter.take("bob", 3, 0.0).allowed  # buckets are per principal
    assert limiter.take("ana", 3, 20.0).allowed
