"""Coalescing concurrent lookups: one call answers many callers, without background tasks.

:class:`Batcher` turns concurrent ``get(key)`` calls into as few
``fetch(keys)`` calls as possible: the first caller becomes the *leader* and
runs batches until none is pending; callers arriving meanwhile join the next
batch and wait for it.  Successful answers are cached (bounded, oldest
evicted first); errors reach the callers of that batch only.  If the leader
is cancelled, the batches it had not finished are released and their waiters
elect a new leader, so no caller waits forever.

:class:`SingleFlight` lets one caller per key do some work while concurrent
callers for the same key wait for it to finish (and then look at the result
themselves, e.g. in a store it filled).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

__all__ = ["Batcher", "SingleFlight"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class _Batch(Generic[K, V]):
    keys: list[K] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)
    results: dict[K, V | Exception] = field(default_factory=dict)


class Batcher(Generic[K, V]):
    """Answers ``get(key)`` through ``fetch(keys) -> {key: value or exception}``, batched and cached.

    ``fetch`` must answer every key it is given (a missing key raises
    ``KeyError`` to its caller); it is called with at most ``max_batch`` keys.
    """

    def __init__(
        self,
        fetch: Callable[[Sequence[K]], Awaitable[Mapping[K, V | Exception]]],
        *,
        max_batch: int = 256,
        cache_size: int = 65536,
    ) -> None:
        if max_batch < 1 or cache_size < 0:
            raise ValueError(f"max_batch {max_batch} must be >= 1, cache_size {cache_size} >= 0")
        self._fetch = fetch
        self._max_batch = max_batch
        self._cache_size = cache_size
        self._cache: OrderedDict[K, V] = OrderedDict()
        self._pending: list[_Batch[K, V]] = []
        self._by_key: dict[K, _Batch[K, V]] = {}
        self._leading = False

    def __repr__(self) -> str:
        return f"Batcher({self._fetch!r}, {len(self._cache)} cached, {len(self._by_key)} queued)"

    async def get(self, key: K) -> V:
        """The value for ``key`` (cached, or fetched in a batch); raises what ``fetch`` gave for it."""
        while True:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            batch = self._by_key.get(key)
            if batch is None:
                batch = self._enqueue(key)
            if self._leading:
                await batch.done.wait()
            else:
                await self._lead()
            if key in batch.results:
                result = batch.results[key]
                if isinstance(result, Exception):
                    raise result
                return result
            # the leader was cancelled before answering: try again (maybe as the leader)

    def _enqueue(self, key: K) -> _Batch[K, V]:
        if not self._pending or len(self._pending[-1].keys) >= self._max_batch:
            self._pending.append(_Batch())
        batch = self._pending[-1]
        batch.keys.append(key)
        self._by_key[key] = batch
        return batch

    async def _lead(self) -> None:
        self._leading = True
        current: _Batch[K, V] | None = None
        try:
            while self._pending:
                current = self._pending.pop(0)
                answers = await self._fetch(list(current.keys))
                for key in current.keys:
                    if key not in answers:
                        current.results[key] = KeyError(f"no answer for {key!r}")
                        continue
                    answer = answers[key]
                    current.results[key] = answer
                    if not isinstance(answer, Exception) and self._cache_size:
                        self._cache[key] = answer
                        if len(self._cache) > self._cache_size:
                            self._cache.popitem(last=False)
                self._release(current)
                current = None
        finally:
            self._leading = False
            if current is not None:  # cancelled or failed: every waiter retries
                self._release(current)
                for batch in self._pending:
                    self._release(batch)
                self._pending.clear()

    def _release(self, batch: _Batch[K, V]) -> None:
        for key in batch.keys:
            if self._by_key.get(key) is batch:
                del self._by_key[key]
        batch.done.set()


class SingleFlight(Generic[K]):
    """At most one holder per key at a time; later callers wait for the holder to finish."""

    def __init__(self) -> None:
        self._flights: dict[K, anyio.Event] = {}

    @asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[bool]:
        """Enter once no one else holds ``key``; yields whether the caller had to wait."""
        waited = False
        while (flight := self._flights.get(key)) is not None:
            waited = True
            await flight.wait()
        event = anyio.Event()
        self._flights[key] = event
        try:
            yield waited
        finally:
            del self._flights[key]
            event.set()
