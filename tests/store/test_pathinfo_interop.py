"""tvix.store.v1 interop with an independent implementation (grpcio + Google protobuf, tests/interop.py).

* Google's encoder agrees with our canonical encoding of path infos;
* a grpcio client (sync, on a worker thread) against our server over a unix socket;
* our ``GrpcPathInfoService`` against a small in-memory grpcio server on a unix socket.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import pytest_asyncio

from clients.castore.model import FileNode
from clients.errors import InvalidRequest, StorageError
from clients.store import wire
from clients.store.grpc import GrpcPathInfoService
from clients.store.model import PathInfo
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.narinfo import CaMethod, ContentAddress
from nixcompat.signing import Signature
from nixcompat.storepath import StorePath
from tests.interop import GrpcioProtos, in_thread, rpc_error
from tests.store.pathinfo_helpers import (
    ReferenceNarCalculator,
    ingest_tree,
    make_info,
    rich_infos,
    serve_store_unix,
    store_path,
)
from tests.vectors import entries
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService
from tvixd.store.pathinfo.memory import MemoryPathInfoService

_T = TypeVar("_T")


@pytest.mark.parametrize("info", rich_infos(), ids=lambda i: i.store_path.name)
def test_google_encoding_agrees(info: PathInfo, grpcio_protos: GrpcioProtos) -> None:
    ours = wire.encode_path_info(info)
    theirs = grpcio_protos.pathinfo.PathInfo.FromString(ours)
    assert theirs.SerializeToString(deterministic=True) == ours
    assert theirs.node.WhichOneof("node") in ("file", "directory", "symlink")
    assert list(theirs.narinfo.reference_names) == [r.basename for r in info.references]


# --- a grpcio client against our server -------------------------------------------------


@dataclass
class OurServer:
    socket: str
    path_infos: MemoryPathInfoService
    blobs: MemoryBlobService
    directories: MemoryDirectoryService


@pytest_asyncio.fixture
async def our_server(tmp_path: Path) -> AsyncIterator[OurServer]:
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    server = OurServer(str(tmp_path / "store.sock"), MemoryPathInfoService(), blobs, directories)
    async with serve_store_unix(
        Path(server.socket),
        server.path_infos,
        blobs,
        directories,
        ReferenceNarCalculator(blobs, directories),
    ):
        yield server


@pytest.mark.asyncio
async def test_grpcio_client_against_our_server(
    our_server: OurServer, grpcio_protos: GrpcioProtos
) -> None:
    pb, cpb = grpcio_protos.pathinfo, grpcio_protos.castore
    rpc, stub_module = grpcio_protos.rpc_pathinfo, grpcio_protos.rpc_pathinfo_grpc
    dep, drv = store_path("dep-1.0"), store_path("app-1.0.drv")
    path = store_path("app-1.0")
    blob = hashlib.sha256(b"blob").digest()
    nar_sha256 = hashlib.sha256(b"nar").digest()
    ca_digest = hashlib.sha256(b"flat").digest()
    signature = Signature("interop-1", bytes(range(64)))
    # What we expect to find in our backend, built from domain types:
    expected = PathInfo(
        store_path=path,
        node=FileNode(path.basename.encode(), blob, 7, executable=True),
        references=(dep, path),
        nar_size=512,
        nar_sha256=nar_sha256,
        signatures=(signature,),
        deriver=drv,
        ca=ContentAddress(CaMethod.flat, NixHash(HashAlgo.sha256, ca_digest)),
    )
    others = [make_info(f"other-{i}") for i in range(3)]
    tree = next(e for e in entries("nar") if e["id"] == "complicated")
    root = await ingest_tree(tree["tree"], our_server.blobs, our_server.directories)

    def client() -> None:
        message = pb.PathInfo(
            node=cpb.Node(
                file=cpb.FileNode(name=path.basename.encode(), digest=blob, size=7, executable=True)
            ),
            references=[dep.digest, path.digest],
            narinfo=pb.NARInfo(
                nar_size=512,
                nar_sha256=nar_sha256,
                signatures=[pb.NARInfo.Signature(name=signature.name, data=signature.data)],
                reference_names=[dep.basename, path.basename],
                deriver=pb.StorePath(name=drv.name, digest=drv.digest),
                ca=pb.NARInfo.CA(type=pb.NARInfo.CA.FLAT_SHA256, digest=ca_digest),
            ),
        )
        with grpc.insecure_channel("unix:" + our_server.socket) as channel:
            stub = stub_module.PathInfoServiceStub(channel)
            assert stub.Put(message, timeout=10) == message
            for info in others:
                stub.Put(pb.PathInfo.FromString(wire.encode_path_info(info)), timeout=10)
            got = stub.Get(rpc.GetPathInfoRequest(by_output_hash=path.digest), timeout=10)
            assert got == message
            listed = list(stub.List(rpc.ListPathInfoRequest(), timeout=10))
            assert sorted(m.narinfo.nar_sha256 for m in listed) == sorted(
                [nar_sha256, *(i.nar_sha256 for i in others)]
            )

            code, details = rpc_error(
                lambda: stub.Get(rpc.GetPathInfoRequest(by_output_hash=dep.digest), timeout=10)
            )
            assert code == grpc.StatusCode.NOT_FOUND
            assert dep.hash_part in details
            code, details = rpc_error(
                lambda: stub.Get(rpc.GetPathInfoRequest(by_output_hash=b"short"), timeout=10)
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "must be a 20-byte store path digest, got 5 bytes" in details

            bad = pb.PathInfo()
            bad.CopyFrom(message)
            bad.node.file.name = dep.basename.encode()
            bad.narinfo.reference_names[0] = path.basename
            code, details = rpc_error(lambda: stub.Put(bad, timeout=10))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert f"NARInfo.reference_names[0] '{path.basename}' does not match" in details

            reply = stub.CalculateNAR(
                cpb.Node(directory=cpb.DirectoryNode(digest=root.digest, size=root.size)),  # type: ignore[union-attr]
                timeout=10,
            )
            assert (reply.nar_size, reply.nar_sha256.hex()) == (
                tree["nar_size"],
                tree["nar_sha256_hex"],
            )
            code, details = rpc_error(
                lambda: stub.CalculateNAR(
                    cpb.Node(symlink=cpb.SymlinkNode(name=b"named", target=b"t")), timeout=10
                )
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "must be sent with an empty name" in details

    await in_thread(client)
    assert await our_server.path_infos.get(path.digest) == expected
    assert await our_server.path_infos.get(dep.digest) is None  # the bad put stored nothing
    assert len([i async for i in our_server.path_infos.list()]) == 4


# --- our adapter against a grpcio server -------------------------------------------------


class _FakePathInfos:
    """An in-memory grpcio servicer, written the obvious way (no validation at all)."""

    def __init__(self, protos: GrpcioProtos) -> None:
        self.protos = protos
        self.infos: dict[bytes, bytes] = {}
        self.lock = threading.Lock()
        self.lie_on_get = False
        self.garbage = False
        self.nar = (0, b"")

    def servicer(self) -> Any:
        fake, p = self, self.protos

        class PathInfos(p.rpc_pathinfo_grpc.PathInfoServiceServicer):  # type: ignore[misc,name-defined]
            def Get(self, request: Any, context: Any) -> Any:
                data = fake.infos.get(request.by_output_hash)
                if data is None:
                    context.abort(grpc.StatusCode.NOT_FOUND, "no such path info")
                message = p.pathinfo.PathInfo.FromString(data)
                if fake.lie_on_get:
                    message = p.pathinfo.PathInfo.FromString(next(iter(fake.infos.values())))
                if fake.garbage:
                    message.narinfo.reference_names.append("extra")
                return message

            def Put(self, request: Any, context: Any) -> Any:
                if request.narinfo.nar_size == 13:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the fake hates 13")
                node = getattr(request.node, request.node.WhichOneof("node"))
                key = StorePath.parse_basename(node.name.decode()).digest
                with fake.lock:
                    fake.infos[key] = request.SerializeToString()
                return request

            def List(self, request: Any, context: Any) -> Iterator[Any]:
                for data in list(fake.infos.values()):
                    message = p.pathinfo.PathInfo.FromString(data)
                    if fake.garbage:
                        message.narinfo.nar_sha256 = b"short"
                    yield message

            def CalculateNAR(self, request: Any, context: Any) -> Any:
                if request.WhichOneof("node") is None:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no node")
                node = getattr(request, request.WhichOneof("node"))
                if node.name:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "named node")
                size, sha = fake.nar
                return p.rpc_pathinfo.CalculateNARResponse(nar_size=size, nar_sha256=sha)

        return PathInfos()


@pytest.fixture
def grpcio_server(
    grpcio_protos: GrpcioProtos, tmp_path: Path
) -> Iterator[tuple[str, _FakePathInfos]]:
    fake = _FakePathInfos(grpcio_protos)
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    grpcio_protos.rpc_pathinfo_grpc.add_PathInfoServiceServicer_to_server(fake.servicer(), server)
    socket = str(tmp_path / "grpcio.sock")
    server.add_insecure_port("unix:" + socket)
    server.start()
    try:
        yield f"grpc+unix://{socket}", fake
    finally:
        server.stop(None).wait(10)


@pytest.mark.asyncio
async def test_our_client_against_grpcio(grpcio_server: tuple[str, _FakePathInfos]) -> None:
    url, fake = grpcio_server
    client = GrpcPathInfoService.from_url(url)
    infos = rich_infos()
    try:
        for info in infos:
            assert await client.put(info) == info
        assert fake.infos[infos[0].digest] == wire.encode_path_info(infos[0])
        for info in infos:
            assert await client.get(info.digest) == info
        assert await client.get(store_path("absent").digest) is None
        listed = [i async for i in client.list()]
        assert sorted(i.store_path for i in listed) == sorted(i.store_path for i in infos)
        with pytest.raises(InvalidRequest, match="the fake hates 13"):
            await client.put(make_info("thirteen", nar_size=13))
        with pytest.raises(InvalidRequest, match="nar_sha256 has 1 bytes"):
            await client.put(make_info("invalid", nar_sha256=b"x"))  # rejected before sending
        assert make_info("invalid").digest not in fake.infos

        fake.nar = (128, hashlib.sha256(b"nar").digest())
        assert await client.calculate_nar(make_info("n").node) == fake.nar  # name stripped

        fake.nar = (128, b"short")
        with pytest.raises(StorageError, match="nar_sha256 has 5 bytes"):
            await client.calculate_nar(make_info("n").node)
        fake.lie_on_get = True
        with pytest.raises(StorageError, match=r"asked for .*, got"):
            await client.get(infos[-1].digest)
        fake.lie_on_get, fake.garbage = False, True
        with pytest.raises(StorageError, match="the server sent an invalid path info"):
            await client.get(infos[0].digest)
        with pytest.raises(StorageError, match="nar_sha256 has 5 bytes"):
            _ = [i async for i in client.list()]
    finally:
        await client.close()
