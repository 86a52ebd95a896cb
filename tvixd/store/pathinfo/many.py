"""Looking up (and putting) many path infos at once, whatever the backend.

:func:`get_many` asks ``service.get_many(digests)`` when the backend has it
(``sqlite``: one query and one hand-over to its database thread;
``memory``), and otherwise ``get`` for each digest, ``concurrency`` at a time
(the gRPC adapter, the wrappers).  It is an optional extension of the
``PathInfoService`` protocol, not part of it: wrappers need not forward it.

:func:`put_many` asks ``service.put_many(infos)`` when the backend has it
(``sqlite``: one transaction, so one fsync, for all of them) and otherwise
``put`` for each, in order.

Errors of :func:`get_many` are per digest: the result holds, for each digest, its path info,
``None`` when absent, or the ``StorageError`` / ``InvalidRequest`` its
lookup raised.  When a backend's batched call fails as a whole, the digests
are asked again one by one, so one corrupt row fails only its own lookup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

import anyio

from clients.errors import InvalidRequest, StorageError
from clients.store.model import PathInfo
from clients.store.protocols import PathInfoService

__all__ = ["CONCURRENCY", "BatchedGet", "BatchedPut", "Lookup", "get_many", "put_many"]

CONCURRENCY = 64
"""``get`` calls in flight for a backend without ``get_many``."""

Lookup = PathInfo | None | StorageError | InvalidRequest
"""What one digest's lookup gave."""


@runtime_checkable
class BatchedGet(Protocol):
    """A backend that answers many digests in one call."""

    async def get_many(self, digests: Sequence[bytes]) -> list[PathInfo | None]: ...


@runtime_checkable
class BatchedPut(Protocol):
    """A backend that puts many path infos in one call (all or nothing)."""

    async def put_many(self, infos: Sequence[PathInfo]) -> list[PathInfo]: ...


async def put_many(service: PathInfoService, infos: Sequence[PathInfo]) -> list[PathInfo]:
    """Put each of ``infos``; what was stored, in order.  Errors as ``put``."""
    # getattr, not isinstance(service, BatchedPut): the same test (the method is there and not
    # None), without the cost of a runtime-checkable protocol's check, paid for every push
    batched = getattr(service, "put_many", None)
    if batched is not None:
        return list(await batched(infos))
    return [await service.put(info) for info in infos]


async def _one(get: Callable[[bytes], Awaitable[PathInfo | None]], digest: bytes) -> Lookup:
    try:
        return await get(digest)
    except (StorageError, InvalidRequest) as exc:
        return exc


async def get_many(
    service: PathInfoService, digests: Sequence[bytes], *, concurrency: int = CONCURRENCY
) -> list[Lookup]:
    """For each of ``digests``, in order: its path info, ``None``, or its lookup's error."""
    batched = getattr(service, "get_many", None)  # as put_many: isinstance(BatchedGet), cheaper
    if batched is not None:
        try:
            return list(await batched(digests))
        except (StorageError, InvalidRequest):
            pass  # which one? ask each below
    if len(digests) == 1:
        return [await _one(service.get, digests[0])]
    out: list[Lookup] = [None] * len(digests)
    limiter = anyio.CapacityLimiter(concurrency)

    async def fill(i: int) -> None:
        async with limiter:
            out[i] = await _one(service.get, digests[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(digests)):
            tg.start_soon(fill, i)
    return out
