"""``BatchQueue``: items handled in batches by one task at a time, none lost or repeated."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
import pytest

from tvixd.coordinator.batches import BatchQueue, Spawn


def spawner(tg: anyio.abc.TaskGroup) -> Spawn:
    def spawn(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        tg.start_soon(fn)

    return spawn


@pytest.mark.asyncio
async def test_items_added_meanwhile_form_the_next_batches() -> None:
    batches: list[list[int]] = []
    release = anyio.Event()
    running = 0
    most = 0

    async def handle(batch: list[int]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        batches.append(batch)
        if len(batches) == 1:
            await release.wait()
        running -= 1

    async with anyio.create_task_group() as tg:
        queue = BatchQueue[int](spawner(tg), handle, max_batch=3)
        queue.add(0)
        queue.add(1)
        await anyio.wait_all_tasks_blocked()  # the first batch is being handled
        for i in range(2, 9):
            queue.add(i)
        assert "running" in repr(queue)
        release.set()
    assert batches == [[0, 1], [2, 3, 4], [5, 6, 7], [8]]
    assert most == 1  # one task at a time
    assert "idle" in repr(queue)


@pytest.mark.asyncio
async def test_a_new_task_starts_once_the_last_one_ended() -> None:
    batches: list[list[str]] = []
    tasks = 0

    def spawn(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        nonlocal tasks
        tasks += 1
        spawner(tg)(fn)

    async def handle(batch: list[str]) -> None:
        batches.append(batch)

    async with anyio.create_task_group() as tg:
        queue = BatchQueue[str](spawn, handle)
        queue.add("a")
        queue.add("b")
        await anyio.wait_all_tasks_blocked()
        queue.add("c")
    assert batches == [["a", "b"], ["c"]]
    assert tasks == 2


@pytest.mark.asyncio
async def test_a_cancelled_task_does_not_stop_later_items() -> None:
    batches: list[list[int]] = []

    async def handle(batch: list[int]) -> None:
        batches.append(batch)
        if batch == [1]:
            await anyio.sleep_forever()

    async with anyio.create_task_group() as outer:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as inner:
                queue = BatchQueue[int](spawner(inner), handle)
                queue.add(1)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()  # e.g. shutdown: the batch in hand is dropped
        queue._spawn = spawner(outer)  # a later run (another task group)
        queue.add(2)
    assert batches == [[1], [2]]


def test_max_batch_must_be_positive() -> None:
    async def handle(batch: list[int]) -> None:
        pass

    with pytest.raises(ValueError, match="max_batch must be at least 1, got 0"):
        BatchQueue[int](lambda fn: None, handle, max_batch=0)
