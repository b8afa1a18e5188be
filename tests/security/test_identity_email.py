"""Forged identity by email, beyond ``tests/e2e/test_email.py`` (DMARC failing, no or an
untrusted server's Authentication-Results, DKIM of another domain): a passing result forged
below the trusted server's own, and display-name tricks. All refused, audited, nothing
stored, nothing sent."""

from __future__ import annotations

import asyncio

from tests.e2e.email_support import mail
from tests.e2e.harness import GatewayUnderTest
from tests.e2e.test_email import box, gw, imap_server, outbound, refusals, settle, stored
from tests.fakes.mailservers import Dovecot, Relay

__all__ = ["box", "gw", "imap_server", "outbound"]  # the email gateway fixtures, by name

ASK = "promote google-chrome to pilot"
MALLORY = "mallory@attacker.example"


async def refused_and_inert(gw: GatewayUnderTest, box: Dovecot, outbound: Relay, raw: bytes) -> str:
    await box.deliver(raw)
    await settle(box, 1)
    found = await refusals(gw)
    assert len(found) == 1, found
    await asyncio.sleep(0.3)
    assert outbound.received == []
    assert await stored(gw) == 0
    return found[0]


async def test_a_pass_forged_below_the_trusted_servers_result_is_not_trusted(
    gw: GatewayUnderTest, box: Dovecot, outbound: Relay
) -> None:
    raw, _ = mail(
        ASK,
        auth="dmarc=fail (p=reject) header.from=example.com; dkim=none",
        # Written by the sender, so it sits below the receiving server's own header.
        headers=[("Authentication-Results", "mx.example.com; dmarc=pass header.from=example.com")],
    )
    record = await refused_and_inert(gw, box, outbound, raw)
    assert "email.unauthenticated" in record and '"principal_id":null' in record


async def test_a_display_name_never_makes_a_principal(
    gw: GatewayUnderTest, box: Dovecot, outbound: Relay
) -> None:
    tricks = [
        f'"ana@example.com" <{MALLORY}>',
        f"=?utf-8?q?ana=40example=2Ecom?= <{MALLORY}>",
        f"ana@example.com <{MALLORY}>",
        f"ana <{MALLORY}> (ana@example.com)",
    ]
    for from_header in tricks:
        # The attacker's own domain passes DMARC: only the address counts, not ana's.
        raw, _ = mail(ASK, sender=MALLORY, auth="dmarc=pass header.from=attacker.example")
        raw = raw.replace(f"From: Someone <{MALLORY}>".encode(), f"From: {from_header}".encode())
        await box.deliver(raw)
    await settle(box, len(tricks))
    found = await refusals(gw)
    assert len(found) == len(tricks) and all('"principal_id":null' in r for r in found), found
    await asyncio.sleep(0.3)
    assert outbound.received == []
    assert await stored(gw) == 0
