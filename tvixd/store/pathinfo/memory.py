"""``memory://``: path infos in a dict, gone when the process exits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from clients.store.model import PathInfo, store_path_digest
from tvixd.castore.urls import require_bare


class MemoryPathInfoService:
    """``PathInfoService`` in memory; ``list`` walks a snapshot taken when it starts."""

    def __init__(self) -> None:
        self._infos: dict[bytes, PathInfo] = {}

    @classmethod
    async def from_url(cls, url: str) -> MemoryPathInfoService:
        require_bare(url, "memory")
        return cls()

    def __repr__(self) -> str:
        return f"MemoryPathInfoService({len(self._infos)} path infos)"

    async def get(self, digest: bytes) -> PathInfo | None:
        return self._infos.get(store_path_digest(digest, "digest"))

    async def get_many(self, digests: Sequence[bytes]) -> list[PathInfo | None]:
        """:meth:`get` of each digest, in order."""
        return [self._infos.get(store_path_digest(digest, "digest")) for digest in digests]

    async def put(self, info: PathInfo) -> PathInfo:
        info.validate()
        self._infos[info.digest] = info
        return info

    async def put_many(self, infos: Sequence[PathInfo]) -> list[PathInfo]:
        """:meth:`put` of each (all validated before any is stored)."""
        for info in infos:
            info.validate()
        for info in infos:
            self._infos[info.digest] = info
        return list(infos)

    async def list(self) -> AsyncIterator[PathInfo]:
        for info in list(self._infos.values()):
            yield info

    async def close(self) -> None:
        """Nothing to release."""
