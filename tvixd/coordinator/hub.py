"""Live fan-out of committed journal entries to watchers (``Watch``, ``FollowLog``).

A watcher subscribes to a key (a job id, a drv path) *before* it replays what
the journal stored, then reads live items and drops those it already saw
(by ``seq`` / log id), so nothing is missed and nothing is repeated.

Items are published only after they are durable (from the journal's
``on_commit``), in commit order.  A subscriber's buffer is bounded: a watcher
that falls more than ``limit`` items behind is marked *lagged*, its buffer is
dropped, and it is expected to catch up from the journal — which holds every
published item — before reading live items again.  Publishing never blocks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import anyio

__all__ = ["Hub", "Subscription"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DEFAULT_LIMIT = 10_000


class Subscription(Generic[V]):
    """The live items of one key for one watcher."""

    def __init__(self, limit: int) -> None:
        self._items: deque[V] = deque()
        self._limit = limit
        self._ready = anyio.Event()
        self.lagged = False

    def __repr__(self) -> str:
        return f"Subscription({len(self._items)} queued, lagged={self.lagged})"

    def push(self, item: V) -> None:
        if self.lagged:
            return
        if len(self._items) >= self._limit:
            self._items.clear()
            self.lagged = True
        else:
            self._items.append(item)
        self._ready.set()

    async def next_batch(self) -> list[V]:
        """Wait for items; return those queued (empty when lagged: catch up, then call again)."""
        while not self._items and not self.lagged:
            await self._ready.wait()
            self._ready = anyio.Event()
        items = list(self._items)
        self._items.clear()
        return items

    def caught_up(self) -> None:
        """The watcher re-read the journal: accept live items again."""
        self.lagged = False


class Hub(Generic[K, V]):
    """Subscriptions by key."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._subs: dict[K, set[Subscription[V]]] = {}
        self._limit = limit

    def __repr__(self) -> str:
        return f"Hub({sum(map(len, self._subs.values()))} subscriptions)"

    @contextmanager
    def subscribe(self, key: K) -> Iterator[Subscription[V]]:
        """A subscription to ``key`` for the duration of the ``with`` block."""
        sub: Subscription[V] = Subscription(self._limit)
        self._subs.setdefault(key, set()).add(sub)
        try:
            yield sub
        finally:
            subs = self._subs.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[key]

    def publish(self, key: K, items: Iterable[V]) -> None:
        """Hand ``items`` to every subscriber of ``key``."""
        subs = self._subs.get(key)
        if not subs:
            return
        for item in items:
            for sub in subs:
                sub.push(item)
