"""The SQLite write lock: urgent writers (admissions) first, first come first served otherwise."""

from __future__ import annotations

import asyncio

import pytest

from sessions.db import WriteLock


async def test_urgent_waiters_are_served_before_the_others_each_in_order() -> None:
    lock, order = WriteLock(), []

    async def writer(name: str, *, urgent: bool) -> None:
        async with lock.held(urgent=urgent):
            order.append(name)
            await asyncio.sleep(0)

    await lock.acquire()
    tasks = [
        asyncio.create_task(writer("turn-1", urgent=False)),
        asyncio.create_task(writer("turn-2", urgent=False)),
        asyncio.create_task(writer("admit-1", urgent=True)),
        asyncio.create_task(writer("admit-2", urgent=True)),
    ]
    await asyncio.sleep(0.01)
    assert order == []  # all wait while the lock is held
    lock.release()
    await asyncio.gather(*tasks)
    assert order == ["admit-1", "admit-2", "turn-1", "turn-2"]


async def test_a_cancelled_waiter_neither_keeps_nor_loses_the_lock() -> None:
    lock = WriteLock()
    await lock.acquire()
    gone = asyncio.create_task(lock.acquire())
    after = asyncio.create_task(lock.acquire(urgent=True))
    await asyncio.sleep(0.01)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    lock.release()
    await asyncio.wait_for(after, 1)
    lock.release()
    # Free again: an uncontended acquire does not wait.
    await asyncio.wait_for(lock.acquire(), 1)


async def test_a_waiter_cancelled_as_it_is_handed_the_lock_passes_it_on() -> None:
    lock = WriteLock()
    await lock.acquire()
    handed = asyncio.create_task(lock.acquire())
    nxt = asyncio.create_task(lock.acquire())
    await asyncio.sleep(0.01)
    lock.release()  # hands the lock to ``handed`` …
    handed.cancel()  # … which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await handed
    await asyncio.wait_for(nxt, 1)  # the lock moved on instead of leaking
