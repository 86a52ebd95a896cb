"""A thin grpclib servicer exposing any ``PathInfoService`` as tvix.store.v1.PathInfoService.

The servicer only converts: messages to domain types (``clients.store.wire``,
which rejects invalid path infos before any backend sees them), service
errors to gRPC status (``tvixd.grpc_status.status_boundary``, the one
place for that translation on the server side, shared with the castore and
the builder).

``Get`` answers with the stored bytes themselves when the backend has
``get_encoded(digest) -> bytes | None`` (the SQLite one: its canonical,
validated encoding, checked on every read), sent as they are
(:class:`tvixd.protowire.Encoded`), instead of converting the path info back
to a message and serializing it with betterproto (``bench/lookup.py``: ~1.8
→ ~1.1-1.2 ms of daemon CPU per Get).  Other backends (memory, the wrappers) go
through ``get`` and ``clients.store.wire`` as before.  Errors are translated
the same way either way.

``CalculateNAR`` needs castore contents, which a path-info service does not
see, so it goes to an injected :class:`~clients.store.protocols.NarCalculator`;
without one it answers ``UNIMPLEMENTED``.

    server = grpclib.server.Server([*castore_servicers(blobs, directories),
                                    PathInfoServiceServicer(path_infos, calculator)])
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeAlias

import betterproto
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from clients.errors import InvalidRequest, NotFound
from clients.store import wire
from clients.store.model import check_node, store_path_digest
from clients.store.protocols import NarCalculator, PathInfoService
from nixcompat import nixbase32
from proto.gen.tvix.castore import v1 as castore_pb
from proto.gen.tvix.store import v1 as store_pb
from tvixd.grpc_status import status_boundary
from tvixd.protowire import Encoded

GetEncoded: TypeAlias = Callable[[bytes], Awaitable[bytes | None]]
"""A backend's ``get_encoded``: the checked ``tvix.store.v1.PathInfo`` encoding under a digest, or None."""


class _EncodedPathInfo(Encoded, store_pb.PathInfo):  # type: ignore[misc]  # proto.gen is untyped
    """A ``PathInfo`` as the bytes a backend's ``get_encoded`` answered."""


class PathInfoServiceServicer(store_pb.PathInfoServiceBase):  # type: ignore[misc]  # proto.gen is untyped
    """``tvix.store.v1.PathInfoService`` over a ``PathInfoService`` (and a ``NarCalculator``)."""

    def __init__(
        self, path_infos: PathInfoService, nar_calculator: NarCalculator | None = None
    ) -> None:
        self._path_infos = path_infos
        self._nar_calculator = nar_calculator
        self._get_encoded: GetEncoded | None = getattr(path_infos, "get_encoded", None)

    def __repr__(self) -> str:
        return f"PathInfoServiceServicer({self._path_infos!r}, {self._nar_calculator!r})"

    async def get(self, get_path_info_request: store_pb.GetPathInfoRequest) -> store_pb.PathInfo:
        with status_boundary("PathInfoService.Get"):
            which, value = betterproto.which_one_of(get_path_info_request, "by_what")
            if which != "by_output_hash":
                raise InvalidRequest(
                    "GetPathInfoRequest.by_what is not set (expected by_output_hash)"
                )
            digest = store_path_digest(value, "GetPathInfoRequest.by_output_hash")
            if self._get_encoded is not None:
                data = await self._get_encoded(digest)
                if data is None:
                    raise NotFound(f"path info {nixbase32.encode(digest)} not found")
                return _EncodedPathInfo.of(data)
            info = await self._path_infos.get(digest)
            if info is None:
                raise NotFound(f"path info {nixbase32.encode(digest)} not found")
            return wire.path_info_to_proto(info)

    async def put(self, path_info: store_pb.PathInfo) -> store_pb.PathInfo:
        with status_boundary("PathInfoService.Put"):
            stored = await self._path_infos.put(wire.path_info_from_proto(path_info))
            return wire.path_info_to_proto(stored)

    async def calculate_nar(
        self, castore_v1_node: castore_pb.Node
    ) -> store_pb.CalculateNarResponse:
        with status_boundary("PathInfoService.CalculateNAR"):
            if self._nar_calculator is None:
                raise GRPCError(
                    Status.UNIMPLEMENTED, "CalculateNAR: this server has no castore to read"
                )
            node = wire.node_from_proto(castore_v1_node, "CalculateNAR node")
            if node.name:
                raise InvalidRequest(
                    f"CalculateNAR node has the name {node.name[:120]!r}; it must be sent "
                    "with an empty name (a NAR does not contain its root's name)"
                )
            check_node(node, "CalculateNAR node")
            size, sha256 = await self._nar_calculator.calculate_nar(node)
            return wire.calculate_nar_response(size, sha256)

    async def list(
        self, list_path_info_request: store_pb.ListPathInfoRequest
    ) -> AsyncIterator[store_pb.PathInfo]:
        with status_boundary("PathInfoService.List"):
            async for info in self._path_infos.list():
                yield wire.path_info_to_proto(info)
