"""Sessions, beside the request path: canonical JSON and hashes shared by confirmations and audit.

A confirmation is bound to the hash of its arguments and an audit record to the hash of its
fields; both hash RFC 8785 (JCS) bytes, so any client can recompute them from exported JSON.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import rfc8785

GENESIS: Final = "0" * 64
"""The predecessor hash of the first audit record."""


def to_json(value: Any) -> Any:
    """``value`` as it reads back from a JSON column: tuples become lists, and so on.

    Hashing the round-tripped form means a hash computed now matches one recomputed later
    from the stored row.

    Raises:
        TypeError: ``value`` is not JSON-serializable (orjson's error, re-raised).
    """
    try:
        return orjson.loads(orjson.dumps(value))
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"not JSON-serializable: {exc}") from exc


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON value: what every digest in this package covers."""
    return rfc8785.dumps(value)


def sha256_hex(data: bytes) -> str:
    """Lower-case hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def arguments_hash(arguments: Any) -> str:
    """sha256 hex over the canonical JSON of a tool call's arguments.

    A channel shows the arguments and echoes this hash back on confirm, so a confirmation is
    only honoured for exactly the arguments the person saw.
    """
    return sha256_hex(canonical(to_json(arguments)))


def iso(moment: datetime) -> str:
    """UTC ISO 8601 with microseconds, the form timestamps take inside hashed documents."""
    # Normalized to UTC because that is how the column reads back on both databases; a
    # caller's +02:00 timestamp would otherwise hash differently from its stored form.
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
