"""Email channel, confirmations: the single-use code in a reply, and reading it back (channels).

A proposed change is confirmed by replying ``CONFIRM 7KQ2-9XD4-M3PA`` (or ``DENY …``). The code
is 60 bits in Crockford's base 32, derived with HMAC-SHA256 from the channel's secret, the
confirmation id, the principal and the address it is sent to; so a reply that has to be sent
again after a crash carries the same code, and the store keeps only its sha256
(``sessions.mail``). The store spends a code once, and only for mail verified as from that
address and resolved to that principal.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final, Literal

ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
"""Crockford's base 32: no I, L, O or U, so a code survives being read aloud or retyped."""
LENGTH: Final = 12
"""Characters in a code: 60 bits."""
_CONFUSABLE: Final = str.maketrans({"O": "0", "I": "1", "L": "1"})
_DECISION: Final = re.compile(
    r"^\s*\**\s*(confirm|deny)\s*:?\s+([0-9A-Za-z]{4})-?([0-9A-Za-z]{4})-?([0-9A-Za-z]{4})\b",
    re.I,
)


def code_for(secret: bytes, confirmation_id: str, principal: str, address: str) -> str:
    """The code for a confirmation sent to ``address``, as ``XXXX-XXXX-XXXX``."""
    message = f"{confirmation_id}\n{principal}\n{address}".encode()
    number = int.from_bytes(hmac.new(secret, message, hashlib.sha256).digest()[:8], "big")
    number >>= 64 - 5 * LENGTH
    chars = [ALPHABET[(number >> (5 * i)) & 31] for i in reversed(range(LENGTH))]
    return "-".join("".join(chars[i : i + 4]) for i in range(0, LENGTH, 4))


def normalize(code: str) -> str:
    """A code as typed → its canonical characters (upper case, no dashes, 0/1 for O/I/L)."""
    return code.replace("-", "").replace(" ", "").upper().translate(_CONFUSABLE)


def code_hash(code: str) -> str:
    """What the store keeps of a code: sha256 hex of its canonical form."""
    return hashlib.sha256(normalize(code).encode()).hexdigest()


def decision_in(text: str) -> tuple[Literal["confirm", "deny"], str] | None:
    """``("confirm" | "deny", code)`` when the new text starts with a decision, else None."""
    found = _DECISION.match(text)
    if found is None:
        return None
    verb: Literal["confirm", "deny"] = "confirm" if found.group(1).lower() == "confirm" else "deny"
    return verb, "".join(found.group(2, 3, 4))
