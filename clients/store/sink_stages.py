"""The threads behind the walker of :mod:`clients.store.sink_ingest`: NAR hasher, store.

Items travel walker → :class:`Hash` → :class:`Store` through bounded queues:
``(NAR, [bytes, ...])`` pieces of NAR framing and small contents (hashed, not
passed on); ``(SMALL, [bytes, ...], [directory, ...])`` small files and the
directories closed since the last such item (the store builds them once the
files are stored); a large file as ``(LARGE, fd, path, inode, size)`` (an
open descriptor, which the hasher reads and closes — or only closes, after an
error), which the hasher turns into ``(BEGIN, path, inode, size)``,
``(CHUNK, buffer, n)``…, ``(END,)`` for the store, its chunk buffers coming
from (and going back to) a shared pool.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import stat
from collections.abc import Callable
from typing import Any

import blake3

from clients.castore.model import B3Digest
from clients.store.ingest_common import READ_FLAGS, shrank
from clients.store.sink import BlobSink
from nixcompat.nar import NarError

#: Large files move in chunks of this size (a multiple of the page size).
LARGE_CHUNK = 4 * 1024 * 1024
SHA_BATCH = 256 * 1024  # NAR bytes gathered per hasher item
OWN_PIECE = 8 * 1024  # writes at least this long are not copied into a NAR piece
NAR, SMALL, BEGIN, CHUNK, END, LARGE = range(6)  # queue item kinds


class NarBytes:
    """The walker's NAR sink: framing and small contents gathered into pieces for the hasher.

    ``size`` counts every NAR byte, also a large file's contents, which are not
    written here but read and hashed by the hasher from the file's descriptor
    (the walker flushes the pieces before it first, so the hasher still sees
    the NAR in order).  Writes of at least :data:`OWN_PIECE` bytes (a small
    file's contents) are passed on as they are, not copied: the walker would
    copy them holding the GIL, the hasher hashes them without it.
    """

    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        self._send = send
        self._pending = bytearray()
        self._pieces: list[bytes | bytearray] = []
        self._gathered = 0  # bytes in ``_pieces``
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if len(data) >= OWN_PIECE:
            if self._pending:
                self._pieces.append(self._pending)
                self._pending = bytearray()
            self._pieces.append(data)
            self._gathered += len(data)
        else:
            self._pending += data
        if len(self._pending) + self._gathered >= SHA_BATCH:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._pieces.append(self._pending)
            self._pending = bytearray()
        if self._pieces:
            pieces, self._pieces, self._gathered = self._pieces, [], 0
            self._send((NAR, pieces))


class Stage:
    """A pipeline thread: items from ``inbox`` until ``None``, then ``None`` to ``outbox``.

    An error is kept in ``error`` (the walker raises it) and later items are
    only drained; a chunk's buffer goes back to the pool once no later stage
    needs it.
    """

    def __init__(
        self, inbox: queue.Queue[Any], outbox: queue.Queue[Any] | None, pool: queue.Queue[mmap.mmap]
    ) -> None:
        self.inbox, self.outbox, self.pool = inbox, outbox, pool
        self.error: BaseException | None = None
        self.kept = False  # set by ``handle``: the chunk's buffer goes back to the pool later

    def handle(self, item: tuple[Any, ...]) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Called once at the end, and after an error."""

    def run(self) -> None:
        while (item := self.inbox.get()) is not None:
            forward = self.outbox is not None and item[0] != NAR and item[0] != LARGE
            self.kept = False
            try:
                if self.error is None:
                    self.handle(item)
                elif item[0] == LARGE:
                    os.close(item[1])  # not read: the descriptor is still ours to close
            except BaseException as exc:
                self.error = exc
                self.cleanup()
            finally:
                if forward and self.error is None:
                    assert self.outbox is not None
                    self.outbox.put(item)
                elif item[0] == CHUNK and not self.kept:
                    self.pool.put(item[1])
        self.cleanup()
        if self.outbox is not None:
            self.outbox.put(None)


class Hash(Stage):
    """NAR SHA-256, in NAR order; everything but NAR pieces goes on to the store thread.

    A large file comes as ``(LARGE, fd, path, inode, size)``: this thread reads it
    into chunk buffers from the pool (and closes ``fd``), hashes each chunk, and
    passes the store ``(BEGIN, path, inode, size)``, ``(CHUNK, buffer, n)``…,
    ``(END,)``.  So the walker goes on with the next files while a large one is
    read and hashed (reading it costs about as much as hashing it with SHA-256).
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.sha = hashlib.sha256()
        self.stopped = False  # set when the walk failed or was cancelled: read nothing more

    def handle(self, item: tuple[Any, ...]) -> None:
        if item[0] == NAR:
            update = self.sha.update
            for piece in item[1]:
                update(piece)
        elif item[0] == LARGE:
            if self.stopped:
                os.close(item[1])
                raise NarError("the ingest stopped")  # the walk's own error is raised
            self._read_large(*item[1:])

    def _read_large(self, fd: int, path: bytes, inode: tuple[int, int], size: int) -> None:
        outbox = self.outbox
        assert outbox is not None
        try:
            outbox.put((BEGIN, path, inode, size))
            remaining = size
            while remaining:
                if self.stopped:
                    raise NarError("the ingest stopped")  # the walk's own error is raised
                buffer = self.pool.get()  # back from the store thread or its writes
                try:
                    with memoryview(buffer) as whole, whole[: min(remaining, LARGE_CHUNK)] as view:
                        n = fill(fd, view, path, size, remaining)
                        self.sha.update(view)
                except BaseException:
                    self.pool.put(buffer)
                    raise
                outbox.put((CHUNK, buffer, n))
                remaining -= n
            outbox.put((END,))
        finally:
            os.close(fd)


class Store(Stage):
    """The store thread: contents into the sink, file digests in order."""

    def __init__(
        self,
        sink: BlobSink,
        inbox: queue.Queue[Any],
        pool: queue.Queue[mmap.mmap],
        *,
        digests: list[B3Digest],
        on_directory: Callable[[Any], None],
    ) -> None:
        super().__init__(inbox, None, pool)
        self.sink = sink
        self.digests = digests  # per file, in NAR order
        self.on_directory = on_directory
        self._large: Any = None  # LargeBlobWriter, or a blake3 hasher when hashing first
        self._file: tuple[bytes, tuple[int, int], int] = (b"", (0, 0), 0)
        self._write_first = True

    def cleanup(self) -> None:
        if self._large is not None and not isinstance(self._large, blake3.blake3):
            self._large.discard()
        self._large = None

    def handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == SMALL:
            put, digests = self.sink.put, self.digests
            for data in item[1]:
                digests.append(put(data))
            for directory in item[2]:
                self.on_directory(directory)
        elif kind == CHUNK:
            if isinstance(self._large, blake3.blake3):
                with memoryview(item[1])[: item[2]] as view:
                    self._large.update(view)
            else:
                self._write_chunk(item[1], item[2])
        elif kind == BEGIN:
            self._file = item[1:]
            self._large = self.sink.begin() if self._write_first else blake3.blake3()
        else:
            self.digests.append(self._end_large())

    def _write_chunk(self, buffer: mmap.mmap, n: int) -> None:
        """Hand a chunk to the large-blob writer, which returns the buffer to the pool when done."""
        self.kept = True  # ``write`` calls ``release`` in every case, also when it raises
        self._large.write(memoryview(buffer)[:n], lambda: self.pool.put(buffer))

    def _end_large(self) -> B3Digest:
        large, self._large = self._large, None
        if not isinstance(large, blake3.blake3):
            before = self.sink.blobs_written
            digest: B3Digest = large.finish()
            self._write_first = self.sink.blobs_written > before
            return digest
        digest = B3Digest(large.digest())
        self._write_first = not self.sink.has(digest)
        if self._write_first:
            self._write_again(digest)
        return digest

    def _write_again(self, digest: B3Digest) -> None:
        """Write a file hashed before from the same inode; its blake3 must not have changed."""
        path, inode, size = self._file
        fd = os.open(path, READ_FLAGS)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != inode or not stat.S_ISREG(st.st_mode):
                raise NarError(f"{os.fsdecode(path)!r} was replaced while being ingested")
            buffer = mmap.mmap(-1, LARGE_CHUNK)
            self._large = writer = self.sink.begin()
            remaining = size
            with memoryview(buffer) as view:
                while remaining:
                    n = fill(fd, view[: min(remaining, LARGE_CHUNK)], path, size, remaining)
                    writer.write(view[:n])
                    remaining -= n
            self._large = None
            got = writer.finish()
        finally:
            os.close(fd)
        if got != digest:
            raise NarError(
                f"{os.fsdecode(path)!r} changed while being ingested "
                f"(blake3 {digest} when hashed, {got} when written)"
            )


def fill(fd: int, view: memoryview, path: bytes, size: int, remaining: int) -> int:
    """Read exactly ``len(view)`` bytes into ``view`` (a file that ends early: NarError)."""
    got = 0
    while got < len(view):
        n = os.readv(fd, [view[got:]])
        if not n:
            raise shrank(path, size, remaining - got)
        got += n
    return got
