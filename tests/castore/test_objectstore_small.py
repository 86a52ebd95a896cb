"""The objectstore's small-blob paths: blobs of at most ``SMALL_READ`` bytes read whole when opened.

Observable differences from the streamed path: a small blob holds no file
open once ``open_read`` returns; a larger one holds its file until the reader
is closed.  Both detect a corrupt or truncated file at the end of the
iteration, and a blob removed after ``has`` reads as absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import blake3
import pytest

from clients.castore.streams import CHUNK_SIZE, put_bytes, read_blob
from clients.errors import StorageError
from tvixd.castore.blobs.objectstore import SMALL_READ, ObjectStoreBlobService

SIZES = [0, 1, 60, SMALL_READ - 1, SMALL_READ, SMALL_READ + 1, CHUNK_SIZE, CHUNK_SIZE + 1]


def _data(size: int) -> bytes:
    return bytes((i * 7 + size) % 251 for i in range(size))


def _open_on(path: Path) -> int:
    """How many of this process's fds refer to ``path``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:
            pass  # closed meanwhile (the listing's own fd)
    return count


def _tamper(path: Path, data: bytes) -> None:
    path.chmod(0o644)
    path.write_bytes(data)


@pytest.mark.asyncio
@pytest.mark.parametrize("size", SIZES)
async def test_contents_and_chunk_bounds(tmp_path: Path, size: int) -> None:
    store = await ObjectStoreBlobService.open(tmp_path)
    data = _data(size)
    digest = await put_bytes(store, data)
    assert digest == blake3.blake3(data).digest()
    assert store.path(digest).read_bytes() == data
    assert await store.stat(digest) == size
    reader = await store.open_read(digest)
    assert reader is not None
    async with reader:
        chunks = [chunk async for chunk in reader]
    assert b"".join(chunks) == data
    assert all(0 < len(chunk) <= CHUNK_SIZE for chunk in chunks)
    await store.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [0, 60, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 5])
async def test_put_bytes_stores_what_put_stores(tmp_path: Path, size: int) -> None:
    store = await ObjectStoreBlobService.open(tmp_path)
    data = _data(size)
    digest = await store.put_bytes(data)
    assert digest == blake3.blake3(data).digest()
    assert store.path(digest).read_bytes() == data
    assert oct(store.path(digest).stat().st_mode & 0o777) == "0o444"
    assert await put_bytes(store, data) == digest  # present already: the same name
    assert await read_blob(store, digest) == data
    await store.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("size", "held"), [(SMALL_READ - 1, 0), (SMALL_READ, 0), (SMALL_READ + 1, 1)]
)
async def test_small_blob_holds_no_file_open(tmp_path: Path, size: int, held: int) -> None:
    store = await ObjectStoreBlobService.open(tmp_path)
    digest = await put_bytes(store, _data(size))
    path = store.path(digest)
    reader = await store.open_read(digest)
    assert reader is not None
    assert _open_on(path) == held  # read whole at open (<= SMALL_READ), else streamed
    async with reader:
        assert await reader.read_all() == _data(size)
    assert _open_on(path) == 0
    await store.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [0, 60, SMALL_READ, SMALL_READ + 1])
async def test_blob_removed_between_has_and_read_is_absent(tmp_path: Path, size: int) -> None:
    store = await ObjectStoreBlobService.open(tmp_path)
    digest = await put_bytes(store, _data(size))
    assert await store.has(digest)
    store.path(digest).unlink()
    assert await store.open_read(digest) is None
    assert not await store.has(digest)
    assert await store.stat(digest) is None
    await store.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [1, 60, SMALL_READ, SMALL_READ + 1, CHUNK_SIZE + 1])
@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "grow-small", "grow-large"])
async def test_corrupt_or_truncated_blob_is_detected(
    tmp_path: Path, size: int, damage: str
) -> None:
    store = await ObjectStoreBlobService.open(tmp_path)
    data = _data(size)
    digest = await put_bytes(store, data)
    path = store.path(digest)
    damaged = {
        "flip": bytes([data[0] ^ 1]) + data[1:],
        "truncate": data[:-1],
        "empty": b"",
        "grow-small": data + b"x",
        "grow-large": data + b"x" * (SMALL_READ + 1),  # now streamed whatever it was
    }[damage]
    _tamper(path, damaged)
    reader = await store.open_read(digest)
    assert reader is not None
    got = bytearray()

    async def drain() -> None:
        async for chunk in reader:
            assert len(chunk) <= CHUNK_SIZE
            got.extend(chunk)

    async with reader:
        with pytest.raises(StorageError, match=f"blob file {path} is corrupt"):
            await drain()
    assert bytes(got) == damaged  # everything read was handed out before the error
    assert _open_on(path) == 0
    await store.close()


@pytest.mark.asyncio
async def test_directory_in_place_of_a_blob_is_a_storage_error(tmp_path: Path) -> None:
    store = await ObjectStoreBlobService.open(tmp_path)
    digest = await put_bytes(store, b"contents")
    path = store.path(digest)
    path.unlink()
    path.mkdir()
    with pytest.raises(StorageError, match=f"blob {path}"):
        await read_blob(store, digest)
    await store.close()


@pytest.mark.asyncio
async def test_many_concurrent_small_reads_and_stats(tmp_path: Path) -> None:
    store = await ObjectStoreBlobService.open(tmp_path)
    blobs = [_data(n) for n in range(0, 2000, 37)]
    digests = [await put_bytes(store, blob) for blob in blobs]
    got: dict[int, bytes | None] = {}
    sizes: dict[int, int | None] = {}

    async def one(i: int) -> None:
        got[i] = await read_blob(store, digests[i])
        sizes[i] = await store.stat(digests[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(blobs)):
            tg.start_soon(one, i)
    assert [got[i] for i in range(len(blobs))] == blobs
    assert [sizes[i] for i in range(len(blobs))] == [len(b) for b in blobs]
    await store.close()


@pytest.mark.asyncio
async def test_reads_after_close_are_storage_errors(tmp_path: Path) -> None:
    store = await ObjectStoreBlobService.open(tmp_path)
    digest = await put_bytes(store, b"contents")
    assert await read_blob(store, digest) == b"contents"
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StorageError, match="stopped"):
        await store.stat(digest)
    with pytest.raises(StorageError, match="stopped"):
        await store.open_read(digest)


@pytest.mark.asyncio
async def test_small_puts_after_close_are_storage_errors(tmp_path: Path) -> None:
    store = await ObjectStoreBlobService.open(tmp_path)
    await put_bytes(store, b"before")
    await store.close()
    with pytest.raises(StorageError, match="closed"):
        await put_bytes(store, b"after")
    assert not store.path(blake3.blake3(b"after").digest()).exists()


@pytest.mark.asyncio
async def test_many_concurrent_small_puts_on_the_put_threads(tmp_path: Path) -> None:
    store = await ObjectStoreBlobService.open(tmp_path)
    blobs = [_data(n) for n in range(200)]
    got: dict[int, bytes] = {}

    async def one(i: int) -> None:
        got[i] = await put_bytes(store, blobs[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(blobs)):
            tg.start_soon(one, i)
    for i, blob in enumerate(blobs):
        assert got[i] == blake3.blake3(blob).digest()
        assert store.path(got[i]).read_bytes() == blob
    await store.close()
