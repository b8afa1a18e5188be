"""Background duties through their leases: retention runs as a duty when configured."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.e2e.harness import running_gateway


async def test_the_retention_duty_deletes_old_finished_messages_only(tmp_path: Path) -> None:
    # No control plane is needed: nothing here calls a tool.
    async with running_gateway(
        tmp_path / "gw",
        "http://127.0.0.1:9",
        "unused",
        retention_days=2,
        retention_sweep_seconds=0.1,
    ) as gw:
        store = gw.gateway.store
        old = datetime.now(UTC) - timedelta(days=3)
        first = await store.admit("cli", "ana:old", "cli:ana:c", "ana", "old question", now=old)
        await store.record_reply(
            first.conversation_id, "old answer", in_reply_to=first.message_id, now=old
        )
        waiting = await store.admit("cli", "ana:open", "cli:ana:c", "ana", "unanswered", now=old)
        fresh = await store.admit("cli", "ana:new", "cli:ana:c", "ana", "new question")
        texts: list[str] = []
        for _ in range(100):
            texts = [m.text for m in await store.history(first.conversation_id, 50)]
            if "old question" not in texts:
                break
            await asyncio.sleep(0.05)
        assert "old question" not in texts and "old answer" not in texts
        assert "unanswered" in texts  # unfinished work is never purged
        assert "new question" in texts
        assert gw.gateway.leases.held >= {"retention", "confirmations.expiry"}
        del waiting, fresh
