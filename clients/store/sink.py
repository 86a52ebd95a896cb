"""Thread-side bulk blob writing: the optional capability the fast ingest path uses.

A :class:`~clients.castore.protocols.BlobService` that stores blobs in this
process (the objectstore) may also offer ``open_sink()`` (a
:class:`SinkProvider`): a *synchronous* :class:`BlobSink` driven from one
worker thread at a time, never from the event loop.  The sink hashes what it
receives (it names blobs itself, as ``put`` does), skips blobs it already
has, and may defer durability: a blob it accepted is only guaranteed
durable and visible under its digest after :meth:`BlobSink.flush` returns.
That lets a backend make a whole group of blobs durable at once (one
``syncfs`` instead of one ``fsync`` per file) without ever exposing a blob
whose contents are not durable.

:class:`HashingSink` keeps nothing (benchmarks: the pipeline's own cost).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import blake3

from clients.castore.model import B3Digest

Buffer = bytes | bytearray | memoryview


class LargeBlobWriter(Protocol):
    """One blob too large to hold in memory, written chunk by chunk (same thread as the sink)."""

    def write(self, data: Buffer, release: Callable[[], None] | None = None) -> None:
        """Append ``data``.

        Without ``release``, ``data`` is no longer used when this returns (the
        buffer may be reused).  With it, the writer may keep using ``data``
        after returning (a write still in flight) and calls ``release()``
        exactly once, from any thread, when it is done with it — also when
        the write fails or the blob is discarded.  Every release has been
        called by the time :meth:`discard` or the sink's ``flush`` returns
        (a backend may still be writing after :meth:`finish`; its write
        errors then surface from a later sink call or ``flush``).

        Page-aligned, writable buffers whose lengths are multiples of 4096
        let a backend write without copying through the page cache.
        """
        ...

    def finish(self) -> B3Digest:
        """The blob's digest; it is stored (or was present) once the sink is flushed."""
        ...

    def discard(self) -> None:
        """Drop what was written (idempotent; also fine after :meth:`finish`)."""
        ...


class BlobSink(Protocol):
    """Synchronous blob writer; see the module docs for the durability contract."""

    def put(self, data: Buffer) -> B3Digest:
        """Store a blob held in memory; its digest (the sink hashes ``data`` itself)."""
        ...

    def begin(self) -> LargeBlobWriter:
        """Start a streamed blob."""
        ...

    def has(self, digest: bytes) -> bool:
        """Whether the blob is stored or accepted by this sink already."""
        ...

    def flush(self) -> None:
        """Block until every accepted blob is durable and visible; raise its first failure."""
        ...

    def close(self) -> None:
        """Release resources; blobs accepted but not flushed may or may not be stored (whole)."""
        ...

    @property
    def blobs_written(self) -> int:
        """Blobs this sink wrote (the ones it already had are not counted)."""
        ...

    @property
    def bytes_written(self) -> int:
        """Their bytes."""
        ...


@runtime_checkable
class SinkProvider(Protocol):
    """A blob service that offers a :class:`BlobSink` (call ``open_sink`` on a worker thread)."""

    def open_sink(self) -> BlobSink: ...


class _HashingLarge:
    def __init__(self, sink: HashingSink) -> None:
        self._sink = sink
        self._hasher = blake3.blake3()
        self._size = 0

    def write(self, data: Buffer, release: Callable[[], None] | None = None) -> None:
        try:
            self._hasher.update(data)
            self._size += len(data)
        finally:
            if release is not None:
                release()

    def finish(self) -> B3Digest:
        self._sink.count(self._size)
        return B3Digest(self._hasher.digest())

    def discard(self) -> None:
        pass


class HashingSink:
    """A :class:`BlobSink` that hashes and keeps nothing (``has`` is always False)."""

    def __init__(self) -> None:
        self._blobs = self._bytes = 0

    def count(self, size: int) -> None:
        self._blobs += 1
        self._bytes += size

    def put(self, data: Buffer) -> B3Digest:
        self.count(len(data))
        return B3Digest(blake3.blake3(data).digest())

    def begin(self) -> LargeBlobWriter:
        return _HashingLarge(self)

    def has(self, digest: bytes) -> bool:
        return False

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def blobs_written(self) -> int:
        return self._blobs

    @property
    def bytes_written(self) -> int:
        return self._bytes
