"""The castore service interfaces: blobs and directories.

Every backend (memory, objectstore, sqlite, the gRPC adapters) implements
these, and one conformance suite per interface (``tests/castore``) holds them
to the contract written here.  Common rules:

* Absent is ``None`` (or an empty stream), never an exception.
* A digest argument must be 32 bytes; any other length raises
  :class:`~clients.errors.InvalidRequest` (so does input breaking a rule).
* Backend failures raise :class:`~clients.errors.StorageError`.
* Nothing blocks the event loop; services that own resources release them in
  ``close()`` (idempotent), after which they must not be used.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from types import TracebackType
from typing import Protocol

from clients.castore.model import B3Digest, Directory
from clients.castore.streams import BlobReader


class BlobService(Protocol):
    """Content-addressed blobs, identified by the blake3 digest of their bytes."""

    async def has(self, digest: bytes) -> bool:
        """Whether the blob is present."""
        ...

    async def stat(self, digest: bytes) -> int | None:
        """The blob's size in bytes, or None when absent."""
        ...

    async def open_read(self, digest: bytes) -> BlobReader | None:
        """An open reader streaming the blob in chunks, or None when absent.

        Memory stays bounded by the chunk size whatever the blob's size.  The
        caller closes the reader (``async with reader: async for chunk in reader``).
        """
        ...

    async def put(self, chunks: AsyncIterable[bytes]) -> B3Digest:
        """Store the concatenation of ``chunks``; the digest, computed by the receiver.

        The receiver hashes while receiving; a put is all or nothing (a failed
        or cancelled put leaves nothing under any digest).  Putting a blob
        that is already present is a no-op that returns the same digest.
        """
        ...

    async def close(self) -> None:
        """Release resources (connections, files)."""
        ...


class DirectoryPutter(Protocol):
    """One put stream: directories sent leaves first, the root last, accepted whole or not at all.

    ``put`` checks each directory as it arrives (``Directory.validate`` and:
    every child directory was sent earlier in this stream or is already
    stored, and its size matches) and raises ``InvalidRequest`` at the first
    violation — remote backends may report violations only at ``close``.
    ``close`` checks the stream as a whole (not empty; every directory is
    reachable from the root, the last one sent), stores everything atomically
    and returns the root digest.  Leaving the ``async with`` block without
    ``close`` — or after any error — stores nothing.  A putter is used once.
    """

    async def put(self, directory: Directory) -> None:
        """Add the next directory of the stream."""
        ...

    async def close(self) -> B3Digest:
        """Validate the whole stream, store it, return the root (last) digest."""
        ...

    async def __aenter__(self) -> DirectoryPutter: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Abort (store nothing) unless ``close`` succeeded."""
        ...


class DirectoryService(Protocol):
    """Directories, identified by the blake3 digest of their canonical encoding."""

    async def get(self, digest: bytes) -> Directory | None:
        """The directory, or None when absent."""
        ...

    def get_recursive(self, root: bytes) -> AsyncIterator[Directory]:
        """The root, then every directory below it breadth-first, each exactly once.

        Absent root: the stream is empty (no exception), so the first item is
        always the root.  The graph is walked lazily, not loaded whole.  A
        child missing from a stored graph raises ``StorageError``.
        """
        ...

    async def put(self, directory: Directory) -> B3Digest:
        """Store one directory whose child directories are already stored; its digest."""
        ...

    def put_multiple(self) -> DirectoryPutter:
        """A put stream for a whole graph (see :class:`DirectoryPutter`).

        ``async with svc.put_multiple() as p: await p.put(leaf) ...; root = await p.close()``
        """
        ...

    async def close(self) -> None:
        """Release resources (connections, database handles)."""
        ...
