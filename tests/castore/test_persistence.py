"""The persistent backends: reopening, on-disk layout, crash safety and corruption detection.

Also the objectstore's grouped puts (concurrent small puts stored together)
and the ``_Grouped`` primitive behind them.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import blake3
import pytest
from grpclib.testing import ChannelFor

from clients.castore.grpc import GrpcBlobService
from clients.castore.model import Directory
from clients.castore.streams import CHUNK_SIZE, put_bytes, read_blob
from clients.errors import InvalidRequest, StorageError
from tests.castore.helpers import diamond
from tvixd.castore.blobs.objectstore import ObjectStoreBlobService, _Grouped
from tvixd.castore.directories.memory import MemoryDirectoryService
from tvixd.castore.directories.sqlite import SqliteDirectoryService
from tvixd.castore.server import castore_servicers


def _sql(path: Path, query: str, *args: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        with conn:
            return conn.execute(query, args).fetchall()
    finally:
        conn.close()


async def _put_all(service: SqliteDirectoryService, *directories: Directory) -> None:
    async with service.put_multiple() as putter:
        for directory in directories:
            await putter.put(directory)
        await putter.close()


def _listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


async def _sql_async(path: Path, query: str, *args: object) -> list[tuple[Any, ...]]:
    return await anyio.to_thread.run_sync(lambda: _sql(path, query, *args))


@pytest.mark.asyncio
async def test_objectstore_survives_reopen_and_layout(tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 1)
    store = await ObjectStoreBlobService.open(tmp_path)
    digest = await put_bytes(store, data)
    await store.close()

    path = tmp_path / digest.hex()[:2] / digest.hex()
    assert store.path(digest) == path
    assert path.read_bytes() == data
    assert path.stat().st_mode & 0o777 == 0o444
    assert _listing(tmp_path / "tmp") == []

    reopened = await ObjectStoreBlobService.open(tmp_path)
    assert await reopened.stat(digest) == len(data)
    assert await read_blob(reopened, digest) == data


@pytest.mark.asyncio
async def test_objectstore_failed_put_leaves_no_temp_file(tmp_path: Path) -> None:
    store = await ObjectStoreBlobService.open(tmp_path)

    async def failing() -> AsyncIterator[bytes]:
        yield os.urandom(CHUNK_SIZE + 5)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await store.put(failing())
    assert _listing(tmp_path / "tmp") == []
    assert _listing(tmp_path) == ["tmp"]


@pytest.mark.asyncio
async def test_objectstore_cancelled_put_leaves_no_temp_file(tmp_path: Path) -> None:
    store = await ObjectStoreBlobService.open(tmp_path)
    started = anyio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield os.urandom(2 * CHUNK_SIZE)
        started.set()
        await anyio.sleep_forever()
        yield b""

    async with anyio.create_task_group() as tg:
        tg.start_soon(store.put, slow())
        with anyio.fail_after(10):
            await started.wait()
        tg.cancel_scope.cancel()
    assert _listing(tmp_path / "tmp") == []


@pytest.mark.asyncio
async def test_objectstore_sweeps_stale_temp_files_only(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    stale = tmp_path / "tmp" / "put-stale"
    fresh = tmp_path / "tmp" / "put-fresh"
    stale.write_bytes(b"half a blob")
    fresh.write_bytes(b"a put in progress")
    old = time.time() - 3 * 24 * 3600
    os.utime(stale, (old, old))
    await ObjectStoreBlobService.open(tmp_path)
    assert not stale.exists()
    assert fresh.exists()


@pytest.mark.asyncio
async def test_objectstore_detects_corrupt_blob(tmp_path: Path) -> None:
    store = await ObjectStoreBlobService.open(tmp_path)
    digest = await put_bytes(store, b"original contents")
    path = store.path(digest)
    path.chmod(0o644)
    path.write_bytes(b"tampered contents")
    with pytest.raises(StorageError, match="is corrupt"):
        await read_blob(store, digest)


@pytest.mark.asyncio
async def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    db = tmp_path / "state" / "directories.db"
    leaf, shared, left, right, root = diamond()
    service = await SqliteDirectoryService.open(db)
    async with service.put_multiple() as putter:
        for directory in (leaf, shared, left, right, root):
            await putter.put(directory)
        await putter.close()
    await service.close()
    await service.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        await service.get(root.digest())

    assert await _sql_async(db, "PRAGMA journal_mode") == [("wal",)]
    rows = await _sql_async(db, "SELECT digest, data FROM directories")
    assert {(bytes(d), bytes(x)) for d, x in rows} == {
        (d.digest(), d.encode()) for d in (leaf, shared, left, right, root)
    }

    reopened = await SqliteDirectoryService.open(db)
    try:
        got = [d async for d in reopened.get_recursive(root.digest())]
        assert got == [root, left, right, shared, leaf]
    finally:
        await reopened.close()


@pytest.mark.asyncio
async def test_sqlite_rejected_stream_writes_no_rows(tmp_path: Path) -> None:
    db = tmp_path / "directories.db"
    leaf, shared, left, right, _ = diamond()
    service = await SqliteDirectoryService.open(db)
    try:
        with pytest.raises(InvalidRequest, match="not reachable"):
            await _put_all(service, leaf, shared, left, right, leaf)
        assert await _sql_async(db, "SELECT count(*) FROM directories") == [(0,)]
    finally:
        await service.close()


@pytest.mark.asyncio
async def test_sqlite_detects_corrupt_rows_and_missing_children(tmp_path: Path) -> None:
    db = tmp_path / "directories.db"
    leaf, shared, left, right, root = diamond()
    service = await SqliteDirectoryService.open(db)
    try:
        async with service.put_multiple() as putter:
            for directory in (leaf, shared, left, right, root):
                await putter.put(directory)
            await putter.close()
        await _sql_async(
            db, "UPDATE directories SET data = ? WHERE digest = ?", b"", bytes(left.digest())
        )
        with pytest.raises(StorageError, match=f"directory {left.digest()} .* is corrupt"):
            await service.get(left.digest())
        await _sql_async(db, "DELETE FROM directories WHERE digest = ?", bytes(leaf.digest()))
        with pytest.raises(StorageError, match="missing from the store"):
            async for _ in service.get_recursive(shared.digest()):
                pass
    finally:
        await service.close()


@pytest.mark.asyncio
async def test_sqlite_refuses_unknown_schema(tmp_path: Path) -> None:
    db = tmp_path / "directories.db"
    await _sql_async(db, "PRAGMA user_version = 99")
    with pytest.raises(StorageError, match="schema version 99"):
        await SqliteDirectoryService.open(db)


@pytest.mark.asyncio
async def test_corrupt_blob_surfaces_through_grpc(tmp_path: Path) -> None:
    store = await ObjectStoreBlobService.open(tmp_path / "blobs")
    data = os.urandom(CHUNK_SIZE + 10)
    digest = await put_bytes(store, data)
    path = store.path(digest)
    path.chmod(0o644)
    path.write_bytes(data[:-1] + b"!")
    async with ChannelFor(castore_servicers(store, MemoryDirectoryService())) as channel:
        client = GrpcBlobService(channel, target="in-process")
        with pytest.raises(
            StorageError, match=r"INTERNAL: BlobService\.Read: blob file .* is corrupt"
        ):
            await read_blob(client, digest)


def _blob_with_prefix(prefix: str, rng: random.Random) -> bytes:
    """Random bytes whose blake3 hex digest starts with ``prefix`` (two hex digits)."""
    while True:
        data = rng.randbytes(rng.randrange(1, 5000))
        if blake3.blake3(data).hexdigest().startswith(prefix):
            return data


def _store_listing(root: Path) -> dict[str, list[str]]:
    return {d.name: sorted(os.listdir(d)) for d in sorted(root.iterdir()) if d.is_dir()}


@pytest.mark.asyncio
@pytest.mark.parametrize("anonymous", [True, False], ids=["o_tmpfile", "named-temp"])
async def test_objectstore_many_concurrent_puts(tmp_path: Path, anonymous: bool) -> None:
    """Grouped small puts and streamed large ones, with duplicates, in both temp-file modes."""
    rng = random.Random(11)
    store = await ObjectStoreBlobService.open(tmp_path)
    if not anonymous:
        store._anonymous = False  # the fallback for file systems without O_TMPFILE
    blobs = [rng.randbytes(rng.choice([0, 1, 100, 4096, 70_000])) for _ in range(150)]
    blobs += blobs[:30]  # duplicates, some stored concurrently with their twin
    blobs += [rng.randbytes(CHUNK_SIZE + 1), rng.randbytes(3 * CHUNK_SIZE)]
    got: dict[int, bytes] = {}

    async def put(i: int) -> None:
        got[i] = await put_bytes(store, blobs[i])

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i in range(len(blobs)):
                tg.start_soon(put, i)
    assert [got[i] for i in range(len(blobs))] == [blake3.blake3(b).digest() for b in blobs]
    listing = _store_listing(tmp_path)
    assert listing.pop("tmp") == []
    distinct = {blake3.blake3(b).hexdigest() for b in blobs}
    assert sorted(n for names in listing.values() for n in names) == sorted(distinct)
    for data in blobs:
        path = store.path(blake3.blake3(data).digest())
        assert path.read_bytes() == data
        assert path.stat().st_mode & 0o777 == 0o444


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [10, 3 * CHUNK_SIZE], ids=["small", "large"])
async def test_objectstore_put_of_present_blob_writes_nothing(tmp_path: Path, size: int) -> None:
    store = await ObjectStoreBlobService.open(tmp_path)
    data = os.urandom(size)
    digest = await put_bytes(store, data)
    before = store.path(digest).stat()
    assert await put_bytes(store, data) == digest
    after = store.path(digest).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert _listing(tmp_path / "tmp") == []


@pytest.mark.asyncio
async def test_objectstore_failure_stays_with_its_blob(tmp_path: Path) -> None:
    """A blob whose fan-out directory is unusable fails alone; its group's others are stored."""
    rng = random.Random(5)
    store = await ObjectStoreBlobService.open(tmp_path)
    (tmp_path / "ab").write_bytes(b"not a directory")
    doomed = _blob_with_prefix("ab", rng)
    fine = [rng.randbytes(100 + i) for i in range(20)]
    fine = [b for b in fine if not blake3.blake3(b).hexdigest().startswith("ab")]
    outcomes: dict[int, bytes | BaseException] = {}

    async def put(i: int, data: bytes) -> None:
        try:
            outcomes[i] = await put_bytes(store, data)
        except StorageError as exc:
            outcomes[i] = exc

    async with anyio.create_task_group() as tg:
        for i, data in enumerate([doomed, *fine]):
            tg.start_soon(put, i, data)
    failure = outcomes.pop(0)
    assert isinstance(failure, StorageError)
    assert f"ab/{blake3.blake3(doomed).hexdigest()}" in str(failure)
    assert [outcomes[i + 1] for i in range(len(fine))] == [blake3.blake3(b).digest() for b in fine]
    for data in fine:
        assert await read_blob(store, blake3.blake3(data).digest()) == data


