"""gRPC adapter: ``BuildService`` over a grpclib Channel.

Two wire methods:

* ``tvixd.v1.StreamingBuildService/Build`` (default): log lines arrive as
  the build runs, then a result or a failure event.  Leaving early (the
  awaiting task is cancelled, ``on_log`` raises) resets the stream, which
  cancels the build on the server.
* ``tvix.build.v1.BuildService/DoBuild`` (``streaming=False``), for builders
  that speak only upstream's protocol: no log lines, a build failure arrives
  as status ``ABORTED`` from our servers (upstream's report every failure as
  ``INTERNAL``, which becomes ``BuildError``).

Statuses become errors in one place (:func:`_translate`, the shared
``clients.castore.grpc_common.translate``): ``INVALID_ARGUMENT`` →
``InvalidRequest``, ``NOT_FOUND`` → ``NotFound``, ``ABORTED`` →
``BuildFailed``, anything else and transport failures → ``BuildError``.
What the server sends back is validated (``clients.build.wire``) and must
answer the request that was sent.  Builds have no deadline by default
(``timeout``): the builder enforces its own.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import MappingProxyType
from typing import Any

from grpclib.const import Cardinality, Status

from clients.build import wire
from clients.build.errors import BuildError, BuildFailed
from clients.build.model import Build, BuildRequest
from clients.build.protocols import LogSink
from clients.castore.grpc_common import GrpcClient, translate
from clients.errors import InvalidRequest
from proto.gen.tvix.build import v1 as build_pb
from proto.gen.tvixd import v1 as tvixd_pb

__all__ = ["DO_BUILD", "STREAMING_BUILD", "GrpcBuildService"]

DO_BUILD = "/tvix.build.v1.BuildService/DoBuild"
STREAMING_BUILD = "/tvixd.v1.StreamingBuildService/Build"
_STATUSES = MappingProxyType({Status.ABORTED: BuildFailed})


def _translate(target: str) -> AbstractContextManager[None]:
    """The client-side status boundary for builds."""
    return translate(target, "build", failure=BuildError, statuses=_STATUSES)


class GrpcBuildService(GrpcClient):
    """``BuildService`` over the streaming method (default) or upstream's ``DoBuild``."""

    def __init__(self, *args: Any, streaming: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", None)
        super().__init__(*args, **kwargs)
        self._streaming = streaming

    def __repr__(self) -> str:
        method = "streaming" if self._streaming else "DoBuild"
        return f"GrpcBuildService({self.target}, {method})"

    def _check(self, build: Build, request: BuildRequest) -> Build:
        if build.request != request:
            raise BuildError(f"build on {self.target}: the result answers a different request")
        return build

    async def build(self, request: BuildRequest, *, on_log: LogSink | None = None) -> Build:
        message = wire.request_to_proto(request)
        if not self._streaming:
            with _translate(self.target):
                async with self.open_stream(
                    DO_BUILD, Cardinality.UNARY_UNARY, build_pb.BuildRequest, build_pb.Build,
                    unary=True,
                ) as stream:  # fmt: skip
                    await stream.send_message(message, end=True)
                    reply = await stream.recv_message()
            if reply is None:
                raise BuildError(f"DoBuild on {self.target}: no response")
            return self._check(self._decode(wire.build_from_proto, reply), request)
        with _translate(self.target):
            async with self.open_stream(
                STREAMING_BUILD, Cardinality.UNARY_STREAM, build_pb.BuildRequest,
                tvixd_pb.BuildEvent, unary=False,
            ) as stream:  # fmt: skip
                await stream.send_message(message, end=True)
                async for event in stream:
                    decoded = self._decode(wire.event_from_proto, event)
                    if isinstance(decoded, bytes):
                        if on_log is not None:
                            await on_log(decoded)
                    elif isinstance(decoded, BuildFailed):
                        raise decoded
                    else:
                        return self._check(decoded, request)
        raise BuildError(f"build on {self.target}: the stream ended without a result")

    def _decode(self, decode: Any, message: object) -> Any:
        try:
            return decode(message)
        except InvalidRequest as exc:
            raise BuildError(f"build on {self.target}: malformed reply: {exc}") from exc
