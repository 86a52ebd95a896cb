"""``memory://``: blobs in a dict, gone when the process exits."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from clients.castore.model import B3Digest
from clients.castore.streams import Blake3Hasher, BlobReader, rechunk
from tvixd.castore.urls import require_bare


class MemoryBlobService:
    """``BlobService`` in memory.

    A blob is kept as the tuple of chunks (at most ``CHUNK_SIZE`` each) it was
    received in, so neither put nor read ever copies a large buffer on the
    event loop; reads stream those chunks like every other backend.
    """

    def __init__(self) -> None:
        self._blobs: dict[B3Digest, tuple[bytes, ...]] = {}

    @classmethod
    async def from_url(cls, url: str) -> MemoryBlobService:
        require_bare(url, "memory")
        return cls()

    def __repr__(self) -> str:
        return f"MemoryBlobService({len(self._blobs)} blobs)"

    async def has(self, digest: bytes) -> bool:
        return B3Digest(digest) in self._blobs

    async def stat(self, digest: bytes) -> int | None:
        chunks = self._blobs.get(B3Digest(digest))
        return None if chunks is None else sum(len(chunk) for chunk in chunks)

    async def open_read(self, digest: bytes) -> BlobReader | None:
        d = B3Digest(digest)
        stored = self._blobs.get(d)
        if stored is None:
            return None

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in stored:
                yield chunk

        return BlobReader(chunks(), description=f"{d.short()} from memory")

    async def put(self, chunks: AsyncIterable[bytes]) -> B3Digest:
        hasher = Blake3Hasher()
        received: list[bytes] = []
        async for piece in rechunk(chunks):
            await hasher.update(piece)
            received.append(piece)
        digest = hasher.digest()
        self._blobs.setdefault(digest, tuple(received))
        return digest

    async def close(self) -> None:
        """Nothing to release."""