# _Grouped: the primitive that turns concurrent calls into grouped thread calls.


class _Recorder:
    """A group function that records its groups and can be held up on its first call."""

    def __init__(self, hold: bool = False) -> None:
        self.groups: list[list[int]] = []
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, items: list[int]) -> list[int | Exception]:
        self.release.wait(10)
        self.groups.append(items)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


@pytest.mark.asyncio
async def test_grouped_groups_queued_callers_and_keeps_outcomes_apart() -> None:
    recorder = _Recorder()
    grouped: _Grouped[int, int] = _Grouped(recorder, calls=1, size=16)
    results: dict[int, object] = {}

    async def call(i: int) -> None:
        try:
            results[i] = await grouped(i)
        except ValueError as exc:
            results[i] = str(exc)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(call, i)
    assert results == {i: f"odd {i}" if i % 2 else i * 10 for i in range(40)}
    assert sorted(i for group in recorder.groups for i in group) == list(range(40))
    assert len(recorder.groups) == 4  # 1 alone, then the 39 queued ones in groups of 16
    assert max(map(len, recorder.groups)) == 16


@pytest.mark.asyncio
async def test_grouped_failure_of_the_group_function() -> None:
    calls: list[list[int]] = []

    def broken(items: list[int]) -> list[int | Exception]:
        calls.append(items)
        if len(calls) == 2:
            raise RuntimeError("the disk caught fire")
        return list(items)

    grouped: _Grouped[int, int] = _Grouped(broken, calls=1, size=8)
    results: dict[int, object] = {}

    async def call(i: int) -> None:
        try:
            results[i] = await grouped(i)
        except (RuntimeError, StorageError) as exc:
            results[i] = type(exc).__name__

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(call, i)
    assert results[0] == 0
    assert results[1] == "RuntimeError"  # the caller that ran the group sees the cause
    assert [results[i] for i in (2, 3, 4)] == ["StorageError"] * 3
    assert await grouped(7) == 7  # the slot was given back


