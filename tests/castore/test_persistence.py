"""The persistent backends: reopening, on-disk layout, crash safety and corruption detection."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from grpclib.testing import ChannelFor

from clients.castore.grpc import GrpcBlobService
from clients.castore.model import Directory
from clients.castore.streams import CHUNK_SIZE, put_bytes, read_blob
from clients.errors import InvalidRequest, StorageError
from tests.castore.helpers import diamond
from tvixd.castore.blobs.objectstore import ObjectStoreBlobService
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
