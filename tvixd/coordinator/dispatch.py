"""The build slots: a bounded pool of workers taking derivations ready to build, in order.

The driver :meth:`Dispatcher.submit`\\ s a node when it enters ``build`` (its
inputs are done and the transition is durable); one of ``slots`` workers
(the builder's concurrency, ``max_jobs``) picks it up and awaits
``realise(node, generation)``, which builds it.  Nothing polls: workers block
on the queue.  What follows a build (pushing its outputs) does not hold a
slot: ``realise`` hands it to :meth:`Dispatcher.follow_up`, which queues it
for one of ``followers`` workers of its own (at most that many follow-ups
run at a time; a queue and long-lived workers cost less than a task per
follow-up), so the slot takes the next build at once.

:meth:`Dispatcher.drain` stops workers from taking new nodes, waits for the
running builds and follow-ups (queued ones too) up to a grace period, then
cancels them and drops the follow-ups still queued.  Nodes left in the queue
or cancelled stay in ``build`` (or ``push``) in the journal, and a restart
resumes them.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from tvixd.coordinator.graph import Node

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)

Realise = Callable[[Node, int], Awaitable[None]]
Work = Callable[[], Awaitable[None]]


class Dispatcher:
    """``slots`` workers running ``realise`` on submitted nodes (see the module docstring)."""

    def __init__(self, slots: int, realise: Realise, followers: int = 1) -> None:
        if slots < 1:
            raise ValueError(f"the number of build slots must be at least 1, got {slots}")
        if followers < 1:
            raise ValueError(f"the number of follow-up workers must be at least 1, got {followers}")
        self._slots = slots
        self._followers = followers
        self._realise = realise
        self._send: MemoryObjectSendStream[tuple[Node, int]]
        self._receive: MemoryObjectReceiveStream[tuple[Node, int]]
        self._send, self._receive = anyio.create_memory_object_stream[tuple[Node, int]](math.inf)
        self._follow_send: MemoryObjectSendStream[tuple[Node, Work]]
        self._follow_receive: MemoryObjectReceiveStream[tuple[Node, Work]]
        self._follow_send, self._follow_receive = anyio.create_memory_object_stream[
            tuple[Node, Work]
        ](math.inf)
        self._running: dict[Node, anyio.CancelScope] = {}
        self._following: dict[Node, anyio.CancelScope] = {}
        self._queued = 0  # follow-ups queued, not yet taken by a follower
        self._idle = anyio.Event()
        self._idle.set()
        self._draining = False
        self._dropping = False  # drained: queued follow-ups are dropped
        self._tg: anyio.abc.TaskGroup | None = None

    def __repr__(self) -> str:
        queued = self._receive.statistics().current_buffer_used
        return (
            f"Dispatcher({len(self._running)}/{self._slots} busy, {queued} queued, "
            f"{len(self._following)} following up, {self._queued} to follow up)"
        )

    @property
    def busy(self) -> int:
        """Builds running now."""
        return len(self._running)

    @property
    def draining(self) -> bool:
        return self._draining

    def submit(self, node: Node, generation: int) -> None:
        """Queue ``node`` (of ``generation``) for a build slot; ignored while draining."""
        # Closed when shutting down: the node stays in build and resumes on the next start.
        if not self._draining:
            with contextlib.suppress(anyio.ClosedResourceError):
                self._send.send_nowait((node, generation))

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the workers until cancelled (the queue is closed then: a dispatcher runs once)."""
        with self._send, self._receive, self._follow_send, self._follow_receive:
            try:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    for _ in range(self._slots):
                        tg.start_soon(self._worker)
                    for _ in range(self._followers):
                        tg.start_soon(self._follower)
                    task_status.started()
            finally:
                self._tg = None

    def follow_up(self, node: Node, work: Work) -> None:
        """Run ``work`` (what follows ``node``'s build) on a follower, outside the slots.

        It is drained like a build.  When the dispatcher is not running, nothing
        runs: the node stays in its state in the journal and resumes on restart.
        """
        if self._tg is None or self._dropping:
            return
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._queued += 1
        self._follow_send.send_nowait((node, work))

    async def _worker(self) -> None:
        async for node, generation in self._receive:
            if self._draining:
                return
            await self._tracked(self._running, node, partial(self._realise, node, generation))

    async def _follower(self) -> None:
        async for node, work in self._follow_receive:
            self._queued -= 1
            if self._dropping:
                self._check_idle()
                continue
            await self._tracked(self._following, node, work)

    def _check_idle(self) -> None:
        if not self._running and not self._following and not self._queued:
            self._idle.set()

    async def _tracked(
        self,
        where: dict[Node, anyio.CancelScope],
        node: Node,
        work: Work,
    ) -> None:
        with anyio.CancelScope() as scope:
            where[node] = scope
            self._idle = anyio.Event() if self._idle.is_set() else self._idle
            try:
                await work()
            except Exception:
                log.exception("realising %s failed unexpectedly", node.key)
            finally:
                del where[node]
                self._check_idle()

    async def drain(self, grace: float) -> None:
        """Take no new builds; wait up to ``grace`` seconds for running ones (and the
        follow-ups of builds, including those that finish meanwhile), then cancel them."""
        self._draining = True
        with anyio.move_on_after(grace):
            await self._idle.wait()
        self._dropping = True
        for scope in [*self._running.values(), *self._following.values()]:
            scope.cancel()
        self._check_idle()
        with anyio.move_on_after(max(grace, 1.0)):
            await self._idle.wait()
