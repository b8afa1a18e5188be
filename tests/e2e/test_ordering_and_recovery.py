"""Turns of one conversation run in order, of others concurrently; nothing accepted is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text as sql

from agent.openai_route import OpenAIRoute
from channels.base import InboundMessage
from gateway.bootstrap import token_identity
from tests.demo import DemoControlPlane
from tests.e2e.harness import running_gateway
from tests.fakes.openai_server import FakeOpenAI, delay, text


async def arrived(fake: FakeOpenAI, count: int) -> None:
    """Wait (at most 10 s) until the model server has received ``count`` requests."""
    for _ in range(1000):
        if len(fake.requests) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the model server got {len(fake.requests)} requests, not {count}")


async def test_one_conversation_in_order_two_conversations_at_once(
    demo_cp: DemoControlPlane, tmp_path: Path
) -> None:
    async with FakeOpenAI() as fake:
        route = OpenAIRoute(base_url=fake.base_url, model="fake-model", api_key="sk-test-key")
        async with running_gateway(
            tmp_path / "gw", demo_cp.url, demo_cp.gateway_token, route=route
        ) as gw:
            fake.script(delay(1.0, text("first answer")), text("second answer"))
            first = asyncio.create_task(gw.turn("ana", "first question"))
            await arrived(fake, 1)
            second = await gw.turn("ana", "second question")
            assert first.done()  # the second waited for the first in its conversation
            assert (await first).reply == "first answer"
            assert second.reply == "second answer"
            # ...and it saw the first exchange as history, in order.
            contents = [m.get("content") for m in fake.requests[1]["messages"]]
            assert contents[-3:] == ["first question", "first answer", "second question"]

            fake.script(delay(2.0, text("slow")), text("quick"))
            slow = asyncio.create_task(gw.turn("ana", "slow one", conversation="a"))
            await arrived(fake, 3)
            quick = await gw.turn("ana", "quick one", conversation="b")
            assert quick.reply == "quick"
            assert not slow.done()  # another conversation did not wait for it
            assert (await slow).reply == "slow"


async def test_a_message_accepted_before_a_crash_is_answered_at_the_next_start(
    demo_cp: DemoControlPlane, tmp_path: Path
) -> None:
    data = tmp_path / "gw"
    async with running_gateway(data, demo_cp.url, demo_cp.gateway_token) as gw:
        token = gw.token("ana")
        # Admitted (stored durably), and the process dies before the turn runs.
        admission = await gw.gateway.turns.admit(
            InboundMessage(
                "cli",
                token_identity(token),
                "ana:evt-crash",
                "cli:ana:default",
                "what is pending my approval?",
            )
        )
        assert not admission.duplicate
    async with running_gateway(data, demo_cp.url, demo_cp.gateway_token) as gw:
        async with gw.gateway.store.engine.connect() as conn:
            status = (
                await conn.execute(
                    sql("SELECT status FROM messages WHERE id = :id"),
                    {"id": admission.message_id},
                )
            ).scalar_one()
        assert status == "done"
        history = await gw.gateway.store.history(admission.conversation_id)
        assert [m.direction for m in history] == ["in", "out"]
        assert "zoom" in history[1].text
        # The channel retries the delivery: it is recognized, answered from the store, once.
        again = await gw.turn("ana", "what is pending my approval?", event_id="evt-crash")
        assert again.of("accepted")[0]["duplicate"] is True
        assert "zoom" in again.reply
        assert len(await gw.gateway.store.history(admission.conversation_id)) == 2
