"""Blob streaming helpers shared by every blob backend and adapter.

* :class:`BlobReader` — what ``BlobService.open_read`` returns: an async
  iterator of chunks that must be closed (``async with reader: ...``).
* :class:`Blake3Hasher` — incremental blake3 that hashes large buffers on a
  worker thread, so the event loop never blocks on hashing.
* :func:`rechunk` — re-slices a byte stream into pieces of at most
  :data:`CHUNK_SIZE` (what goes into one gRPC message).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import blake3

from clients.castore.model import B3Digest

if TYPE_CHECKING:
    from clients.castore.protocols import BlobService

#: The largest chunk sent in one message or read in one go (bounded memory per stream).
CHUNK_SIZE = 1 << 20
#: Buffers larger than this are hashed on a worker thread (blake3 releases the GIL).
INLINE_HASH_LIMIT = 64 << 10


class Blake3Hasher:
    """Incremental blake3 over a stream; ``size`` counts the bytes seen so far."""

    def __init__(self) -> None:
        self._hasher = blake3.blake3()
        self.size = 0

    async def update(self, data: bytes | bytearray | memoryview) -> None:
        """Hash ``data``; large buffers go to a worker thread (not cancellable mid-call)."""
        if len(data) > INLINE_HASH_LIMIT:
            await anyio.to_thread.run_sync(self._hasher.update, data)
        else:
            self._hasher.update(data)
        self.size += len(data)

    def digest(self) -> B3Digest:
        return B3Digest(self._hasher.digest())


def _as_view(chunk: object) -> memoryview:
    if not isinstance(chunk, bytes | bytearray | memoryview):
        raise TypeError(f"blob chunks are bytes, got {type(chunk).__name__}")
    return memoryview(chunk).cast("B")


async def rechunk(
    chunks: AsyncIterable[bytes], size: int = CHUNK_SIZE
) -> AsyncGenerator[bytes, None]:
    """The bytes of ``chunks`` as pieces of exactly ``size`` bytes, the last one possibly shorter.

    Small chunks are coalesced and large ones split, so at most ``size`` bytes
    are buffered.  An empty stream yields nothing.
    """
    buffer = bytearray()
    async for chunk in chunks:
        view = _as_view(chunk)
        if buffer:
            take = min(size - len(buffer), len(view))
            buffer += view[:take]
            view = view[take:]
            if len(buffer) == size:
                yield bytes(buffer)
                buffer.clear()
        while len(view) >= size:
            yield bytes(view[:size])
            view = view[size:]
        buffer += view
    if buffer:
        yield bytes(buffer)


async def chunks_of(data: bytes, size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
    """``data`` as an async stream of pieces of at most ``size`` bytes (nothing when empty)."""
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])


class BlobReader:
    """An open blob: iterate it for its chunks, then close it (or use ``async with``).

    Chunks are non-empty ``bytes`` of at most :data:`CHUNK_SIZE` bytes for our
    backends (a remote may send other sizes).  ``close`` releases whatever the
    backend acquired when the blob was opened; it is idempotent, and iterating
    a closed reader ends the iteration.  A backend that detects corruption
    while streaming raises ``StorageError`` from the iteration.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None]] | None = None,
        *,
        description: str = "blob",
    ) -> None:
        self._chunks = chunks
        self._close = close
        self._closed = False
        self._description = description

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<BlobReader {self._description} {state}>"

    def __aiter__(self) -> BlobReader:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        return await self._chunks.__anext__()

    async def read_all(self) -> bytes:
        """The rest of the blob as one ``bytes`` (memory grows with the blob)."""
        out = bytearray()
        async for chunk in self:
            out += chunk
        return bytes(out)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            if self._close is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await self._close()

    async def __aenter__(self) -> BlobReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def put_bytes(blobs: BlobService, data: bytes) -> B3Digest:
    """Store ``data`` in ``blobs`` in chunks; the digest the service computed.

    A service with a ``put_bytes(data)`` method of its own (the objectstore: a
    small blob without the streams) is given the bytes directly.
    """
    own = getattr(blobs, "put_bytes", None)
    if own is not None:
        digest: B3Digest = await own(data)
        return digest
    return await blobs.put(chunks_of(data))


async def read_blob(blobs: BlobService, digest: bytes) -> bytes | None:
    """The whole blob, or None when absent (memory grows with the blob: for small blobs)."""
    reader = await blobs.open_read(digest)
    if reader is None:
        return None
    async with reader:
        return await reader.read_all()
