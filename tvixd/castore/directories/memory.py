"""``memory://``: directories in a dict, gone when the process exits."""

from __future__ import annotations

from collections.abc import Sequence

from clients.castore.model import B3Digest, Directory
from tvixd.castore.directories.graph import LocalDirectoryService
from tvixd.castore.urls import require_bare


class MemoryDirectoryService(LocalDirectoryService):
    """``DirectoryService`` in memory; a put stream commits without awaiting, so atomically."""

    def __init__(self) -> None:
        self._directories: dict[B3Digest, Directory] = {}

    @classmethod
    async def from_url(cls, url: str) -> MemoryDirectoryService:
        require_bare(url, "memory")
        return cls()

    def __repr__(self) -> str:
        return f"MemoryDirectoryService({len(self._directories)} directories)"

    async def get(self, digest: bytes) -> Directory | None:
        return self._directories.get(B3Digest(digest))

    async def _stored_size(self, digest: B3Digest) -> int | None:
        directory = self._directories.get(digest)
        return None if directory is None else directory.size()

    async def _commit(self, directories: Sequence[Directory]) -> None:
        for directory in directories:
            self._directories.setdefault(directory.digest(), directory)

    async def close(self) -> None:
        """Nothing to release."""
