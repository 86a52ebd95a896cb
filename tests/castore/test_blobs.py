"""The BlobService conformance suite, run against every backend (see conftest.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import anyio
import blake3
import pytest

from clients.castore.model import B3Digest
from clients.castore.protocols import BlobService
from clients.castore.streams import CHUNK_SIZE, put_bytes, read_blob
from clients.errors import InvalidRequest
from tests.castore.helpers import EMPTY_DIGEST_HEX, blob_from_spec
from tests.vectors import entries

ABSENT = B3Digest.of(b"never stored")


async def _pieces(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    """``data`` in pieces of the given sizes, cycling (odd sizes exercise re-chunking)."""
    start, i = 0, 0
    while start < len(data):
        size = sizes[i % len(sizes)]
        yield data[start : start + size]
        start += size
        i += 1


@pytest.mark.asyncio
async def test_put_then_has_stat_read(blob_service: BlobService) -> None:
    data = b"Hello World!"
    digest = await put_bytes(blob_service, data)
    assert digest == blake3.blake3(data).digest()
    assert await blob_service.has(digest)
    assert await blob_service.stat(digest) == len(data)
    assert await read_blob(blob_service, digest) == data


@pytest.mark.asyncio
async def test_absent_is_none(blob_service: BlobService) -> None:
    assert not await blob_service.has(ABSENT)
    assert await blob_service.stat(ABSENT) is None
    assert await blob_service.open_read(ABSENT) is None


@pytest.mark.asyncio
async def test_empty_blob(blob_service: BlobService) -> None:
    digest = await put_bytes(blob_service, b"")
    assert digest.hex() == EMPTY_DIGEST_HEX
    assert await blob_service.stat(digest) == 0
    assert await read_blob(blob_service, digest) == b""


@pytest.mark.asyncio
async def test_large_blob_streams_in_bounded_chunks(blob_service: BlobService) -> None:
    data = os.urandom(5 * CHUNK_SIZE + 12345)
    digest = await blob_service.put(_pieces(data, [100_000, 7, CHUNK_SIZE + 3, 3 * CHUNK_SIZE]))
    assert digest == blake3.blake3(data).digest()
    assert await blob_service.stat(digest) == len(data)
    reader = await blob_service.open_read(digest)
    assert reader is not None
    sizes = []
    hasher = blake3.blake3()
    async with reader:
        async for chunk in reader:
            sizes.append(len(chunk))
            hasher.update(chunk)
    assert sum(sizes) == len(data)
    assert hasher.digest() == digest
    assert len(sizes) > 1
    assert max(sizes) <= CHUNK_SIZE


@pytest.mark.asyncio
async def test_digest_is_computed_by_receiver_for_vectors(blob_service: BlobService) -> None:
    for entry in entries("blake3"):
        data = blob_from_spec(entry["blob"])
        assert len(data) == entry["length"]
        digest = await blob_service.put(_pieces(data, [1000, 1]))
        assert digest.hex() == entry["blake3_hex"], entry["blob"]
        assert await blob_service.stat(digest) == len(data)
    assert await read_blob(blob_service, B3Digest.from_hex(entries("blake3")[0]["blake3_hex"])) == (
        b"Hello World!"
    )


@pytest.mark.asyncio
async def test_put_twice_is_idempotent(blob_service: BlobService) -> None:
    first = await put_bytes(blob_service, b"same")
    second = await blob_service.put(_pieces(b"same", [1]))
    assert first == second
    assert await read_blob(blob_service, first) == b"same"


@pytest.mark.asyncio
@pytest.mark.parametrize("length", [0, 2, 31, 33])
async def test_wrong_digest_length_is_invalid(blob_service: BlobService, length: int) -> None:
    bad = b"\x01" * length
    for call in (blob_service.has, blob_service.stat, blob_service.open_read):
        with pytest.raises(InvalidRequest, match="32"):
            await call(bad)


@pytest.mark.asyncio
async def test_failed_put_stores_nothing(blob_service: BlobService) -> None:
    data = os.urandom(3 * CHUNK_SIZE)

    async def failing() -> AsyncIterator[bytes]:
        yield data[:CHUNK_SIZE]
        yield data[CHUNK_SIZE : 2 * CHUNK_SIZE]
        raise RuntimeError("the producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        await blob_service.put(failing())
    partial = B3Digest.of(data[: 2 * CHUNK_SIZE])
    assert not await blob_service.has(partial)
    # the service still works afterwards
    assert await read_blob(blob_service, await put_bytes(blob_service, b"after")) == b"after"


@pytest.mark.asyncio
async def test_reader_closed_early_then_service_still_works(blob_service: BlobService) -> None:
    data = os.urandom(4 * CHUNK_SIZE)
    digest = await put_bytes(blob_service, data)
    reader = await blob_service.open_read(digest)
    assert reader is not None
    async with reader:
        first = await reader.__anext__()
        assert first == data[: len(first)]
    assert [chunk async for chunk in reader] == []
    assert await read_blob(blob_service, digest) == data


@pytest.mark.asyncio
async def test_concurrent_puts_and_reads(blob_service: BlobService) -> None:
    blobs = [os.urandom(n) for n in (10, 70_000, CHUNK_SIZE + 1, 0, 5)]
    digests: dict[int, B3Digest] = {}

    async def put(i: int) -> None:
        digests[i] = await put_bytes(blob_service, blobs[i])

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for i in range(len(blobs)):
                tg.start_soon(put, i)
    results: dict[int, bytes | None] = {}

    async def read(i: int) -> None:
        results[i] = await read_blob(blob_service, digests[i])

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for i in range(len(blobs)):
                tg.start_soon(read, i)
    assert [results[i] for i in range(len(blobs))] == blobs
