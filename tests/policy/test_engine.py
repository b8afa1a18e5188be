"""Policy decisions as a table: roles, channel and scope narrowing, read-only channels."""

from __future__ import annotations

import pytest

from policy.engine import Policy, PrincipalRef
from policy.loader import parse

POLICY = """
version: 1
defaults: {max_message_bytes: 4000, rate_limit_per_minute: 20}
channels:
  cli: {}
  teams: {}
  email: {read_only: true, max_message_bytes: 20000}
  slack: {enabled: false}
roles:
  viewer:
    grants: [approval.read, compliance.read, rollout.read]
  approver:
    grants: [approval.decide]
  operator:
    grants:
      - rollout.read
      - {action: ring.promote, channels: [cli, teams]}
      - {action: ring.pause, scopes: [scp_eng]}
principals:
  ana:
    roles: [viewer, approver]
    identities:
      - {channel: teams, id: "tenant-1:oid-ana"}
      - {channel: email, id: ana@contoso.example}
  omar:
    roles: [operator]
    control_plane_principal: omar.k
    identities:
      - {channel: cli, id: "sha256:abc123"}
  vera:
    roles: [viewer]
"""

# principal, action, channel, scope path, allowed, deciding rule
TABLE = [
    ("ana", "approval.read", "teams", (), True, "roles.viewer.grants[0]"),
    ("ana", "approval.decide", "teams", (), True, "roles.approver.grants[0]"),
    ("ana", "approval.decide", "email", (), False, "channels.email.read_only"),
    ("ana", "approval.read", "email", (), True, "roles.viewer.grants[0]"),
    ("ana", "ring.promote", "teams", (), False, "default:deny"),  # no rule grants it: deny
    ("omar", "ring.promote", "cli", (), True, "roles.operator.grants[1]"),
    ("omar", "ring.promote", "email", (), False, "channels.email.read_only"),
    ("omar", "ring.promote", "mcp", (), False, "default:deny"),  # channel not listed
    (
        "omar",
        "ring.pause",
        "cli",
        ("scp_org", "scp_eng", "scp_web"),
        True,
        "roles.operator.grants[2]",
    ),
    ("omar", "ring.pause", "cli", ("scp_org", "scp_fin"), False, "default:deny"),
    ("omar", "ring.pause", "cli", (), False, "default:deny"),
    ("vera", "approval.read", "slack", (), False, "channels.slack"),
    ("vera", "calendar.book", "cli", (), False, "default:deny"),
    (None, "approval.read", "cli", (), False, "default:unknown-sender"),
]


@pytest.fixture(scope="module")
def policy() -> Policy:
    return parse(POLICY)


@pytest.mark.parametrize(("who", "action", "channel", "path", "allowed", "rule"), TABLE)
def test_decision_table(
    policy: Policy,
    who: str | None,
    action: str,
    channel: str,
    path: tuple[str, ...],
    allowed: bool,
    rule: str,
) -> None:
    principal = None if who is None else policy.principal(who)
    decision = policy.decide(principal, action, channel, path)  # type: ignore[arg-type]
    assert (decision.allowed, decision.rule) == (allowed, rule), decision.reason
    assert decision.reason


def test_narrowed_grant_says_why(policy: Policy) -> None:
    omar = policy.principal("omar")
    decision = policy.decide(omar, "ring.promote", "teams")
    assert decision.allowed
    assert policy.principal("omar") == PrincipalRef("omar", ("operator",), "omar.k")
    refused = policy.decide(omar, "ring.pause", "cli", ("scp_org", "scp_fin"))
    assert "only inside scopes scp_eng" in refused.reason


def test_identities_resolve_only_exactly(policy: Policy) -> None:
    assert policy.resolve("teams", "tenant-1:oid-ana") == policy.principal("ana")
    assert policy.resolve("teams", "tenant-2:oid-ana") is None  # same user, another tenant
    assert policy.resolve("email", "ana@contoso.example") is not None
    assert policy.resolve("slack", "tenant-1:oid-ana") is None  # identities are per channel
    assert policy.resolve("cli", "sha256:abc123") == policy.principal("omar")


def test_limits_and_offered_actions(policy: Policy) -> None:
    assert policy.max_message_bytes("email") == 20000
    assert policy.max_message_bytes("cli") == 4000
    assert policy.rate_per_minute("ana") == 20
    ana = policy.principal("ana")
    assert ana is not None
    assert policy.granted_actions(ana, "email") == {
        "approval.read",
        "compliance.read",
        "rollout.read",
    }
    assert "approval.decide" in policy.granted_actions(ana, "teams")


def test_an_email_domain_stands_for_its_unlisted_addresses() -> None:
    domain = parse(
        POLICY.replace(
            "  vera:\n    roles: [viewer]\n",
            "  vera:\n    roles: [viewer]\n    identities:\n"
            "      - {channel: email, id: '@contoso.example'}\n",
        )
    )
    assert domain.resolve("email", "ana@contoso.example").name == "ana"  # type: ignore[union-attr]
    assert domain.resolve("email", "li@contoso.example").name == "vera"  # type: ignore[union-attr]
    assert domain.resolve("email", "li@other.example") is None
    assert domain.resolve("email", "li@sub.contoso.example") is None  # no subdomains
    assert domain.resolve("teams", "li@contoso.example") is None
    assert domain.resolve("email", "@contoso.example") is None  # not an address itself


@pytest.mark.parametrize("bad", ["Ana@contoso.example", "ana", "ana@", "a@b@c"])
def test_email_identities_are_lower_case_addresses_or_domains(bad: str) -> None:
    from policy.loader import PolicyError

    with pytest.raises(PolicyError, match="lower-case address or @domain"):
        parse(POLICY.replace("ana@contoso.example", bad))
