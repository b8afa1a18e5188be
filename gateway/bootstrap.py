"""First start without configuration: a policy file, CLI and MCP tokens for the demo (gateway).

Written once into the data directory and never overwritten, so an operator's edits stay. Each
demo principal of the embedded control plane gets a gateway principal with roles that mirror
its control-plane duties, a CLI token and a separate MCP token (each stored only as its sha256
in the policy file, and in full in ``cli-tokens/<name>`` and ``mcp-tokens/<name>``, mode
0600), so the token an MCP client's configuration holds is not the one ``goodbot chat`` uses
and each can be revoked alone. ``cli-token`` and ``mcp-token`` are the local user's: ana, the
platform admin and CAB approver, so a first chat can ask, approve and promote.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Any, Final

import yaml

LOCAL_USER: Final = "ana"
"""The demo principal the local CLI token belongs to."""

READS: Final = ["compliance.read", "drift.read", "rollout.read", "risk.read"]
ROLES: Final[dict[str, list[str]]] = {
    "viewer": READS,
    "operator": [*READS, "ring.promote", "ring.pause", "ring.resume", "ring.rollback"],
    "approver": ["approval.read", "approval.decide"],
    "auditor": [*READS, "events.read"],
    # Calendars over Microsoft Graph (offered only with a graph section or --demo-graph): book
    # meetings as oneself, with attendees in graph.allowed_domains.
    "scheduler": ["calendar.read", "calendar.book"],
}
PRINCIPALS: Final[dict[str, list[str]]] = {
    "ana": ["operator", "approver", "auditor", "scheduler"],
    "li": ["approver", "auditor", "scheduler"],
    "sam": ["operator", "scheduler"],
    "priya": ["operator", "scheduler"],
    "omar": ["viewer"],
    "vera": ["viewer"],
    "aud": ["auditor"],
    "sara": ["viewer"],
}


def token_identity(token: str) -> str:
    """The policy identity of a CLI token."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def write_secret(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")


def demo_policy(data_dir: Path) -> Path:
    """Write the demo policy, CLI and MCP tokens unless a policy file is already there."""
    path = data_dir / "policy.yaml"
    if path.exists():
        return path
    principals: dict[str, Any] = {}
    for name, roles in PRINCIPALS.items():
        identities = []
        for channel, prefix in (("cli", "gbc_"), ("mcp", "gbm_")):
            token = prefix + secrets.token_urlsafe(32)
            write_secret(data_dir / f"{channel}-tokens" / name, token)
            if name == LOCAL_USER:
                write_secret(data_dir / f"{channel}-token", token)
            identities.append({"channel": channel, "id": token_identity(token)})
        principals[name] = {"roles": roles, "identities": identities}
    document = {
        "version": 1,
        "defaults": {"max_message_bytes": 8192, "rate_limit_per_minute": 60},
        "channels": {"cli": {}, "mcp": {}},
        "roles": {name: {"grants": grants} for name, grants in ROLES.items()},
        "principals": principals,
    }
    header = (
        "# goodbot policy, written at first start for the demo. Deny by default: a channel,\n"
        "# principal or action not listed here is refused. Edits take effect within seconds;\n"
        "# an invalid edit is refused and the previous version stays in force.\n"
    )
    path.write_text(header + yaml.safe_dump(document, sort_keys=False))
    return path
