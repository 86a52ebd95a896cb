"""gRPC adapter: ``PathInfoService`` (and ``NarCalculator``) over a grpclib Channel.

It speaks ``tvix.store.v1.PathInfoService`` to any compliant server (ours,
upstream Tvix).  Status codes come back as the shared errors, in the castore's
one place (``clients.castore.grpc_common.translate``): ``NOT_FOUND`` becomes
``None``, ``INVALID_ARGUMENT`` becomes ``InvalidRequest``, anything else (and
transport failures) ``StorageError``.

What is verified, since the remote is not trusted: every path info received
must decode and validate (``clients.store.wire``), and ``get`` must return the
path asked for; a CalculateNAR answer must carry a 32-byte hash.  Otherwise
``StorageError``.  A ``put`` validates locally first, so an invalid path info
never leaves the process.  Unary calls have a deadline (``timeout``); ``list``
streams have none by default (``stream_timeout``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpclib.const import Cardinality

from clients.castore.grpc_common import GrpcClient
from clients.castore.model import Node
from clients.errors import InvalidRequest, NotFound, StorageError
from clients.store import wire
from clients.store.model import PathInfo, check_node, with_name
from nixcompat import nixbase32
from proto.gen.tvix.castore import v1 as castore_pb
from proto.gen.tvix.store import v1 as store_pb

_PATH_INFO = "/tvix.store.v1.PathInfoService/"

__all__ = ["GrpcPathInfoService"]


class GrpcPathInfoService(GrpcClient):
    """``PathInfoService`` and ``NarCalculator`` over ``tvix.store.v1.PathInfoService``."""

    def _received(self, message: object, what: str) -> PathInfo:
        try:
            return wire.path_info_from_proto(message)
        except InvalidRequest as exc:
            raise StorageError(
                f"{what} on {self.target}: the server sent an invalid path info: {exc}"
            ) from exc

    async def _unary(self, method: str, request: Any, send: type, recv: type) -> Any:
        with self.errors(method):
            async with self.open_stream(
                _PATH_INFO + method, Cardinality.UNARY_UNARY, send, recv, unary=True
            ) as stream:
                await stream.send_message(request, end=True)
                reply = await stream.recv_message()
        if reply is None:
            raise StorageError(f"{method} on {self.target}: no response")
        return reply

    async def get(self, digest: bytes) -> PathInfo | None:
        d = wire.store_path_digest(digest, "digest")
        try:
            reply = await self._unary(
                "Get",
                store_pb.GetPathInfoRequest(by_output_hash=d),
                store_pb.GetPathInfoRequest,
                store_pb.PathInfo,
            )
        except NotFound:
            return None
        info = self._received(reply, "Get")
        if info.digest != d:
            raise StorageError(
                f"Get on {self.target}: asked for {nixbase32.encode(d)}, "
                f"got {info.store_path.basename}"
            )
        return info

    async def put(self, info: PathInfo) -> PathInfo:
        info.validate()
        reply = await self._unary(
            "Put", wire.path_info_to_proto(info), store_pb.PathInfo, store_pb.PathInfo
        )
        stored = self._received(reply, "Put")
        if stored.store_path != info.store_path:
            raise StorageError(
                f"Put on {self.target}: put {info.store_path.basename}, "
                f"the server answered with {stored.store_path.basename}"
            )
        return stored

    async def list(self) -> AsyncIterator[PathInfo]:
        with self.errors("List"):
            async with self.open_stream(
                _PATH_INFO + "List",
                Cardinality.UNARY_STREAM,
                store_pb.ListPathInfoRequest,
                store_pb.PathInfo,
                unary=False,
            ) as stream:
                await stream.send_message(store_pb.ListPathInfoRequest(), end=True)
                async for message in stream:
                    yield self._received(message, "List")

    async def calculate_nar(self, node: Node) -> tuple[int, bytes]:
        """Ask the server; the node is sent with an empty name, as the protocol requires."""
        check_node(node, "CalculateNAR")
        reply = await self._unary(
            "CalculateNAR",
            wire.node_to_proto(with_name(node, b"")),
            castore_pb.Node,
            store_pb.CalculateNarResponse,
        )
        try:
            return wire.nar_from_response(reply)
        except InvalidRequest as exc:
            raise StorageError(f"CalculateNAR on {self.target}: {exc}") from exc
