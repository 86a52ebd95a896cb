"""gRPC adapters: ``BlobService`` and ``DirectoryService`` over a grpclib Channel.

They speak ``tvix.castore.v1`` to any compliant server (ours, upstream Tvix).
Status codes come back as the shared errors, in one place (``grpc_common.translate``):
``NOT_FOUND`` becomes ``None`` / an empty stream, ``INVALID_ARGUMENT``
becomes ``InvalidRequest``, anything else (and transport failures) becomes
``StorageError``.

What is verified, since the remote is not trusted: blob reads are hashed while
streaming and must match the requested digest; directories received must
validate and be the ones asked for (for recursive gets: the root, then only
directories referenced by earlier ones, each once).  What is not: the remote's
claim of a put digest (the receiver computes it; we do not hash again), and
per-directory rules on put, which the server enforces (its message passes
through).  Unary calls have a deadline (``timeout``); streams have none by
default (``stream_timeout``) because blobs can be large.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, NoReturn

import anyio
from grpclib.client import Stream
from grpclib.const import Cardinality
from grpclib.exceptions import StreamTerminatedError

from clients.castore import wire
from clients.castore.grpc_common import (
    DEFAULT_TIMEOUT,
    GrpcClient,
    abort,
    channel_from_url,
)
from clients.castore.model import B3Digest, Directory
from clients.castore.streams import Blake3Hasher, BlobReader, rechunk
from clients.errors import InvalidRequest, NotFound, StorageError
from proto.gen.tvix.castore import v1 as castore_pb

_BLOB = "/tvix.castore.v1.BlobService/"
_DIRECTORY = "/tvix.castore.v1.DirectoryService/"

__all__ = [
    "DEFAULT_TIMEOUT",
    "GrpcBlobService",
    "GrpcDirectoryPutter",
    "GrpcDirectoryService",
    "channel_from_url",
]


class GrpcBlobService(GrpcClient):
    """``BlobService`` over ``tvix.castore.v1.BlobService``."""

    async def _stat(
        self, digest: B3Digest, send_chunks: bool
    ) -> castore_pb.StatBlobResponse | None:
        request = castore_pb.StatBlobRequest(digest=digest, send_chunks=send_chunks)
        try:
            with self.errors("Stat"):
                async with self.open_stream(
                    _BLOB + "Stat",
                    Cardinality.UNARY_UNARY,
                    castore_pb.StatBlobRequest,
                    castore_pb.StatBlobResponse,
                    unary=True,
                ) as stream:
                    await stream.send_message(request, end=True)
                    reply: castore_pb.StatBlobResponse | None = await stream.recv_message()
        except NotFound:
            return None
        if reply is None:
            raise StorageError(f"Stat on {self.target}: no response for {digest}")
        return reply

    async def has(self, digest: bytes) -> bool:
        return await self._stat(B3Digest(digest), send_chunks=False) is not None

    async def stat(self, digest: bytes) -> int | None:
        """The size, from the chunk list; if the server sends none, by reading the blob."""
        d = B3Digest(digest)
        reply = await self._stat(d, send_chunks=True)
        if reply is None:
            return None
        if reply.chunks:
            return sum(int(chunk.size) for chunk in reply.chunks)
        reader = await self.open_read(d)
        if reader is None:
            return None
        size = 0
        async with reader:
            async for chunk in reader:
                size += len(chunk)
        return size

    async def open_read(self, digest: bytes) -> BlobReader | None:
        d = B3Digest(digest)
        stack = AsyncExitStack()
        stream: Stream[Any, Any] | None = None
        try:
            with self.errors("Read"):
                stream = opened = await stack.enter_async_context(
                    self.open_stream(
                        _BLOB + "Read",
                        Cardinality.UNARY_STREAM,
                        castore_pb.ReadBlobRequest,
                        castore_pb.BlobChunk,
                        unary=False,
                    )
                )
                await opened.send_message(castore_pb.ReadBlobRequest(digest=d), end=True)
                first: castore_pb.BlobChunk | None = await opened.recv_message()
        except NotFound:
            await abort(stack, stream, None)
            return None
        except BaseException as exc:
            await abort(stack, stream, exc)
            raise
        assert stream is not None
        state = {"finished": False}

        async def chunks() -> AsyncIterator[bytes]:
            hasher = Blake3Hasher()
            message = first
            while message is not None:
                data = message.data
                if not isinstance(data, bytes):
                    raise StorageError(f"Read on {self.target}: malformed BlobChunk for {d}")
                if data:
                    await hasher.update(data)
                    yield data
                with self.errors("Read"):
                    message = await stream.recv_message()
            with self.errors("Read"):
                await stream.recv_trailing_metadata()
            state["finished"] = True
            if hasher.digest() != d:
                raise StorageError(
                    f"Read on {self.target}: blob {d} arrived with digest {hasher.digest()} "
                    f"({hasher.size} bytes): corrupt or truncated"
                )

        async def close() -> None:
            await abort(stack, stream, None if state["finished"] else StorageError("closed early"))

        return BlobReader(chunks(), close, description=f"{d.short()} from {self.target}")

    async def put(self, chunks: AsyncIterable[bytes]) -> B3Digest:
        with self.errors("Put"):
            async with self.open_stream(
                _BLOB + "Put",
                Cardinality.STREAM_UNARY,
                castore_pb.BlobChunk,
                castore_pb.PutBlobResponse,
                unary=False,
            ) as stream:
                await stream.send_request()
                async for piece in rechunk(chunks):
                    await stream.send_message(castore_pb.BlobChunk(data=piece))
                await stream.end()
                reply: castore_pb.PutBlobResponse | None = await stream.recv_message()
        if reply is None or not isinstance(reply.digest, bytes) or len(reply.digest) != 32:
            raise StorageError(f"Put on {self.target}: the server sent no valid digest ({reply!r})")
        return B3Digest(reply.digest)


class GrpcDirectoryService(GrpcClient):
    """``DirectoryService`` over ``tvix.castore.v1.DirectoryService``."""

    def _received(self, message: Any, what: str) -> Directory:
        """A directory from the server, decoded and validated (StorageError otherwise)."""
        try:
            directory = wire.directory_from_proto(message)
            directory.validate()
        except InvalidRequest as exc:
            raise StorageError(
                f"{what} on {self.target}: the server sent an invalid directory: {exc}"
            ) from exc
        return directory

    async def get(self, digest: bytes) -> Directory | None:
        d = B3Digest(digest)
        try:
            with self.errors("Get"):
                async with self.open_stream(
                    _DIRECTORY + "Get",
                    Cardinality.UNARY_STREAM,
                    castore_pb.GetDirectoryRequest,
                    castore_pb.Directory,
                    unary=True,
                ) as stream:
                    await stream.send_message(castore_pb.GetDirectoryRequest(digest=d), end=True)
                    messages = [message async for message in stream]
        except NotFound:
            return None
        if len(messages) != 1:
            raise StorageError(
                f"Get on {self.target}: {len(messages)} directories for {d}, expected 1"
            )
        directory = self._received(messages[0], "Get")
        if directory.digest() != d:
            raise StorageError(f"Get on {self.target}: asked for {d}, got {directory.digest()}")
        return directory

    async def get_recursive(self, root: bytes) -> AsyncIterator[Directory]:
        d = B3Digest(root)
        expected = {d}
        received: set[B3Digest] = set()
        try:
            with self.errors("Get"):
                async with self.open_stream(
                    _DIRECTORY + "Get",
                    Cardinality.UNARY_STREAM,
                    castore_pb.GetDirectoryRequest,
                    castore_pb.Directory,
                    unary=False,
                ) as stream:
                    request = castore_pb.GetDirectoryRequest(digest=d, recursive=True)
                    await stream.send_message(request, end=True)
                    async for message in stream:
                        directory = self._received(message, "Get")
                        digest = directory.digest()
                        if digest not in expected or digest in received:
                            raise StorageError(
                                f"Get on {self.target}: unexpected directory {digest} below {d}"
                            )
                        received.add(digest)
                        expected.update(B3Digest(child.digest) for child in directory.directories)
                        yield directory
        except NotFound as exc:
            if received:
                raise StorageError(f"Get on {self.target}: NOT_FOUND in the middle of {d}") from exc
            return
        missing = expected - received
        if received and missing:
            raise StorageError(
                f"Get on {self.target}: {len(missing)} directories below {d} were not sent, "
                f"e.g. {min(missing)}"
            )

    async def put(self, directory: Directory) -> B3Digest:
        async with self.put_multiple() as putter:
            await putter.put(directory)
            return await putter.close()

    def put_multiple(self) -> GrpcDirectoryPutter:
        return GrpcDirectoryPutter(self)


class GrpcDirectoryPutter:
    """One ``DirectoryService.Put`` stream; the server validates and stores it whole."""

    def __init__(self, service: GrpcDirectoryService) -> None:
        self._service = service
        self._stack = AsyncExitStack()
        self._stream: Stream[Any, Any] | None = None
        self._done = False

    def __repr__(self) -> str:
        return f"<GrpcDirectoryPutter to {self._service.target}>"

    async def __aenter__(self) -> GrpcDirectoryPutter:
        try:
            with self._service.errors("Put"):
                self._stream = stream = await self._stack.enter_async_context(
                    self._service.open_stream(
                        _DIRECTORY + "Put",
                        Cardinality.STREAM_UNARY,
                        castore_pb.Directory,
                        castore_pb.PutDirectoryResponse,
                        unary=False,
                    )
                )
                await stream.send_request()
        except BaseException as exc:
            await abort(self._stack, self._stream, exc)
            raise
        return self

    async def _terminated(self, exc: StreamTerminatedError) -> NoReturn:
        """The server reset the stream: raise the status it ended it with, translated.

        grpclib reads the status the server sent before the reset when the
        stream's context exits with this very exception; without one, the
        reset itself is the error.
        """
        self._done = True
        with self._service.errors("Put"):
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise exc

    def _require_open(self) -> Stream[Any, Any]:
        if self._stream is None or self._done:
            raise InvalidRequest(f"{self!r} is not open (use it once, inside async with)")
        return self._stream

    async def put(self, directory: Directory) -> None:
        stream = self._require_open()
        try:
            with self._service.errors("Put"):
                await stream.send_message(wire.directory_to_proto(directory))
        except StorageError as exc:
            if isinstance(exc.__cause__, StreamTerminatedError):
                await self._terminated(exc.__cause__)
            raise

    async def close(self) -> B3Digest:
        stream = self._require_open()
        target = self._service.target
        try:
            with self._service.errors("Put"):
                await stream.end()
                reply: castore_pb.PutDirectoryResponse | None = await stream.recv_message()
                await stream.recv_trailing_metadata()
        except StorageError as exc:
            if isinstance(exc.__cause__, StreamTerminatedError):
                await self._terminated(exc.__cause__)
            raise
        self._done = True
        await self._stack.aclose()
        digest = None if reply is None else reply.root_digest
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise StorageError(f"Put on {target}: the server sent no valid root digest ({reply!r})")
        return B3Digest(digest)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            self._done = True
            await abort(self._stack, self._stream, exc or StorageError("not closed"))
