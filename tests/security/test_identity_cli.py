"""Forged identity on the CLI channel: wrong, revoked and brute-forced tokens.

Each is refused before anything is stored, and audited without letting an unauthenticated
caller fill the audit chain: the first failure of a source's window (``auth.refused``) and a
block (``auth.blocked``).
"""

from __future__ import annotations

import yaml

from tests.e2e.harness import GatewayUnderTest
from tests.security.conftest import audit_kinds, stored_messages

ASK = "what is pending my approval?"


async def test_wrong_tokens_are_refused_audited_and_nothing_is_stored(
    gw: GatewayUnderTest,
) -> None:
    mcp_token = (gw.data_dir / "mcp-tokens" / "ana").read_text().strip()
    forged = [
        "gbc_forged",
        gw.token("ana") + "x",
        gw.token("ana")[:-1],
        mcp_token,  # another channel's token for the same person
        "",
    ]
    for token in forged:
        turn = await gw.turn(None, ASK, token=token)
        assert turn.status == 401, token
    async with gw.http.get(f"{gw.url}/cli/v1/whoami", headers={"Authorization": "Basic YW5h"}) as r:
        assert r.status == 401
    assert await stored_messages(gw) == 0
    kinds = await audit_kinds(gw)
    assert kinds.count("auth.refused") == 1  # once per source and window
    assert "message.accepted" not in kinds


async def test_a_revoked_token_stops_working_at_once_for_turns_and_decisions(
    gw: GatewayUnderTest,
) -> None:
    turn = await gw.turn("ana", "promote google-chrome to pilot")
    pending = turn.confirmation["id"]
    old = gw.token("ana")
    policy_file = gw.data_dir / "policy.yaml"
    document = yaml.safe_load(policy_file.read_text())
    document["principals"]["ana"]["identities"] = [
        i for i in document["principals"]["ana"]["identities"] if i["channel"] != "cli"
    ]
    policy_file.write_text(yaml.safe_dump(document, sort_keys=False))
    assert gw.gateway.policy.reload_if_changed()
    before = await stored_messages(gw)
    assert (await gw.turn(None, ASK, token=old)).status == 401
    async with gw.http.post(
        f"{gw.url}/cli/v1/confirmations/{pending}",
        json={"decision": "confirm"},
        headers={"Authorization": f"Bearer {old}"},
    ) as r:
        assert r.status == 401
    assert await stored_messages(gw) == before
    found = await gw.gateway.store.confirmation(pending)
    assert found is not None and found.state == "pending"


async def test_brute_force_is_blocked_per_address_even_for_the_right_token(
    gw: GatewayUnderTest,
) -> None:
    now = [1000.0]
    gw.gateway.turns.clock = lambda: now[0]
    limiter = gw.gateway.turns.sign_in_failures
    for n in range(limiter.max_failures):
        assert (await gw.turn(None, ASK, token=f"guess-{n}")).status == 401
    blocked = await gw.turn("ana", ASK)  # the right token, from the same address
    assert blocked.status == 429
    assert int(blocked.headers["Retry-After"]) == int(limiter.block)
    status, _ = await gw.get("/cli/v1/whoami", "ana")
    assert status == 429
    assert await stored_messages(gw) == 0
    kinds = await audit_kinds(gw)
    assert (kinds.count("auth.refused"), kinds.count("auth.blocked")) == (1, 1)
    now[0] += limiter.block + 1
    assert (await gw.turn("ana", ASK)).status == 200
