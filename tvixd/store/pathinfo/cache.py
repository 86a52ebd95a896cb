"""``Cache(near, far)``: a read-through cache of path infos.

``get`` asks ``near`` first; on a miss it asks ``far``, and a path info found
there is put into ``near`` (then returned as ``far`` sent it).  ``put`` and
``list`` go to ``near`` only; ``close`` closes both (the cache owns them).

What it deliberately does not do:

* **No write-through.**  A put lands in ``near`` only; publishing to the far
  store is an explicit, separate step (it may need signing, and the far store
  may be read-only, like a Nix binary cache).
* **No negative caching.**  A miss in both is not remembered: the path may
  be built or uploaded any moment, and a remembered miss would hide it.
* **No castore copying.**  A path info is only a pointer to castore
  contents (its root node names blob and directory digests).  The cache
  copies the path info, not the blobs and directories below it, because it
  only sees a ``PathInfoService``.  For a cached path info to be usable, the
  castore services configured next to this cache must reach those digests —
  e.g. the far store's castore over gRPC, or a castore cache in front of it.
  Since castore contents are content-addressed, a digest found anywhere is
  the right contents.  Copying a path's castore closure belongs to whoever
  composes both halves (the substituter), not to this wrapper.
* **No invalidation.**  Path infos of input-addressed paths can differ by
  signatures between stores; ``near`` keeps the version it saw first until
  something puts another.
* **No listing of ``far``** (it may be a huge remote cache).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from clients.store.model import PathInfo
from clients.store.protocols import PathInfoService


class Cache:
    """``PathInfoService`` reading through ``near`` to ``far`` (see the module docstring)."""

    def __init__(self, near: PathInfoService, far: PathInfoService) -> None:
        self._near = near
        self._far = far

    def __repr__(self) -> str:
        return f"Cache(near={self._near!r}, far={self._far!r})"

    async def get(self, digest: bytes) -> PathInfo | None:
        info = await self._near.get(digest)
        if info is not None:
            return info
        info = await self._far.get(digest)
        if info is not None:
            await self._near.put(info)
        return info

    async def put(self, info: PathInfo) -> PathInfo:
        return await self._near.put(info)

    async def list(self) -> AsyncIterator[PathInfo]:
        async for info in self._near.list():
            yield info

    async def close(self) -> None:
        try:
            await self._near.close()
        finally:
            await self._far.close()
