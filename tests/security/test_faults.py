"""Faults: the control plane down, slow or failing; Graph throttling; the model timing out,
answering garbage or 10 MB; SQLite full; a PostgreSQL connection dropped mid-transaction.

Each ends in a clear reply or a clear refusal, with no crash and nothing lost or half stored:
the next message is answered normally.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, text

from gateway.settings import ControlPlaneSettings, DatabaseSettings, ModelSettings
from tests.conftest import PG_URL
from tests.demo import DemoControlPlane
from tests.e2e.harness import GatewayUnderTest, running_gateway
from tests.e2e.test_cli_calendar import cal, graph
from tests.fakes.openai_server import FakeOpenAI, delay, garbage, huge
from tests.fakes.openai_server import text as say
from tests.security.conftest import stored_messages
from tests.security.injection_lab import InjectingProxy
from tests.tools.graph_support import FakeGraph

__all__ = ["cal", "graph"]  # the calendar gateway fixtures, used here by name

ASK = "what is pending my approval?"


async def statuses(gw: GatewayUnderTest) -> list[str]:
    async with gw.gateway.store.engine.connect() as conn:
        rows = await conn.execute(text("SELECT status FROM messages WHERE direction = 'in'"))
        return [str(r[0]) for r in rows]


@pytest.fixture
async def proxy(shared_demo_cp: DemoControlPlane) -> AsyncIterator[InjectingProxy]:
    """The shared control plane behind a proxy that can slow it down or make it fail."""
    faulty = InjectingProxy(shared_demo_cp.url)
    await faulty.start()
    try:
        yield faulty
    finally:
        await faulty.close()


@pytest.mark.parametrize(
    ("fault", "said"),
    [({"delay": 2.0}, "did not finish within 1 s"), ({"fail": 500}, "not available")],
    ids=["slow", "500"],
)
async def test_a_slow_or_failing_control_plane_gets_a_clear_answer(
    proxy: InjectingProxy,
    shared_demo_cp: DemoControlPlane,
    tmp_path: Path,
    fault: dict[str, Any],
    said: str,
) -> None:
    settings = ControlPlaneSettings(timeout_seconds=1)
    async with running_gateway(
        tmp_path / "gw", proxy.url, shared_demo_cp.gateway_token, controlplane=settings
    ) as gw:
        for key, value in fault.items():
            setattr(proxy, key, value)
        turn = await gw.turn("ana", ASK)
        assert turn.status == 200
        (call,) = turn.result["tool_calls"]
        assert call["status"] == "error" and said in call["text"], call
        proxy.delay, proxy.fail = 0.0, None
        again = await gw.turn("ana", ASK)
        assert "zoom" in again.reply
        assert await statuses(gw) == ["done", "done"]


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (delay(3.0, say("too late")), "did not answer within 1 s"),
        (garbage(b"\x00\xff<html>502</html>"), "not a chat completion"),
        (huge(10 * 1024 * 1024), "too large"),
    ],
    ids=["timeout", "garbage", "10MB"],
)
async def test_a_failing_model_gets_a_clear_answer_and_changes_nothing(
    shared_demo_cp: DemoControlPlane, tmp_path: Path, answer: Any, said: str
) -> None:
    async with FakeOpenAI() as model:
        settings = ModelSettings(
            route="openai", base_url=model.base_url, model="m", timeout_seconds=1
        )
        async with running_gateway(
            tmp_path / "gw", shared_demo_cp.url, shared_demo_cp.gateway_token, model=settings
        ) as gw:
            model.script(answer)
            turn = await gw.turn("ana", "promote google-chrome to pilot")
            assert turn.status == 200 and said in turn.reply, turn.reply
            assert "Nothing was changed" in turn.reply
            assert turn.result["confirmation"] is None
            model.script(say("Back again."))
            assert (await gw.turn("ana", "hello")).reply == "Back again."
            assert await statuses(gw) == ["done", "done"]


async def test_graph_throttling_and_outage_get_a_clear_answer(
    cal: GatewayUnderTest, graph: FakeGraph
) -> None:
    ask = "book a CAB review with ana and li next tuesday"
    graph.knobs.unavailable.extend(["0"] * 20)  # more 503s than the tool's retries
    turn = await cal.turn("ana", ask)
    assert turn.status == 200 and turn.result["confirmation"] is None
    (call,) = turn.result["tool_calls"]
    assert call["status"] == "error" and "Microsoft Graph" in call["text"], call
    graph.knobs.unavailable.clear()
    graph.knobs.throttle.extend(["0", "0"])  # a short burst: retried, then answered
    again = await cal.turn("ana", ask)
    assert again.result["confirmation"] is not None, again.reply
    assert await statuses(cal) == ["done", "done"]


async def test_a_full_sqlite_database_refuses_clearly_and_loses_nothing(
    shared_demo_cp: DemoControlPlane, tmp_path: Path
) -> None:
    async with running_gateway(
        tmp_path / "gw", shared_demo_cp.url, shared_demo_cp.gateway_token
    ) as gw:
        first = await gw.turn("ana", ASK)
        assert first.status == 200
        engine = gw.gateway.store.engine.sync_engine

        def full(connection: Any, _: Any) -> None:
            # SQLite's own "database or disk is full": no page may be added.
            # (It cannot go below the file's size, so 1 means "no more than now".)
            cursor = connection.cursor()
            cursor.execute("PRAGMA max_page_count = 1")
            cursor.close()

        event.listen(engine, "connect", full)
        await gw.gateway.store.engine.dispose()
        refused = [await gw.turn("ana", ASK + " " + "x" * 4000) for _ in range(3)]
        event.remove(engine, "connect", full)
        await gw.gateway.store.engine.dispose()
        for turn in refused:
            assert turn.status in (200, 503), turn
            if turn.status == 503:
                assert turn.error is not None and "try again" in turn.error["message"]
                assert turn.headers.get("Retry-After")
        after = await gw.turn("ana", ASK)
        assert after.status == 200 and "zoom" in after.reply
        done = await statuses(gw)
        assert set(done) == {"done"}, done  # nothing left half processed
        assert await stored_messages(gw) == 2 * len(done)


@pytest.mark.postgres
async def test_a_postgres_connection_dropped_mid_transaction_loses_nothing(
    shared_demo_cp: DemoControlPlane, tmp_path: Path, pg_schema: str
) -> None:
    schema = f"{pg_schema}_gw{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f"CREATE SCHEMA {schema}")
    database = DatabaseSettings.model_validate(
        {"url": PG_URL.replace("postgresql://", "postgresql+asyncpg://"), "schema_name": schema}
    )
    try:
        async with running_gateway(
            tmp_path / "gw", shared_demo_cp.url, shared_demo_cp.gateway_token, database=database
        ) as gw:
            assert (await gw.turn("ana", ASK)).status == 200
            locker = await asyncpg.connect(PG_URL)
            tx = locker.transaction()
            await tx.start()
            await locker.execute(f"LOCK TABLE {schema}.messages IN ACCESS EXCLUSIVE MODE")
            turn = asyncio.create_task(gw.turn("ana", ASK))
            killed = 0
            for _ in range(100):  # the gateway's backend, waiting on the lock inside its write
                # Only backends waiting for this schema's table: other sessions share the server.
                killed = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_locks"
                    " WHERE relation = $1::text::regclass AND NOT granted",
                    f"{schema}.messages",
                )
                if killed:
                    break
                await asyncio.sleep(0.05)
            await tx.rollback()
            await locker.close()
            assert killed >= 1
            dropped = await turn
            assert dropped.status in (200, 503), dropped
            if dropped.status == 503:
                assert dropped.error is not None and "try again" in dropped.error["message"]
            after = await gw.turn("ana", ASK)
            assert after.status == 200 and "zoom" in after.reply
            done = await statuses(gw)
            assert set(done) == {"done"}, done
            assert await stored_messages(gw) == 2 * len(done)
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()
