"""Work done for many derivations at once: one task per batch, not one per derivation.

The driver reads ``.drv`` files and looks up outputs for whole groups of
derivations (a graph's discovery enters ``lookup`` for hundreds of them in a
few steps).  A task, a capacity limiter and a deadline per derivation cost
~50 µs of CPU with anyio; handing each read or lookup to a thread on its own
cost more.  :class:`BatchQueue` collects the items a step produces; a single
task (started when the first item arrives, ending when none is left) hands
them to ``handle`` up to ``max_batch`` at a time, so a batch is one
``read_derivations`` or one ``get_many`` call, one deadline and one commit.

``handle`` must deal with every failure of its items itself (it reports them
to the derivations' machines): an exception escaping it is a bug and stops
the coordinator.  If the task is cancelled (shutdown), the items it held are
dropped with it: their derivations stay in their state in the journal and
are resumed on the next start, as a per-derivation task would have left them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

__all__ = ["MAX_BATCH", "BatchQueue", "Spawn"]

MAX_BATCH = 256
"""Items handed to ``handle`` at a time."""

_T = TypeVar("_T")

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]
"""Starts a task running the given coroutine function (e.g. a task group's ``start_soon``)."""


class BatchQueue(Generic[_T]):
    """Items added on the loop, handled in batches by one task at a time (see the module)."""

    def __init__(
        self,
        spawn: Spawn,
        handle: Callable[[list[_T]], Awaitable[None]],
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._spawn = spawn
        self._handle = handle
        self._max_batch = max_batch
        self._pending: list[_T] = []
        self._running = False

    def __repr__(self) -> str:
        state = "running" if self._running else "idle"
        return f"BatchQueue({self._handle!r}, {len(self._pending)} pending, {state})"

    def add(self, item: _T) -> None:
        """Queue ``item``; starts the handling task unless it runs already."""
        self._pending.append(item)
        if not self._running:
            self._running = True
            self._spawn(self._run)

    async def _run(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._handle(batch)
        finally:
            self._running = False
