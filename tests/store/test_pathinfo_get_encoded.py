"""``PathInfoService.Get`` answering the SQLite backend's stored bytes (``get_encoded``).

Over a real unix socket (``serve_store_unix``) with a real SQLite file.  The
bytes a Get answers are read with a raw grpclib stream (no betterproto on the
reply) so the tests see exactly what the server sent: the row as stored,
which is ``wire.encode_path_info`` of the path info put.  Rows corrupted
behind the service's back (with ``sqlite3`` directly) must never be served:
the Get fails ``INTERNAL`` and ``get_encoded`` raises ``StorageError`` naming
the path.  A backend without ``get_encoded`` (memory) answers as before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from clients.errors import StorageError
from clients.store import wire
from clients.store.grpc import GrpcPathInfoService
from clients.store.model import PathInfo
from clients.store.protocols import PathInfoService
from nixcompat import nixbase32
from proto.gen.tvix.store import v1 as store_pb
from tests.store.pathinfo_helpers import make_info, rich_infos, serve_store_unix, store_path
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService
from tvixd.store.pathinfo.memory import MemoryPathInfoService
from tvixd.store.pathinfo.sqlite import TABLE, SqlitePathInfoService

GET = "/tvix.store.v1.PathInfoService/Get"
DB = "pathinfo.db"


class _Raw:
    """A reply type for grpclib's proto codec that keeps the received bytes as they are."""

    @staticmethod
    def FromString(data: bytes) -> bytes:  # the protobuf API's name
        return bytes(data)


class CountingSqlite(SqlitePathInfoService):
    """The SQLite backend, counting which read the servicer used."""

    gets = 0
    encoded_gets = 0

    async def get(self, digest: bytes) -> PathInfo | None:
        self.gets += 1
        return await super().get(digest)

    async def get_encoded(self, digest: bytes) -> bytes | None:
        self.encoded_gets += 1
        return await super().get_encoded(digest)


@dataclass
class Served:
    service: PathInfoService
    socket: Path
    client: GrpcPathInfoService
    channel: Channel

    async def raw_get(self, digest: bytes) -> bytes:
        """The reply of a Get for ``digest``, as the bytes the server sent."""
        async with self.channel.request(
            GET, Cardinality.UNARY_UNARY, store_pb.GetPathInfoRequest, _Raw, timeout=30
        ) as stream:
            await stream.send_message(store_pb.GetPathInfoRequest(by_output_hash=digest), end=True)
            reply = await stream.recv_message()
            await stream.recv_trailing_metadata()
        assert isinstance(reply, bytes)
        return reply


@pytest_asyncio.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[CountingSqlite]:
    service = await CountingSqlite.open(tmp_path / DB)
    assert isinstance(service, CountingSqlite)
    yield service
    await service.close()


@asynccontextmanager
async def serving(service: PathInfoService, socket: Path) -> AsyncIterator[Served]:
    """``service`` behind our gRPC server on ``socket``, with a client and a raw channel."""
    async with serve_store_unix(socket, service, MemoryBlobService(), MemoryDirectoryService()):
        client = GrpcPathInfoService.from_url(f"grpc+unix://{socket}")
        channel = Channel(path=str(socket))
        try:
            yield Served(service, socket, client, channel)
        finally:
            channel.close()
            await client.close()


