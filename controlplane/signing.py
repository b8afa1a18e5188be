"""Control plane signing: Ed25519 over RFC 8785 canonical JSON, for bundles and snapshots.

``verify_document`` depends only on ``cryptography`` and ``rfc8785`` so an endpoint agent can
use it offline with the public keys from ``GET /api/v1/signing-keys``.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "Ed25519"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical(document: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON document: what every signature and digest covers."""
    return rfc8785.dumps(document)


def digest(document: Any) -> str:
    """sha256 hex of the canonical form."""
    return hashlib.sha256(canonical(document)).hexdigest()


def key_id_for(public: Ed25519PublicKey) -> str:
    """A stable key id: the first 16 hex digits of sha256 over the raw public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def public_key_text(public: Ed25519PublicKey) -> str:
    return b64u(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def load_public_key(text: str) -> Ed25519PublicKey:
    """Parse a base64url raw Ed25519 public key; ValueError when it is not one."""
    raw = unb64u(text)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True)
class Signer:
    """The control plane's own signing key."""

    private: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return key_id_for(self.private.public_key())

    @property
    def public_text(self) -> str:
        return public_key_text(self.private.public_key())

    def sign(self, document: Any) -> str:
        """Base64url Ed25519 signature over the canonical JSON of ``document``."""
        return b64u(self.private.sign(canonical(document)))

    @classmethod
    def load_or_create(cls, path: Path) -> Signer:
        """Read the PEM key at ``path``, creating it (mode 0600) on first start."""
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path} does not hold an Ed25519 private key")
            return cls(key)
        key = Ed25519PrivateKey.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.touch(mode=0o600)
        path.write_bytes(pem)
        return cls(key)


def verify_signature(document: Any, signature: str, public: Ed25519PublicKey) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of the canonical ``document``."""
    try:
        public.verify(unb64u(signature), canonical(document))
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_document(signed: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    """Verify a ``{"document", "signature": {"alg", "key_id", "value"}}`` envelope.

    Args:
        signed: the envelope as served by the control plane.
        keys: trusted public keys, key id → base64url raw key.

    Returns:
        The verified document.

    Raises:
        ValueError: unknown key, wrong algorithm, malformed envelope or bad signature.
    """
    try:
        document = signed["document"]
        sig = signed["signature"]
        alg, key_id, value = sig["alg"], sig["key_id"], sig["value"]
    except (KeyError, TypeError):
        raise ValueError("not a signed envelope") from None
    if alg != ALGORITHM:
        raise ValueError(f"unsupported algorithm {alg!r}")
    if key_id not in keys:
        raise ValueError(f"unknown key id {key_id!r}")
    if not verify_signature(document, value, load_public_key(keys[key_id])):
        raise ValueError("signature does not verify")
    if not isinstance(document, dict):
        raise ValueError("signed document is not an object")
    return document
