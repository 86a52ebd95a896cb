"""The objectstore sink's large-blob writes in flight (``write(data, release)``) and its creators.

Several chunk writes of one blob run at once, each buffer is handed back
through ``release`` exactly once — after its write *and* its hashing —
also when the blob is discarded; blobs from several creator threads all
end up named with the right contents after ``flush``.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import anyio
import blake3
import pytest

from clients.castore.model import B3Digest
from clients.errors import StorageError
from clients.store.sink import HashingSink, LargeBlobWriter
from tvixd.castore.blobs.objectstore import ObjectStoreBlobService
from tvixd.castore.blobs.sink import (
    CREATE_BATCH,
    LIST_MAX,
    WRITES_IN_FLIGHT,
    ObjectStoreSink,
)

CHUNK = 1 << 20


class Pool:
    """Page-aligned buffers handed out and given back; records every release."""

    def __init__(self, count: int) -> None:
        self.free = [mmap.mmap(-1, CHUNK) for _ in range(count)]
        self.released: Counter[int] = Counter()
        self.lock = threading.Lock()

    def take(self, fill: bytes) -> mmap.mmap:
        with self.lock:
            buffer = self.free.pop()
        buffer[: len(fill)] = fill
        return buffer

    def releaser(self, buffer: mmap.mmap) -> Callable[[], None]:
        def release() -> None:
            with self.lock:
                self.released[id(buffer)] += 1
                self.free.append(buffer)

        return release


def write_blob(
    sink: ObjectStoreSink, pool: Pool, parts: list[bytes]
) -> tuple[LargeBlobWriter, int]:
    writer = sink.begin()
    write_blob_into(writer, pool, parts)
    return writer, len(parts)


def write_blob_into(writer: LargeBlobWriter, pool: Pool, parts: list[bytes]) -> None:
    for part in parts:
        buffer = pool.take(part)
        writer.write(memoryview(buffer)[: len(part)], pool.releaser(buffer))


def in_flight(store: ObjectStoreBlobService) -> None:
    sink = ObjectStoreSink(store)
    pool = Pool(WRITES_IN_FLIGHT + 2)
    try:
        # aligned chunks, then an unaligned tail (written buffered), several writes at a time
        parts = [os.urandom(CHUNK) for _ in range(7)] + [os.urandom(5000)]
        writer, count = write_blob(sink, pool, parts)
        digest = writer.finish()
        sink.flush()  # the last writes may still be in flight after finish, not after flush
        assert sum(pool.released.values()) == count
        assert len(pool.free) == WRITES_IN_FLIGHT + 2  # every buffer back, none twice
        whole = b"".join(parts)
        assert digest == B3Digest(blake3.blake3(whole).digest())
        assert store.path(digest).read_bytes() == whole

        # a discarded blob hands back its buffers too, and stores nothing
        pool.released.clear()
        dropped, count = write_blob(sink, pool, [os.urandom(CHUNK) for _ in range(5)])
        dropped.discard()
        assert sum(pool.released.values()) == count
        late = pool.take(b"late")
        with pytest.raises(StorageError, match="discarded"):
            dropped.write(memoryview(late)[:4], pool.releaser(late))
        assert len(pool.free) == WRITES_IN_FLIGHT + 2  # even the refused write's buffer

        # many small blobs over the creator threads, mixed with the large one
        smalls = [os.urandom(100) + i.to_bytes(4, "big") for i in range(CREATE_BATCH * 5 + 3)]
        digests = [sink.put(data) for data in smalls]
        sink.flush()
        assert store.path(digest).read_bytes() == whole
        for data, small in zip(smalls, digests, strict=True):
            assert store.path(small).read_bytes() == data
        assert sink.blobs_written == 1 + len(smalls)
    finally:
        sink.close()
    assert os.listdir(store.tmp) == []


def test_writes_in_flight_release_every_buffer_once(tmp_path: Path) -> None:
    store = anyio.run(ObjectStoreBlobService.open, tmp_path / "blobs")
    in_flight(store)
    anyio.run(store.close)


def test_hashing_sink_releases_at_once() -> None:
    released: list[int] = []
    writer = HashingSink().begin()
    writer.write(b"abc", lambda: released.append(1))
    writer.write(b"def")
    assert released == [1]
    assert writer.finish() == B3Digest(blake3.blake3(b"abcdef").digest())


def failing(store: ObjectStoreBlobService) -> None:
    sink = ObjectStoreSink(store)
    pool = Pool(WRITES_IN_FLIGHT + 2)
    try:
        writer = sink.begin()
        full = os.open("/dev/full", os.O_WRONLY)
        try:  # every later write of this blob fails with ENOSPC
            os.dup2(full, writer._temp.fd)  # type: ignore[attr-defined]
        finally:
            os.close(full)
        with pytest.raises(StorageError, match="cannot write a blob"):
            write_blob_into(writer, pool, [b"x" * 4096] * (WRITES_IN_FLIGHT + 2))
        assert len(pool.free) == WRITES_IN_FLIGHT + 2  # buffers back after the failure
        writer.discard()
        sink.flush()
    finally:
        sink.close()


def test_failed_write_raises_and_releases(tmp_path: Path) -> None:
    store = anyio.run(ObjectStoreBlobService.open, tmp_path / "blobs")
    failing(store)
    anyio.run(store.close)
    assert os.listdir(tmp_path / "blobs" / "tmp") == []


@pytest.mark.parametrize("size", [100, 5000], ids=["padding-only", "pages-then-padding"])
def test_a_failed_padded_write_reports_its_own_error(tmp_path: Path, size: int) -> None:
    """A short chunk goes out through a zero-padded page; when that write fails (here
    ENOSPC), the caller gets a StorageError naming it, and the sink stays usable."""
    store = anyio.run(ObjectStoreBlobService.open, tmp_path / "blobs")
    sink = ObjectStoreSink(store)
    pool = Pool(2)
    try:
        writer = sink.begin()
        full = os.open("/dev/full", os.O_WRONLY)
        try:
            os.dup2(full, writer._temp.fd)  # type: ignore[attr-defined]
        finally:
            os.close(full)
        write_blob_into(writer, pool, [os.urandom(size)])
        writer.finish()  # the write's outcome is the creator thread's: raised by the flush
        with pytest.raises(StorageError, match="No space left on device"):
            sink.flush()
        assert len(pool.free) == 2
        data = os.urandom(5000)
        writer, _ = write_blob(sink, pool, [data])  # the next blob is written whole
        digest = writer.finish()
        sink.flush()
        assert store.path(digest).read_bytes() == data
    finally:
        sink.close()
    anyio.run(store.close)


@pytest.mark.parametrize(
    "sizes",
    [
        [CHUNK, 5000],  # the usual large file: whole chunks, then a short tail
        [5000],  # shorter than a page
        [3 * 4096 + 1],  # one byte past whole pages
        [CHUNK, 4096],  # aligned to the end: nothing padded
        [CHUNK, 5000, CHUNK, 3],  # more after a short chunk: written over the padding
    ],
    ids=["tail", "short", "page-plus-one", "aligned", "short-in-the-middle"],
)
def test_short_chunks_keep_the_exact_contents_and_size(tmp_path: Path, sizes: list[int]) -> None:
    """A chunk that is not whole pages goes out padded to a page (direct I/O where the
    file system allows it): the blob still holds exactly the bytes written, no padding."""
    store = anyio.run(ObjectStoreBlobService.open, tmp_path / "blobs")
    sink = ObjectStoreSink(store)
    pool = Pool(WRITES_IN_FLIGHT + 2)
    try:
        parts = [os.urandom(size) for size in sizes]
        writer, _ = write_blob(sink, pool, parts)
        digest = writer.finish()
        sink.flush()
        whole = b"".join(parts)
        assert digest == B3Digest(blake3.blake3(whole).digest())
        assert store.path(digest).stat().st_size == len(whole)
        assert store.path(digest).read_bytes() == whole
    finally:
        sink.close()
    anyio.run(store.close)


@pytest.mark.parametrize("list_max", [LIST_MAX, 0], ids=["listed", "stat-per-blob"])
def test_present_blobs_are_skipped_and_late_ones_linked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, list_max: int
) -> None:
    """The sink knows the stored blobs (from each fan-out directory's listing, or a ``stat``
    per blob for large directories): it writes none of them again; a blob another writer
    stores after the listing is written once more and linked over it, contents intact
    (asked by ``stat``, it is found)."""
    monkeypatch.setattr("tvixd.castore.blobs.sink.LIST_MAX", list_max)
    store = anyio.run(ObjectStoreBlobService.open, tmp_path / "blobs")
    old = [os.urandom(200) + bytes([i]) for i in range(40)]
    first = ObjectStoreSink(store)
    try:
        for data in old:
            first.put(data)
        first.flush()
    finally:
        first.close()
    sink = ObjectStoreSink(store)
    late = os.urandom(300)
    try:
        assert [sink.put(data) for data in old] == [B3Digest.of(data) for data in old]
        assert sink.blobs_written == 0  # all present
        # lists (or stats) the late blob's fan-out: absent; a missing fan-out counts as empty
        listed = bool(list_max) or not store.path(B3Digest.of(late)).parent.exists()
        assert not sink.has(B3Digest.of(late))
        other = ObjectStoreSink(store)  # another writer stores it meanwhile
        try:
            other.put(late)
            other.flush()
        finally:
            other.close()
        assert sink.put(late) == B3Digest.of(late)
        sink.flush()
        assert sink.blobs_written == (1 if listed else 0)
    finally:
        sink.close()
    assert store.path(B3Digest.of(late)).read_bytes() == late
    for data in old:
        assert store.path(B3Digest.of(data)).read_bytes() == data
    anyio.run(store.close)
    assert os.listdir(store.tmp) == []
