"""Policy loading: errors name the key; an invalid new version leaves the old one in force."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from policy.loader import PolicyError, PolicySource, parse

GOOD = """
channels: {cli: {}}
roles: {viewer: {grants: [approval.read]}}
principals:
  ana: {roles: [viewer], identities: [{channel: cli, id: "sha256:aa"}]}
"""


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ("channels: {cli: {enabeld: true}}", "channels.cli.enabeld", "unknown key"),
        ("principals: {ana: {roles: [ghost]}}", "principals", "unknown role 'ghost'"),
        ("channels: {fax: {}}", "channels.fax", ""),
        ("roles: {r: {grants: [Approve]}}", "roles.r.grants.0", ""),
        ("principals: {a: {roles: [], identities: []}}", "principals.a.roles", ""),
        ("- just a list", "policy", "must be a mapping"),
        ("channels: {cli: {}\n", "policy:", "not valid YAML"),
        (
            "roles: {v: {grants: []}}\nprincipals:\n  a: {roles: [v], identities: "
            "[{channel: teams, id: nocolon}]}",
            "principals.a.identities.0",
            "<tenant or team>:<user id>",
        ),
        (
            "roles: {v: {grants: []}}\nprincipals:\n  a: {roles: [v], identities: "
            "[{channel: cli, id: 'sha256:x'}]}\n  b: {roles: [v], identities: "
            "[{channel: cli, id: 'sha256:x'}]}",
            "principals",
            "already belongs to a",
        ),
    ],
)
def test_errors_name_the_key(text: str, where: str, reason: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse(text)
    assert caught.value.where.startswith(where), caught.value
    assert reason in caught.value.reason


def test_reload_keeps_the_last_valid_version(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    source = PolicySource.load(path)
    first = source.current
    assert source.reload_if_changed() is False  # unchanged file: nothing to do

    path.write_text(GOOD.replace("viewer]", "ghost]"))
    os.utime(path, ns=(1, 2_000_000_000_000_000_000))
    assert source.reload_if_changed() is False
    assert source.current is first
    assert source.last_error is not None and "unknown role 'ghost'" in source.last_error.reason

    path.write_text(GOOD.replace("approval.read", "compliance.read"))
    os.utime(path, ns=(1, 3_000_000_000_000_000_000))
    assert source.reload_if_changed() is True
    assert source.last_error is None
    ana = source.current.principal("ana")
    assert source.current.decide(ana, "compliance.read", "cli").allowed
    assert not source.current.decide(ana, "approval.read", "cli").allowed
    assert source.current.revision != first.revision
