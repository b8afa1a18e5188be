"""Redaction: secrets, tokens and keys are masked before text reaches a model, a log or audit.

Written by hand: the need is a fixed set of credential formats found in chat text, checked on
every message with little latency; scanners such as detect-secrets target files and commits.
Over-redaction is preferred to a leak, so key/value patterns mask any value named like a secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_PATTERNS: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    (
        "private_key",
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
            re.S,
        ),
    ),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")),
    ("bearer", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{16,}")),
    ("aws_access_key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("slack_token", re.compile(r"\bxox[abeoprs]-[A-Za-z0-9-]{10,}")),
    ("github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})")),
    ("goodbot_token", re.compile(r"\bgbt_[A-Za-z0-9_-]{20,}")),
    ("api_key", re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}")),
    (
        "url_password",
        re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)([^@\s/]+)(@)"),
    ),
    (
        "named_secret",
        re.compile(
            r"(?i)\b((?:password|passwd|pwd|secret|client[_-]?secret|api[_-]?key|access[_-]?key|"
            r"token|passphrase)\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|\S+)"
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class Redacted:
    """Text with its secrets masked."""

    text: str
    """The masked text; each secret is replaced by ``[REDACTED:<kind>]``."""
    kinds: tuple[str, ...]
    """What was found, one entry per masked secret (for the audit record, never the value)."""


def redact(text: str) -> Redacted:
    """Mask every secret the patterns recognize."""
    found: list[str] = []
    for kind, pattern in _PATTERNS:

        def mask(match: re.Match[str], kind: str = kind) -> str:
            found.append(kind)
            if kind == "url_password":
                return f"{match.group(1)}[REDACTED:{kind}]{match.group(3)}"
            if kind == "named_secret":
                return f"{match.group(1)}[REDACTED:{kind}]"
            return f"[REDACTED:{kind}]"

        text = pattern.sub(mask, text)
    return Redacted(text, tuple(found))
