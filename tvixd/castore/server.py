"""Thin grpclib servicers exposing any ``BlobService`` / ``DirectoryService`` as tvix.castore.v1.

The servicers only convert: messages to domain types (``clients.castore.wire``),
service errors to gRPC status (``tvixd.grpc_status.status_boundary``, the one
place for this boundary, re-exported here).  Rules live in the services: a
directory put stream goes through the backend's ``put_multiple``, which
validates the whole stream before anything is stored.

    server = grpclib.server.Server(castore_servicers(blobs, directories))
    await server.start(path="/run/tvixd/tvixd.sock")
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import betterproto

from clients.castore import wire
from clients.castore.model import B3Digest
from clients.castore.protocols import BlobService, DirectoryService
from clients.castore.streams import CHUNK_SIZE
from clients.errors import InvalidRequest, NotFound
from proto.gen.tvix.castore import v1 as castore_pb
from tvixd.grpc_status import status_boundary

__all__ = [
    "BlobServiceServicer",
    "DirectoryServiceServicer",
    "castore_servicers",
    "status_boundary",
]


def _digest(value: object, field: str) -> B3Digest:
    if not isinstance(value, bytes) or len(value) != 32:
        size = len(value) if isinstance(value, bytes) else type(value).__name__
        raise InvalidRequest(f"{field} must be a 32-byte blake3 digest, got {size} bytes")
    return B3Digest(value)


class BlobServiceServicer(castore_pb.BlobServiceBase):  # type: ignore[misc]  # proto.gen is untyped
    """``tvix.castore.v1.BlobService`` over a ``BlobService``.

    ``Stat`` with ``send_chunks`` describes the blob as a single chunk (its own
    digest and size); ``send_bao`` is not supported (``bao`` stays empty).
    """

    def __init__(self, blobs: BlobService) -> None:
        self._blobs = blobs

    def __repr__(self) -> str:
        return f"BlobServiceServicer({self._blobs!r})"

    async def stat(
        self, stat_blob_request: castore_pb.StatBlobRequest
    ) -> castore_pb.StatBlobResponse:
        with status_boundary("BlobService.Stat"):
            digest = _digest(stat_blob_request.digest, "StatBlobRequest.digest")
            size = await self._blobs.stat(digest)
            if size is None:
                raise NotFound(f"blob {digest} not found")
            response = castore_pb.StatBlobResponse()
            if stat_blob_request.send_chunks:
                response.chunks = [castore_pb.StatBlobResponseChunkMeta(digest=digest, size=size)]
            return response

    async def read(
        self, read_blob_request: castore_pb.ReadBlobRequest
    ) -> AsyncIterator[castore_pb.BlobChunk]:
        with status_boundary("BlobService.Read"):
            digest = _digest(read_blob_request.digest, "ReadBlobRequest.digest")
            reader = await self._blobs.open_read(digest)
            if reader is None:
                raise NotFound(f"blob {digest} not found")
            async with reader:
                async for chunk in reader:
                    for start in range(0, len(chunk), CHUNK_SIZE):
                        yield castore_pb.BlobChunk(data=chunk[start : start + CHUNK_SIZE])

    async def put(
        self, blob_chunk_iterator: AsyncIterator[castore_pb.BlobChunk]
    ) -> castore_pb.PutBlobResponse:
        async def data() -> AsyncIterator[bytes]:
            offset = 0
            async for message in blob_chunk_iterator:
                if not isinstance(message.data, bytes):
                    raise InvalidRequest(f"malformed BlobChunk at byte offset {offset}")
                offset += len(message.data)
                yield message.data

        with status_boundary("BlobService.Put"):
            return castore_pb.PutBlobResponse(digest=await self._blobs.put(data()))


class DirectoryServiceServicer(castore_pb.DirectoryServiceBase):  # type: ignore[misc]  # proto.gen is untyped
    """``tvix.castore.v1.DirectoryService`` over a ``DirectoryService``."""

    def __init__(self, directories: DirectoryService) -> None:
        self._directories = directories

    def __repr__(self) -> str:
        return f"DirectoryServiceServicer({self._directories!r})"

    async def get(
        self, get_directory_request: castore_pb.GetDirectoryRequest
    ) -> AsyncIterator[castore_pb.Directory]:
        with status_boundary("DirectoryService.Get"):
            which, value = betterproto.which_one_of(get_directory_request, "by_what")
            if which != "digest":
                raise InvalidRequest("GetDirectoryRequest.by_what is not set (expected a digest)")
            digest = _digest(value, "GetDirectoryRequest.digest")
            if not get_directory_request.recursive:
                directory = await self._directories.get(digest)
                if directory is None:
                    raise NotFound(f"directory {digest} not found")
                yield wire.directory_to_proto(directory)
                return
            found = False
            async for directory in self._directories.get_recursive(digest):
                found = True
                yield wire.directory_to_proto(directory)
            if not found:
                raise NotFound(f"directory {digest} not found")

    async def put(
        self, directory_iterator: AsyncIterator[castore_pb.Directory]
    ) -> castore_pb.PutDirectoryResponse:
        with status_boundary("DirectoryService.Put"):
            async with self._directories.put_multiple() as putter:
                index = 0
                async for message in directory_iterator:
                    try:
                        await putter.put(wire.directory_from_proto(message))
                    except InvalidRequest as exc:
                        raise InvalidRequest(f"put stream message {index}: {exc}") from exc
                    index += 1
                root = await putter.close()
            return castore_pb.PutDirectoryResponse(root_digest=root)


def castore_servicers(
    blobs: BlobService, directories: DirectoryService
) -> list[BlobServiceServicer | DirectoryServiceServicer]:
    """Both castore servicers, ready for ``grpclib.server.Server``."""
    return [BlobServiceServicer(blobs), DirectoryServiceServicer(directories)]
