"""Every castore backend, as fixtures the conformance suites are parametrized over.

``grpc-inprocess``: our gRPC adapter talking to our server through
``grpclib.testing.ChannelFor``; ``grpc-unix``: the same over a real unix
socket.  Both servers are backed by the memory backends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from grpclib.testing import ChannelFor

from clients.castore.grpc import GrpcBlobService, GrpcDirectoryService
from clients.castore.protocols import BlobService, DirectoryService
from tests.castore.helpers import serve_unix
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.blobs.objectstore import ObjectStoreBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService
from tvixd.castore.directories.sqlite import SqliteDirectoryService
from tvixd.castore.server import castore_servicers

BLOB_BACKENDS = ["memory", "objectstore", "grpc-inprocess", "grpc-unix"]
DIRECTORY_BACKENDS = ["memory", "sqlite", "grpc-inprocess", "grpc-unix"]


@pytest_asyncio.fixture(params=BLOB_BACKENDS)
async def blob_service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BlobService]:
    kind = request.param
    if kind == "memory":
        yield MemoryBlobService()
    elif kind == "objectstore":
        service = await ObjectStoreBlobService.open(tmp_path_factory.mktemp("blobs"))
        yield service
        await service.close()
    elif kind == "grpc-inprocess":
        servicers = castore_servicers(MemoryBlobService(), MemoryDirectoryService())
        async with ChannelFor(servicers) as channel:
            yield GrpcBlobService(channel, target="in-process")
    else:
        socket = tmp_path_factory.mktemp("sock") / "castore.sock"
        async with serve_unix(socket, MemoryBlobService(), MemoryDirectoryService()):
            client = GrpcBlobService.from_url(f"grpc+unix://{socket}")
            yield client
            await client.close()


@pytest_asyncio.fixture(params=DIRECTORY_BACKENDS)
async def directory_service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[DirectoryService]:
    kind = request.param
    if kind == "memory":
        yield MemoryDirectoryService()
    elif kind == "sqlite":
        service = await SqliteDirectoryService.open(tmp_path_factory.mktemp("db") / "dirs.db")
        yield service
        await service.close()
    elif kind == "grpc-inprocess":
        servicers = castore_servicers(MemoryBlobService(), MemoryDirectoryService())
        async with ChannelFor(servicers) as channel:
            yield GrpcDirectoryService(channel, target="in-process")
    else:
        socket = tmp_path_factory.mktemp("sock") / "castore.sock"
        async with serve_unix(socket, MemoryBlobService(), MemoryDirectoryService()):
            client = GrpcDirectoryService.from_url(f"grpc+unix://{socket}")
            yield client
            await client.close()
