"""Our PathInfoService server and client beyond the conformance suite: CalculateNAR and status codes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.testing import ChannelFor

from clients.castore import wire as castore_wire
from clients.castore.model import B3Digest, DirectoryNode, FileNode, SymlinkNode
from clients.errors import InvalidRequest, NotFound, StorageError
from clients.store import wire
from clients.store.grpc import GrpcPathInfoService
from clients.store.model import with_name
from proto.gen.tvix.castore import v1 as castore_pb
from proto.gen.tvix.store import v1 as store_pb
from tests.store.pathinfo_helpers import ReferenceNarCalculator, ingest_tree, make_info
from tests.vectors import entries
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService
from tvixd.store.pathinfo.memory import MemoryPathInfoService
from tvixd.store.pathinfo.sqlite import SqlitePathInfoService
from tvixd.store.server import PathInfoServiceServicer

NAR_TREES = [e for e in entries("nar") if "tree" in e]
CASTORE_TREES = {e["id"]: e for e in entries("castore_directories", kind="tree")}


@dataclass
class Store:
    blobs: MemoryBlobService
    directories: MemoryDirectoryService
    path_infos: MemoryPathInfoService
    client: GrpcPathInfoService
    stub: Any


@pytest_asyncio.fixture
async def store() -> AsyncIterator[Store]:
    blobs, directories, path_infos = (
        MemoryBlobService(),
        MemoryDirectoryService(),
        MemoryPathInfoService(),
    )
    servicer = PathInfoServiceServicer(path_infos, ReferenceNarCalculator(blobs, directories))
    async with ChannelFor([servicer]) as channel:
        yield Store(
            blobs,
            directories,
            path_infos,
            GrpcPathInfoService(channel, target="in-process"),
            store_pb.PathInfoServiceStub(channel),
        )


@pytest.mark.asyncio
async def test_calculate_nar_matches_nix(store: Store) -> None:
    """CalculateNAR over gRPC gives the NAR size and hash Nix computed for every vector tree."""
    for entry in NAR_TREES:
        node = await ingest_tree(entry["tree"], store.blobs, store.directories)
        castore = CASTORE_TREES[entry["id"]]["root_node"]
        if isinstance(node, SymlinkNode):
            assert node.target.decode() == castore["target"]
        else:
            assert node.digest.hex() == castore["digest"], entry["id"]
        size, sha256 = await store.client.calculate_nar(with_name(node, b"any-name"))
        assert (size, sha256.hex()) == (entry["nar_size"], entry["nar_sha256_hex"]), entry["id"]


@pytest.mark.asyncio
async def test_calculate_nar_rejects_named_node(store: Store) -> None:
    node = castore_wire.node_to_proto(FileNode(b"named", bytes(B3Digest.of(b"")), 0))
    with pytest.raises(GRPCError) as excinfo:
        await store.stub.calculate_nar(node)
    assert excinfo.value.status is Status.INVALID_ARGUMENT
    assert "CalculateNAR node has the name b'named'; it must be sent with an empty name" in str(
        excinfo.value.message
    )


@pytest.mark.asyncio
async def test_calculate_nar_bad_nodes(store: Store) -> None:
    with pytest.raises(GRPCError) as excinfo:
        await store.stub.calculate_nar(castore_pb.Node())
    assert excinfo.value.status is Status.INVALID_ARGUMENT
    assert "malformed Node" in str(excinfo.value.message)
    with pytest.raises(InvalidRequest, match="digest of 3 bytes"):
        await store.client.calculate_nar(FileNode(b"", b"abc", 0))
    short = castore_pb.Node(directory=castore_pb.DirectoryNode(digest=b"abc"))
    with pytest.raises(GRPCError) as excinfo:
        await store.stub.calculate_nar(short)
    assert excinfo.value.status is Status.INVALID_ARGUMENT
    assert "directory node b'' has a digest of 3 bytes" in str(excinfo.value.message)


@pytest.mark.asyncio
async def test_calculate_nar_missing_contents(store: Store) -> None:
    with pytest.raises(NotFound, match="not found"):
        await store.client.calculate_nar(DirectoryNode(b"", bytes(B3Digest.of(b"gone")), 1))
    with pytest.raises(NotFound, match="not found"):
        await store.client.calculate_nar(FileNode(b"", bytes(B3Digest.of(b"gone")), 4))


@pytest.mark.asyncio
async def test_calculate_nar_unimplemented_without_calculator() -> None:
    async with ChannelFor([PathInfoServiceServicer(MemoryPathInfoService())]) as channel:
        client = GrpcPathInfoService(channel, target="in-process")
        with pytest.raises(StorageError, match="UNIMPLEMENTED"):
            await client.calculate_nar(SymlinkNode(b"", b"x"))


@pytest.mark.asyncio
async def test_get_status_codes(store: Store) -> None:
    with pytest.raises(GRPCError) as excinfo:
        await store.stub.get(store_pb.GetPathInfoRequest())
    assert excinfo.value.status is Status.INVALID_ARGUMENT
    assert "GetPathInfoRequest.by_what is not set" in str(excinfo.value.message)
    with pytest.raises(GRPCError) as excinfo:
        await store.stub.get(store_pb.GetPathInfoRequest(by_output_hash=bytes(32)))
    assert excinfo.value.status is Status.INVALID_ARGUMENT
    assert "by_output_hash must be a 20-byte store path digest, got 32 bytes" in str(
        excinfo.value.message
    )
    info = make_info("absent")
    with pytest.raises(GRPCError) as excinfo:
        await store.stub.get(store_pb.GetPathInfoRequest(by_output_hash=info.digest))
    assert excinfo.value.status is Status.NOT_FOUND
    assert info.store_path.hash_part in str(excinfo.value.message)


@pytest.mark.asyncio
async def test_put_returns_what_was_stored(store: Store) -> None:
    info = make_info("returned")
    reply = await store.stub.put(wire.path_info_to_proto(info))
    assert bytes(reply) == wire.encode_path_info(info)
    assert await store.path_infos.get(info.digest) == info


@pytest.mark.asyncio
async def test_backend_failure_is_internal(tmp_path: Path) -> None:
    backend = await SqlitePathInfoService.open(tmp_path / "p.db")
    await backend.close()
    async with ChannelFor([PathInfoServiceServicer(backend)]) as channel:
        client = GrpcPathInfoService(channel, target="in-process")
        with pytest.raises(StorageError, match=r"INTERNAL: PathInfoService.Get: .* is closed"):
            await client.get(make_info("x").digest)
        with pytest.raises(StorageError, match="INTERNAL"):
            await client.put(make_info("x"))
        with pytest.raises(StorageError, match="INTERNAL"):
            _ = [i async for i in client.list()]
