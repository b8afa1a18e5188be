"""Email end to end: mail filed into a real dovecot, replies caught by a real SMTP relay, a real
gateway and demo control plane in between."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text as sql

from agent.route import RouteResult, StepRequest
from tests.demo import DemoControlPlane
from tests.e2e.email_support import GOODBOT, email_policy, email_settings, mail, until
from tests.e2e.harness import GatewayUnderTest, running_gateway
from tests.e2e.test_cli_confirmations import cp_rollout
from tests.fakes.mailservers import Dovecot, Relay, dovecot, relay

CODE = re.compile(r"CONFIRM ([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4})")


@pytest.fixture(scope="module")
def imap_server() -> Iterator[Dovecot]:
    with dovecot() as server:
        yield server


@pytest.fixture
def box(imap_server: Dovecot) -> Dovecot:
    """A fresh, empty mailbox for the test."""
    return imap_server.add_user(f"gb{uuid.uuid4().hex[:10]}", "pw-" + uuid.uuid4().hex[:8])


@pytest.fixture
def outbound() -> Iterator[Relay]:
    with relay() as server:
        yield server


@pytest.fixture
async def gw(
    demo_cp: DemoControlPlane, tmp_path: Path, box: Dovecot, outbound: Relay
) -> AsyncIterator[GatewayUnderTest]:
    data = tmp_path / "gw"
    email_policy(data)
    settings = email_settings(box, outbound)
    async with running_gateway(data, demo_cp.url, demo_cp.gateway_token, email=settings) as gw:
        yield gw


async def refusals(gw: GatewayUnderTest) -> list[str]:
    return [line async for line in gw.gateway.store.export_audit() if "message.refused" in line]


async def stored(gw: GatewayUnderTest) -> int:
    async with gw.gateway.store.engine.connect() as conn:
        return int((await conn.execute(sql("SELECT count(*) FROM messages"))).scalar_one())


async def all_seen(box: Dovecot, count: int) -> bool:
    flags = await box.flags()
    return len(flags) == count and all("\\Seen" in f for f in flags)


async def settle(box: Dovecot, count: int) -> None:
    """Wait until the channel has taken (marked seen) all ``count`` messages."""
    for _ in range(300):
        if await all_seen(box, count):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not all seen: {await box.flags()}")


def body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


async def test_a_trusted_request_is_answered_in_its_thread(
    gw: GatewayUnderTest, box: Dovecot, outbound: Relay
) -> None:
    raw, mid = mail("what is pending my approval?\n\nThanks,\nAna\n", subject="approvals")
    await box.deliver(raw)
    (reply,) = await until(lambda: outbound.to("ana@example.com"), what="the reply")
    assert "zoom" in body(reply) and "crowdstrike-falcon" in body(reply)
    assert reply["In-Reply-To"] == mid
    assert str(reply["References"]).split()[-1] == mid
    assert reply["Subject"] == "Re: approvals"
    assert reply["Auto-Submitted"] == "auto-replied"
    assert GOODBOT in str(reply["From"])
    assert outbound.envelopes[0] == (GOODBOT, ["ana@example.com"])
    await settle(box, 1)


async def test_a_confirmation_by_reply_code_runs_once(
    gw: GatewayUnderTest, box: Dovecot, outbound: Relay, demo_cp: DemoControlPlane
) -> None:
    raw, mid = mail("promote google-chrome to pilot", subject="chrome")
    await box.deliver(raw)
    (proposal,) = await until(lambda: outbound.to("ana@example.com"), what="the proposal")
    found = CODE.search(body(proposal))
    assert found is not None, body(proposal)
    code = found.group(1)
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 1  # nothing changed yet

    # sam holds no code for it: his "CONFIRM" with ana's code is refused, nothing runs.
    theirs, _ = mail(f"CONFIRM {code}", sender="sam@example.com")
    await box.deliver(theirs)
    (told,) = await until(lambda: outbound.to("sam@example.com"), what="sam's refusal")
    assert "Nothing happened" in body(told)
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 1

    answer, _ = mail(
        f"CONFIRM {code}\n\nOn Mon, 1 Dec 2026 goodbot <{GOODBOT}> wrote:\n> To go ahead...\n",
        subject="Re: chrome",
        in_reply_to=proposal["Message-ID"],
        references=f"{mid} {proposal['Message-ID']}",
    )
    await box.deliver(answer)
    done = await until(lambda: outbound.to("ana@example.com")[1:], what="the confirmation")
    assert "Confirmed and done" in body(done[0]), body(done[0])
    assert done[0]["References"].split()[0] == mid  # still the same thread
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 2

    # The same code again (a new message): spent, so nothing runs a second time.
    again, _ = mail(f"CONFIRM {code}", subject="Re: chrome")
    await box.deliver(again)
    late = await until(lambda: outbound.to("ana@example.com")[2:], what="the second answer")
    assert "Nothing happened" in body(late[0])
    executions = [
        line async for line in gw.gateway.store.export_audit() if '"confirmation.executed"' in line
    ]
    assert len(executions) == 1
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 2
    # Only the hash of the code is stored.
    async with gw.gateway.store.engine.connect() as conn:
        rows = (await conn.execute(sql("SELECT * FROM email_codes"))).all()
    assert rows and all(code not in str(tuple(row)) for row in rows)


@pytest.mark.parametrize(
    ("auth", "authserv", "rule"),
    [
        (
            "dmarc=fail (p=reject) header.from=example.com; dkim=none",
            "mx.example.com",
            "email.unauthenticated",
        ),
        (None, "mx.example.com", "email.untrusted"),
        ("dmarc=pass header.from=example.com", "mx.attacker.example", "email.untrusted"),
        ("dkim=pass header.d=attacker.example", "mx.example.com", "email.unauthenticated"),
    ],
    ids=["dmarc-fail", "no-header", "untrusted-server", "dkim-unaligned"],
)
async def test_unauthenticated_mail_is_ignored_and_audited(
    gw: GatewayUnderTest,
    box: Dovecot,
    outbound: Relay,
    auth: str | None,
    authserv: str,
    rule: str,
) -> None:
    raw, mid = mail("promote google-chrome to pilot", auth=auth, authserv=authserv)
    await box.deliver(raw)
    await settle(box, 1)
    found = await refusals(gw)
    assert len(found) == 1 and rule in found[0] and mid in found[0], found
    assert '"principal_id":null' in found[0]  # a spoofed From is not attributed to ana
    await asyncio.sleep(0.3)
    assert outbound.received == []
    assert await stored(gw) == 0


@pytest.mark.parametrize(
    ("headers", "sender"),
    [
        ([("Auto-Submitted", "auto-replied")], "ana@example.com"),
        ([("Precedence", "bulk")], "ana@example.com"),
        ([("Return-Path", "<>")], "ana@example.com"),
        ([], "mailer-daemon@example.com"),
        ([], GOODBOT),
    ],
    ids=["auto-submitted", "bulk", "bounce", "mailer-daemon", "own-address"],
)
async def test_automatic_mail_is_not_answered(
    gw: GatewayUnderTest,
    box: Dovecot,
    outbound: Relay,
    headers: list[tuple[str, str]],
    sender: str,
) -> None:
    raw, _ = mail("Out of office until Monday.", sender=sender, headers=headers)
    await box.deliver(raw)
    await settle(box, 1)
    found = await refusals(gw)
    assert len(found) == 1 and "email.loop" in found[0]
    await asyncio.sleep(0.3)
    assert outbound.received == []
    assert await stored(gw) == 0


async def test_a_burst_from_one_address_is_not_answered_beyond_the_limit(
    demo_cp: DemoControlPlane, tmp_path: Path, box: Dovecot, outbound: Relay
) -> None:
    data = tmp_path / "gw"
    email_policy(data)
    settings = email_settings(box, outbound, sender_rate_per_minute=2)
    async with running_gateway(data, demo_cp.url, demo_cp.gateway_token, email=settings) as gw:
        for n in range(4):
            raw, _ = mail(f"what is pending my approval? ({n})")
            await box.deliver(raw)
        await settle(box, 4)
        await until(lambda: len(outbound.received) >= 2, what="two replies")
        await asyncio.sleep(0.5)
        assert len(outbound.received) == 2
        assert sum("email.sender_rate" in r for r in await refusals(gw)) == 2


async def test_a_redelivered_message_is_answered_once(
    gw: GatewayUnderTest, box: Dovecot, outbound: Relay
) -> None:
    raw, _ = mail("what is pending my approval?")
    await box.deliver(raw)
    await until(lambda: outbound.received, what="the reply")
    await box.deliver(raw)  # the same Message-ID filed again
    await settle(box, 2)
    await asyncio.sleep(0.5)
    assert len(outbound.received) == 1
    assert await stored(gw) == 2  # the message and its reply


async def test_html_quotes_signature_and_attachments(
    gw: GatewayUnderTest, box: Dovecot, outbound: Relay
) -> None:
    boundary = "b0undary"
    text = (
        f"--{boundary}\n"
        "Content-Type: text/html; charset=utf-8\n\n"
        "<html><body><p>what is <b>pending</b> my approval?</p>"
        "<div class='gmail_quote'>On Monday goodbot wrote:<blockquote>promote zoom to broad"
        "</blockquote></div></body></html>\n"
        f"--{boundary}\n"
        "Content-Type: application/pdf\n"
        'Content-Disposition: attachment; filename="change-plan.pdf"\n'
        "Content-Transfer-Encoding: base64\n\n"
        "JVBERi0xLjQK\n"
        f"--{boundary}--\n"
    )
    raw, _ = mail(text, content_type=f'multipart/mixed; boundary="{boundary}"')
    await box.deliver(raw)
    (reply,) = await until(lambda: outbound.received, what="the reply")
    said = body(reply)
    assert "change-plan.pdf" in said and "ignored" in said
    assert "zoom" in said  # the approvals, not a promotion from the quoted text
    history = await gw.gateway.store.history(await _only_conversation(gw))
    assert history[0].text == "what is pending my approval?"


async def _only_conversation(gw: GatewayUnderTest) -> str:
    async with gw.gateway.store.engine.connect() as conn:
        return str((await conn.execute(sql("SELECT id FROM conversations"))).scalar_one())


async def test_a_message_over_the_limit_is_refused_naming_the_limit(
    demo_cp: DemoControlPlane, tmp_path: Path, box: Dovecot, outbound: Relay
) -> None:
    data = tmp_path / "gw"
    email_policy(data, max_message_bytes=100)
    settings = email_settings(box, outbound)
    async with running_gateway(data, demo_cp.url, demo_cp.gateway_token, email=settings) as gw:
        raw, _ = mail("what is pending my approval? " + "please " * 40)
        await box.deliver(raw)
        (reply,) = await until(lambda: outbound.received, what="the refusal")
        assert "the limit is 100 bytes" in body(reply)
        assert await stored(gw) == 0


async def test_email_can_be_read_only_by_policy(
    demo_cp: DemoControlPlane, tmp_path: Path, box: Dovecot, outbound: Relay
) -> None:
    data = tmp_path / "gw"
    email_policy(data, read_only=True)
    settings = email_settings(box, outbound, imap_idle=False)  # and: polling without IDLE
    async with running_gateway(data, demo_cp.url, demo_cp.gateway_token, email=settings):
        raw, _ = mail("promote google-chrome to pilot")
        await box.deliver(raw)
        (reply,) = await until(lambda: outbound.received, what="the reply")
        assert "read-only" in body(reply), body(reply)
        assert CODE.search(body(reply)) is None
    assert cp_rollout(demo_cp, "google-chrome")["ring"] == 1


async def test_a_domain_in_the_policy_admits_its_addresses(
    gw: GatewayUnderTest, box: Dovecot, outbound: Relay
) -> None:
    raw, _ = mail(
        "/whoami", sender="oncall@ops.example.com", auth="dmarc=pass header.from=ops.example.com"
    )
    await box.deliver(raw)
    (reply,) = await until(lambda: outbound.received, what="the reply")
    assert "You are **vera**" in body(reply)


class _Stuck:
    """A route that never answers: the gateway stops with the turn admitted and unfinished."""

    name = "rules"
    uses_history = False

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def next_step(self, request: StepRequest) -> RouteResult:
        self.started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        return None


async def test_a_crash_mid_turn_is_answered_exactly_once_after_restart(
    demo_cp: DemoControlPlane, tmp_path: Path, box: Dovecot, outbound: Relay
) -> None:
    data = tmp_path / "gw"
    email_policy(data)
    settings = email_settings(box, outbound)
    stuck = _Stuck()
    raw, mid = mail("what is pending my approval?")
    async with running_gateway(
        data, demo_cp.url, demo_cp.gateway_token, route=stuck, email=settings
    ) as gw:
        await box.deliver(raw)
        await asyncio.wait_for(stuck.started.wait(), 15)
        await settle(box, 1)  # admitted durably, so marked seen
        assert await gw.gateway.store.pending_messages()
    assert outbound.received == []  # the gateway stopped mid-turn

    async with running_gateway(data, demo_cp.url, demo_cp.gateway_token, email=settings) as gw:
        (reply,) = await until(lambda: outbound.received, what="the recovered reply")
        assert reply["In-Reply-To"] == mid and "zoom" in body(reply)
        await asyncio.sleep(1.0)  # further rounds and flushes send nothing more
        assert len(outbound.received) == 1
        assert await gw.gateway.store.pending_messages() == []


async def test_a_crash_before_admission_leaves_the_message_unseen(
    demo_cp: DemoControlPlane, tmp_path: Path, box: Dovecot, outbound: Relay
) -> None:
    data = tmp_path / "gw"
    email_policy(data)
    settings = email_settings(box, outbound)
    raw, _ = mail("what is pending my approval?")
    async with running_gateway(data, demo_cp.url, demo_cp.gateway_token, email=settings) as gw:
        crashed = asyncio.Event()

        async def admit(*_: Any, **__: Any) -> Any:
            crashed.set()
            raise OSError("the database went away")

        gw.gateway.turns.admit = admit  # type: ignore[method-assign]
        await box.deliver(raw)
        await asyncio.wait_for(crashed.wait(), 15)
        await asyncio.sleep(0.3)
        assert not await all_seen(box, 1)
    async with running_gateway(data, demo_cp.url, demo_cp.gateway_token, email=settings):
        await until(lambda: outbound.received, what="the reply")
        await settle(box, 1)
        await asyncio.sleep(0.5)
        assert len(outbound.received) == 1


async def test_a_reply_the_relay_refused_is_sent_later_once(
    gw: GatewayUnderTest, box: Dovecot, outbound: Relay
) -> None:
    outbound.fail_next = 1
    raw, _ = mail("what is pending my approval?")
    await box.deliver(raw)
    await settle(box, 1)

    async def last_error() -> str | None:
        async with gw.gateway.store.engine.connect() as conn:
            found = await conn.execute(sql("SELECT last_error, sent_at FROM email_outbox"))
            row = found.one()
        assert row.sent_at is None
        return None if row.last_error is None else str(row.last_error)

    for _ in range(200):
        if await last_error():
            break
        await asyncio.sleep(0.05)
    assert "451" in str(await last_error())
    assert outbound.received == []
    # Time passes (the retry is due): the next round's flush sends it, once.
    async with gw.gateway.store.engine.begin() as conn:
        await conn.execute(sql("UPDATE email_outbox SET claimed_until = NULL"))
    (reply,) = await until(lambda: outbound.received, what="the retried reply")
    assert "zoom" in body(reply)
    await asyncio.sleep(0.5)
    assert len(outbound.received) == 1


async def test_mail_over_the_download_limit_is_refused_by_its_header(
    demo_cp: DemoControlPlane, tmp_path: Path, box: Dovecot, outbound: Relay
) -> None:
    data = tmp_path / "gw"
    email_policy(data)
    settings = email_settings(box, outbound, max_email_bytes=2048)
    async with running_gateway(data, demo_cp.url, demo_cp.gateway_token, email=settings) as gw:
        raw, mid = mail("what is pending my approval?\n\n" + "x" * 4000)
        await box.deliver(raw)
        (reply,) = await until(lambda: outbound.received, what="the refusal")
        assert "the limit is 2048 bytes" in body(reply) and reply["In-Reply-To"] == mid
        assert await stored(gw) == 0
        assert any("email.size" in r for r in await refusals(gw))
