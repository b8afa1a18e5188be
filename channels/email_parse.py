"""Email channel, translate-in: raw mail → sender, thread, loop markers and the new text (channels).

Parsing is the standard library's (``email`` with ``policy.default``). The request is only what
the person newly wrote: an HTML-only body becomes text with inscriptis (after the quoted
``blockquote`` / Gmail / Outlook reply blocks are dropped), then mail-parser-reply cuts the
quoted reply ("On … wrote:", "From: … Sent: …" and the like, in several languages) and the
signature, and lines quoted with ``>`` go too. Attachments are never read; their names are
returned so the reply can say they were ignored.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from email import policy
from email.errors import MessageError
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, Final

import lxml.html
from inscriptis import get_text
from mailparser_reply import EmailMessage as ReplyText

LANGUAGES: Final = ["en", "de", "fr", "es", "it", "nl", "pl", "sv", "da"]
"""Languages whose reply headers ("On … wrote:") and signatures are recognised."""
_MSGID: Final = re.compile(r"<[^<>\s]+>")
_QUOTED_HTML: Final = (
    "//blockquote"
    " | //div[contains(concat(' ', normalize-space(@class), ' '), ' gmail_quote ')]"
    " | //*[@id='divRplyFwdMsg'] | //*[@id='appendonsend']"
)
_BULK: Final = frozenset({"bulk", "list", "junk"})
_SUPPRESS: Final = re.compile(r"\b(all|autoreply|oof)\b", re.I)


@dataclass(frozen=True, slots=True)
class Thread:
    """Where a message sits in its thread."""

    message_id: str
    """Its Message-ID with angle brackets, or ``<sha256:…@goodbot>`` of the raw mail when absent."""
    in_reply_to: str | None
    references: tuple[str, ...]
    """The References ids, oldest first."""

    @property
    def root(self) -> str:
        """The thread's first message: the conversation the gateway keeps for it."""
        if self.references:
            return self.references[0]
        return self.in_reply_to or self.message_id

    def reply_references(self, keep: int = 20) -> list[str]:
        """The reply's References: this thread's ids, this message last (RFC 5322 3.6.4)."""
        chain = list(self.references) or ([self.in_reply_to] if self.in_reply_to else [])
        chain.append(self.message_id)
        # Keep the root and the newest ones; long threads would otherwise grow without bound.
        return chain if len(chain) <= keep else [chain[0], *chain[-(keep - 1) :]]


@dataclass(frozen=True, slots=True)
class Body:
    """The request in a message."""

    text: str
    """The new text, quotes and signature removed."""
    attachments: tuple[str, ...]
    """Names (or types) of the parts that were ignored."""


def parse(raw: bytes) -> EmailMessage:
    """The message as the standard library's modern ``EmailMessage``."""
    parsed: EmailMessage = BytesParser(policy=policy.default).parsebytes(raw)
    return parsed


def sender(message: EmailMessage) -> str | None:
    """The lower-cased From address, or None unless From names exactly one mailbox."""
    try:
        header: Any = message.get("From")
        addresses: tuple[Address, ...] = tuple(getattr(header, "addresses", ()) or ())
        # get_all parses every From again; a malformed one raises here too (found by fuzzing).
        count = len(message.get_all("From") or [])
    except (ValueError, TypeError, IndexError, MessageError):
        return None
    if count != 1 or len(addresses) != 1:
        return None
    address = addresses[0]
    if not address.username or not address.domain:
        return None
    return f"{address.username}@{address.domain}".lower()


def thread(message: EmailMessage, raw: bytes) -> Thread:
    """The message's Message-ID, In-Reply-To and References."""
    own = _MSGID.findall(str(message.get("Message-ID") or ""))
    message_id = own[0] if own else f"<sha256:{hashlib.sha256(raw).hexdigest()[:40]}@goodbot>"
    parent = _MSGID.findall(str(message.get("In-Reply-To") or ""))
    references = tuple(_MSGID.findall(str(message.get("References") or "")))
    return Thread(message_id, parent[0] if parent else None, references)


def reply_subject(subject: str) -> str:
    """``Re: <subject>``, without stacking prefixes."""
    clean = " ".join(subject.split())
    if re.match(r"^(re|aw|sv|antw)\s*:", clean, re.I):
        return clean
    return f"Re: {clean}" if clean else "Re: your message to goodbot"


def loop_reason(message: EmailMessage, address: str, own: frozenset[str]) -> str | None:
    """Why answering this message could start a mail loop, or None when it is safe.

    Automatic mail (RFC 3834 ``Auto-Submitted`` other than ``no``), bounces (an empty return
    path, MAILER-DAEMON, delivery reports), list and bulk mail, Exchange's suppression header
    and goodbot's own addresses are never answered.
    """
    auto = str(message.get("Auto-Submitted") or "").split(";")[0].strip().lower()
    if auto and auto != "no":
        return f"Auto-Submitted: {auto}"
    return_path = message.get("Return-Path")
    if return_path is not None and str(return_path).strip() in ("", "<>"):
        return "a bounce (empty return path)"
    local = address.split("@", 1)[0]
    if local in ("mailer-daemon", "postmaster") or local.startswith("owner-"):
        return f"a bounce or list robot ({local})"
    if local.endswith("-request"):
        return f"a list robot ({local})"
    if message.get_content_type() == "multipart/report":
        return "a delivery or disposition report"
    if address in own:
        return "mail from goodbot's own address"
    precedence = str(message.get("Precedence") or "").strip().lower()
    if precedence in _BULK:
        return f"Precedence: {precedence}"
    if message.get("List-Id") is not None:
        return "mailing-list mail (List-Id)"
    suppress = str(message.get("X-Auto-Response-Suppress") or "")
    if _SUPPRESS.search(suppress):
        return f"X-Auto-Response-Suppress: {suppress.strip()}"
    return None


def html_text(html: str) -> str:
    """Visible text of an HTML body, quoted reply blocks left out."""
    try:
        tree = lxml.html.document_fromstring(html)
    except (ValueError, lxml.etree.ParserError):
        return ""
    for quoted in tree.xpath(_QUOTED_HTML):
        if quoted.getparent() is not None:
            quoted.drop_tree()
    return str(get_text(lxml.html.tostring(tree, encoding="unicode")))


def new_text(text: str) -> str:
    """Only what was newly written: no quoted reply, no signature, no ``>`` lines."""
    parsed = ReplyText(text=text, languages=list(LANGUAGES), keep_hyphen_lists=True).read()
    latest = parsed.replies[0].body if parsed.replies else ""
    lines = [line.rstrip() for line in latest.splitlines() if not line.lstrip().startswith(">")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def body(message: EmailMessage) -> Body:
    """The request in ``message``: its plain text (or HTML as text), new text only."""
    part = message.get_body(preferencelist=("plain", "html"))
    text = ""
    if part is not None:
        try:
            content = part.get_content()
        except (LookupError, ValueError):  # unknown charset, broken encoding
            content = ""
        if isinstance(content, str):
            text = html_text(content) if part.get_content_subtype() == "html" else content
    ignored = [
        p.get_filename() or p.get_content_type()
        for p in message.walk()
        if p is not part
        and not p.is_multipart()
        and (p.is_attachment() or p.get_content_maintype() != "text")
    ]
    return Body(new_text(text), tuple(ignored))
