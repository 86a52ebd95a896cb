"""Wire interop with an independent implementation (grpcio + Google protobuf, tests/interop.py).

* a grpcio client (sync, on a worker thread) against our server over a unix socket;
* our gRPC adapters against a small in-memory grpcio server on a unix socket.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import blake3
import grpc
import pytest
import pytest_asyncio

from clients.castore.grpc import GrpcBlobService, GrpcDirectoryService
from clients.castore.model import B3Digest, Directory, DirectoryNode, FileNode
from clients.castore.streams import put_bytes, read_blob
from clients.errors import InvalidRequest, StorageError
from tests.castore.helpers import diamond, directory_from_json, serve_unix
from tests.interop import GrpcioProtos, in_thread, rpc_error
from tests.vectors import entries
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService

MiB = 1 << 20
ABSENT = B3Digest.of(b"absent")
_T = TypeVar("_T")


@dataclass
class OurServer:
    socket: str
    blobs: MemoryBlobService
    directories: MemoryDirectoryService


@pytest_asyncio.fixture
async def our_server(tmp_path: Path) -> AsyncIterator[OurServer]:
    server = OurServer(
        str(tmp_path / "castore.sock"), MemoryBlobService(), MemoryDirectoryService()
    )
    async with serve_unix(Path(server.socket), server.blobs, server.directories):
        yield server


# --- a grpcio client against our server -------------------------------------------------


@pytest.mark.asyncio
async def test_grpcio_client_blobs(our_server: OurServer, grpcio_protos: GrpcioProtos) -> None:
    pb, rpc = grpcio_protos.blobstore, grpcio_protos.blobstore_grpc
    data = os.urandom(3 * MiB + 7)

    def client() -> None:
        with grpc.insecure_channel("unix:" + our_server.socket) as channel:
            stub = rpc.BlobServiceStub(channel)
            pieces = (
                pb.BlobChunk(data=data[i : i + 300_000]) for i in range(0, len(data), 300_000)
            )
            digest = stub.Put(pieces, timeout=30).digest
            assert digest == blake3.blake3(data).digest()
            stat = stub.Stat(pb.StatBlobRequest(digest=digest, send_chunks=True), timeout=10)
            assert sum(c.size for c in stat.chunks) == len(data)
            assert stub.Stat(pb.StatBlobRequest(digest=digest), timeout=10).chunks == []
            chunks = [c.data for c in stub.Read(pb.ReadBlobRequest(digest=digest), timeout=30)]
            assert b"".join(chunks) == data
            assert max(len(c) for c in chunks) <= MiB
            empty = stub.Put(iter([]), timeout=10).digest
            assert [c.data for c in stub.Read(pb.ReadBlobRequest(digest=empty), timeout=10)] == []

            code, _ = rpc_error(lambda: stub.Stat(pb.StatBlobRequest(digest=ABSENT), timeout=10))
            assert code == grpc.StatusCode.NOT_FOUND
            code, _ = rpc_error(
                lambda: list(stub.Read(pb.ReadBlobRequest(digest=ABSENT), timeout=10))
            )
            assert code == grpc.StatusCode.NOT_FOUND
            code, details = rpc_error(
                lambda: stub.Stat(pb.StatBlobRequest(digest=b"short"), timeout=10)
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "StatBlobRequest.digest must be a 32-byte blake3 digest, got 5 bytes" in details

    await in_thread(client)
    assert await read_blob(our_server.blobs, blake3.blake3(data).digest()) == data


@pytest.mark.asyncio
async def test_grpcio_client_directories(
    our_server: OurServer, grpcio_protos: GrpcioProtos
) -> None:
    pb, rpc, req = grpcio_protos.castore, grpcio_protos.directory_grpc, grpcio_protos.directory
    leaf, shared, left, right, root = diamond()
    tree = next(e for e in entries("castore_directories", kind="tree") if e["id"] == "mixed")
    mixed = [directory_from_json(spec["directory"]) for spec in tree["directories"]]
    bad = Directory(files=(FileNode(b"..", bytes(32), 0),))

    def client() -> None:
        with grpc.insecure_channel("unix:" + our_server.socket) as channel:
            stub = rpc.DirectoryServiceStub(channel)
            messages = [
                pb.Directory.FromString(d.encode()) for d in (leaf, shared, left, right, root)
            ]
            assert stub.Put(iter(messages), timeout=10).root_digest == root.digest()
            got = stub.Get(
                req.GetDirectoryRequest(digest=root.digest(), recursive=True), timeout=10
            )
            assert [m.SerializeToString(deterministic=True) for m in got] == [
                d.encode() for d in (root, left, right, shared, leaf)
            ]
            one = list(stub.Get(req.GetDirectoryRequest(digest=left.digest()), timeout=10))
            assert [m.SerializeToString(deterministic=True) for m in one] == [left.encode()]

            messages = [pb.Directory.FromString(d.encode()) for d in mixed]
            assert (
                stub.Put(iter(messages), timeout=10).root_digest.hex()
                == tree["root_node"]["digest"]
            )

            code, _ = rpc_error(
                lambda: list(stub.Get(req.GetDirectoryRequest(digest=ABSENT), timeout=10))
            )
            assert code == grpc.StatusCode.NOT_FOUND
            code, _ = rpc_error(
                lambda: list(stub.Get(req.GetDirectoryRequest(recursive=True), timeout=10))
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            messages = [pb.Directory.FromString(d.encode()) for d in (leaf, bad)]
            code, details = rpc_error(lambda: stub.Put(iter(messages), timeout=10))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "put stream message 1: directory entry name b'..' is not allowed" in details
            orphan = Directory(directories=(DirectoryNode(b"gone", ABSENT, 0),))
            message = pb.Directory.FromString(orphan.encode())
            code, details = rpc_error(lambda: stub.Put(iter([message]), timeout=10))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "neither sent earlier in the stream nor is stored" in details
            code, details = rpc_error(lambda: stub.Put(iter([]), timeout=10))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "no directories" in details

    await in_thread(client)
    assert await our_server.directories.get(bad.digest()) is None
    assert [d async for d in our_server.directories.get_recursive(root.digest())] == [
        root,
        left,
        right,
        shared,
        leaf,
    ]


# --- our adapters against a grpcio server ------------------------------------------------


class _FakeServers:
    """In-memory grpcio servicers, written the obvious way (as upstream behaves: Stat sends no chunks)."""

    def __init__(self, protos: GrpcioProtos) -> None:
        self.protos = protos
        self.blobs: dict[bytes, bytes] = {}
        self.directories: dict[bytes, bytes] = {}
        self.lock = threading.Lock()
        self.corrupt_reads = False
        self.lie_on_get = False

    def servicers(self) -> tuple[Any, Any]:
        fake = self
        p = self.protos

        class Blobs(p.blobstore_grpc.BlobServiceServicer):  # type: ignore[misc,name-defined]
            def Stat(self, request: Any, context: Any) -> Any:
                if len(request.digest) != 32:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "digest must be 32 bytes")
                if request.digest not in fake.blobs:
                    context.abort(grpc.StatusCode.NOT_FOUND, "no such blob")
                return p.blobstore.StatBlobResponse()

            def Read(self, request: Any, context: Any) -> Iterator[Any]:
                data = fake.blobs.get(request.digest)
                if data is None:
                    context.abort(grpc.StatusCode.NOT_FOUND, "no such blob")
                    return
                if fake.corrupt_reads:
                    data = data[:-1]
                for i in range(0, len(data), 64 * 1024):
                    yield p.blobstore.BlobChunk(data=data[i : i + 64 * 1024])

            def Put(self, request_iterator: Any, context: Any) -> Any:
                data = b"".join(chunk.data for chunk in request_iterator)
                digest = blake3.blake3(data).digest()
                with fake.lock:
                    fake.blobs[digest] = data
                return p.blobstore.PutBlobResponse(digest=digest)

        class Directories(p.directory_grpc.DirectoryServiceServicer):  # type: ignore[misc,name-defined]
            def Get(self, request: Any, context: Any) -> Iterator[Any]:
                if request.digest not in fake.directories:
                    context.abort(grpc.StatusCode.NOT_FOUND, "no such directory")
                    return
                queue, seen = deque([request.digest]), {request.digest}
                while queue:
                    message = p.castore.Directory.FromString(fake.directories[queue.popleft()])
                    if fake.lie_on_get:
                        message.symlinks.add(name=b"zz", target=b"lie")
                    yield message
                    if not request.recursive:
                        return
                    for child in message.directories:
                        if child.digest not in seen:
                            seen.add(child.digest)
                            queue.append(child.digest)

            def Put(self, request_iterator: Any, context: Any) -> Any:
                last = b""
                for message in request_iterator:
                    if any(n.name in (b".", b"..") for n in message.files):
                        context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT, "the fake rejects dot names"
                        )
                    data = message.SerializeToString(deterministic=True)
                    last = blake3.blake3(data).digest()
                    with fake.lock:
                        fake.directories[last] = data
                return p.directory.PutDirectoryResponse(root_digest=last)

        return Blobs(), Directories()


@pytest.fixture
def grpcio_server(
    grpcio_protos: GrpcioProtos, tmp_path: Path
) -> Iterator[tuple[str, _FakeServers]]:
    fake = _FakeServers(grpcio_protos)
    blobs, directories = fake.servicers()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    grpcio_protos.blobstore_grpc.add_BlobServiceServicer_to_server(blobs, server)
    grpcio_protos.directory_grpc.add_DirectoryServiceServicer_to_server(directories, server)
    socket = str(tmp_path / "grpcio.sock")
    server.add_insecure_port("unix:" + socket)
    server.start()
    try:
        yield f"grpc+unix://{socket}", fake
    finally:
        server.stop(None).wait(10)


@pytest.mark.asyncio
async def test_our_blob_client_against_grpcio(grpcio_server: tuple[str, _FakeServers]) -> None:
    url, fake = grpcio_server
    client = GrpcBlobService.from_url(url)
    try:
        data = os.urandom(3 * MiB + 3)
        digest = await put_bytes(client, data)
        assert digest == blake3.blake3(data).digest()
        assert fake.blobs[digest] == data
        assert await client.has(digest)
        assert await client.stat(digest) == len(data)  # no chunk list: counted by reading
        assert await read_blob(client, digest) == data
        assert not await client.has(ABSENT)
        assert await client.stat(ABSENT) is None
        assert await client.open_read(ABSENT) is None
        fake.corrupt_reads = True
        with pytest.raises(StorageError, match="corrupt or truncated"):
            await read_blob(client, digest)
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_our_directory_client_against_grpcio(grpcio_server: tuple[str, _FakeServers]) -> None:
    url, fake = grpcio_server
    client = GrpcDirectoryService.from_url(url)
    leaf, shared, left, right, root = diamond()
    try:
        async with client.put_multiple() as putter:
            for directory in (leaf, shared, left, right, root):
                await putter.put(directory)
            assert await putter.close() == root.digest()
        assert fake.directories[root.digest()] == root.encode()
        assert await client.get(shared.digest()) == shared
        got = [d async for d in client.get_recursive(root.digest())]
        assert got == [root, left, right, shared, leaf]
        assert await client.get(ABSENT) is None
        assert [d async for d in client.get_recursive(ABSENT)] == []
        with pytest.raises(InvalidRequest, match="the fake rejects dot names"):
            await client.put(Directory(files=(FileNode(b"..", bytes(32), 0),)))
        fake.lie_on_get = True
        with pytest.raises(StorageError, match="asked for"):
            await client.get(shared.digest())
        with pytest.raises(StorageError, match="unexpected directory"):
            async for _ in client.get_recursive(root.digest()):
                pass
    finally:
        await client.close()