@pytest_asyncio.fixture
async def sqlite_served(sqlite_db: CountingSqlite, tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(sqlite_db, tmp_path / "store.sock") as served:
        yield served


@pytest_asyncio.fixture
async def memory_served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(MemoryPathInfoService(), tmp_path / "memory.sock") as served:
        yield served


def stored_row(db: Path, digest: bytes) -> bytes:
    """The ``data`` column under ``digest``, read with ``sqlite3`` directly."""
    with sqlite3.connect(db) as conn:
        row = conn.execute(f"SELECT data FROM {TABLE} WHERE digest = ?", (digest,)).fetchone()
    conn.close()
    assert row is not None, f"no row for {nixbase32.encode(digest)}"
    return bytes(row[0])


def overwrite_row(db: Path, digest: bytes, data: bytes) -> None:
    """Replace the ``data`` column under ``digest`` behind the service's back."""
    with sqlite3.connect(db) as conn:
        updated = conn.execute(
            f"UPDATE {TABLE} SET data = ? WHERE digest = ?", (data, digest)
        ).rowcount
    conn.close()
    assert updated == 1


def _infos() -> list[PathInfo]:
    """Rich path infos (node kinds, references, deriver, signatures, every CA kind) and a bare one."""
    return [*rich_infos(), make_info("bare", nar_size=0)]


@pytest.mark.asyncio
@pytest.mark.parametrize("info", _infos(), ids=lambda i: i.store_path.name)
async def test_get_answers_the_stored_bytes(
    sqlite_served: Served, sqlite_db: CountingSqlite, tmp_path: Path, info: PathInfo
) -> None:
    await sqlite_served.client.put(info)
    sent = await sqlite_served.raw_get(info.digest)
    row = stored_row(tmp_path / DB, info.digest)
    assert sent == row
    assert sent == wire.encode_path_info(info)
    assert await sqlite_served.client.get(info.digest) == info
    # the servicer took the fast path, never decoding into a PathInfo to re-encode it
    assert sqlite_db.encoded_gets == 2
    assert sqlite_db.gets == 0


@pytest.mark.asyncio
async def test_fast_and_slow_paths_send_the_same_bytes(
    sqlite_served: Served, memory_served: Served
) -> None:
    for info in _infos():
        await sqlite_served.client.put(info)
        await memory_served.client.put(info)
        assert await sqlite_served.raw_get(info.digest) == await memory_served.raw_get(info.digest)


@pytest.mark.asyncio
async def test_missing_is_not_found(sqlite_served: Served, sqlite_db: CountingSqlite) -> None:
    await sqlite_served.client.put(make_info("present"))
    absent = store_path("absent").digest
    assert await sqlite_db.get_encoded(absent) is None
    assert await sqlite_served.client.get(absent) is None
    with pytest.raises(GRPCError) as caught:
        await sqlite_served.raw_get(absent)
    assert caught.value.status is Status.NOT_FOUND
    assert nixbase32.encode(absent) in (caught.value.message or "")


CORRUPTIONS = {
    "another-path-info": wire.encode_path_info(make_info("impostor-1.0")),
    "garbage": b"\xff\xfe not a protobuf message \x00",
    "truncated": wire.encode_path_info(make_info("victim-1.0"))[:-5],
    "empty": b"",
}


@pytest.mark.asyncio
@pytest.mark.parametrize("corruption", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
async def test_corrupt_row_is_never_served(
    sqlite_served: Served, sqlite_db: CountingSqlite, tmp_path: Path, corruption: bytes
) -> None:
    victim = make_info("victim-1.0")
    await sqlite_served.client.put(victim)
    overwrite_row(tmp_path / DB, victim.digest, corruption)
    name = nixbase32.encode(victim.digest)

    with pytest.raises(GRPCError) as caught:
        await sqlite_served.raw_get(victim.digest)
    assert caught.value.status is Status.INTERNAL
    assert f"PathInfoService.Get: path info {name}" in (caught.value.message or "")
    assert "is corrupt" in (caught.value.message or "")
    with pytest.raises(StorageError, match=name):
        await sqlite_served.client.get(victim.digest)
    with pytest.raises(StorageError, match=rf"path info {name} in .* is corrupt"):
        await sqlite_db.get_encoded(victim.digest)


@pytest.mark.asyncio
async def test_backend_without_get_encoded_answers_as_before(memory_served: Served) -> None:
    assert getattr(memory_served.service, "get_encoded", None) is None
    infos = _infos()
    for info in infos:
        await memory_served.client.put(info)
    for info in infos:
        assert await memory_served.raw_get(info.digest) == wire.encode_path_info(info)
        assert await memory_served.client.get(info.digest) == info
    assert await memory_served.client.get(store_path("absent").digest) is None