@pytest.mark.asyncio
@pytest.mark.parametrize("when", ["queued", "promoted"])
async def test_grouped_cancelled_caller_does_not_stall_the_others(when: str) -> None:
    """A cancelled caller never stalls the callers queued behind it.

    Cancelled while queued, it leaves the queue; once handed the slot, it runs its group or
    passes the slot on.  Either way the others are served and the slot is given back.
    """
    recorder = _Recorder(hold=True)
    grouped: _Grouped[int, int] = _Grouped(recorder, calls=1, size=1)
    results: dict[int, object] = {}
    scopes: dict[int, anyio.CancelScope] = {}

    async def call(i: int) -> None:
        with anyio.CancelScope() as scope:
            scopes[i] = scope
            results[i] = await grouped(i)
            if i == 0 and when == "promoted":
                scopes[2].cancel()  # 2 was handed the slot a moment ago and has not run yet
            return
        results[i] = "cancelled"

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for i in (0, 2, 4):
                tg.start_soon(call, i)
                await anyio.sleep(0.01)  # queue them in this order
            if when == "queued":
                scopes[2].cancel()
                await anyio.sleep(0.01)
            recorder.release.set()
    if when == "queued":
        assert results == {0: 0, 2: "cancelled", 4: 40}
        assert recorder.groups == [[0], [4]]
    else:  # whether 2 still runs depends on when the backend delivers the cancellation
        assert results in ({0: 0, 2: 20, 4: 40}, {0: 0, 2: "cancelled", 4: 40})
        assert recorder.groups == ([[0], [2], [4]] if results[2] == 20 else [[0], [4]])
    assert await grouped(6) == 60
