"""gRPC servicers exposing any ``BuildService``: upstream's DoBuild and our streaming Build.

* ``tvix.build.v1.BuildService/DoBuild`` (wire-compatible with upstream):
  the Build, or a status — ``ABORTED`` when the build failed (the message
  has the reason and the log tail).
* ``tvixd.v1.StreamingBuildService/Build``: ``BuildEvent``s — ``log`` lines
  as the build runs, then one ``result`` or one ``failure`` (reason with the
  log tail, exit code).  Log lines go through a small buffer, so a slow
  reader slows the build's output instead of growing memory.  When the client
  closes the stream, grpclib cancels the handler and with it the build.

Errors become statuses in one place (``tvixd.grpc_status.status_boundary``,
shared with the castore and store servicers; :func:`status_boundary` here
also sends an unexpected error's message): ``InvalidRequest`` →
``INVALID_ARGUMENT``, ``NotFound`` → ``NOT_FOUND``, ``BuildFailed`` →
``ABORTED``, ``BuildError`` / ``StorageError`` / anything else → ``INTERNAL``.

    server = grpclib.server.Server(build_servicers(builder))
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import anyio
import grpclib.const
import grpclib.server

from clients.build import wire
from clients.build.errors import BuildFailed
from clients.build.model import Build
from clients.build.protocols import BuildService
from proto.gen.tvix.build import v1 as build_pb
from proto.gen.tvixd import v1 as tvixd_pb
from tvixd import grpc_status

__all__ = [
    "BuildServiceServicer",
    "StreamingBuildServiceServicer",
    "build_servicers",
    "status_boundary",
]

EVENT_BUFFER = 64
"""Events (log lines) buffered between a build and a slow stream reader."""


def status_boundary(method: str) -> AbstractContextManager[None]:
    """``tvixd.grpc_status.status_boundary`` revealing unexpected errors' messages too."""
    return grpc_status.status_boundary(method, reveal=True)


class BuildServiceServicer(build_pb.BuildServiceBase):  # type: ignore[misc]  # proto.gen is untyped
    """``tvix.build.v1.BuildService`` over a ``BuildService``."""

    def __init__(self, service: BuildService) -> None:
        self._service = service

    def __repr__(self) -> str:
        return f"BuildServiceServicer({self._service!r})"

    async def do_build(self, build_request: build_pb.BuildRequest) -> build_pb.Build:
        with status_boundary("BuildService.DoBuild"):
            request = wire.request_from_proto(build_request)
            return wire.build_to_proto(await self._service.build(request))


class StreamingBuildServiceServicer(tvixd_pb.StreamingBuildServiceBase):  # type: ignore[misc]
    """``tvixd.v1.StreamingBuildService`` over a ``BuildService``.

    The handler is our own (:meth:`__mapping__`), not betterproto's
    async-generator plumbing: the build runs in a task group owned by the
    handler, so a cancelled handler cancels the build before it returns.
    """

    def __init__(self, service: BuildService) -> None:
        self._service = service

    def __repr__(self) -> str:
        return f"StreamingBuildServiceServicer({self._service!r})"

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            "/tvixd.v1.StreamingBuildService/Build": grpclib.const.Handler(
                self._handle,
                grpclib.const.Cardinality.UNARY_STREAM,
                build_pb.BuildRequest,
                tvixd_pb.BuildEvent,
            )
        }

    async def _handle(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        method = "StreamingBuildService.Build"
        message = await stream.recv_message()
        with status_boundary(method):
            request = wire.request_from_proto(message)
        send, receive = anyio.create_memory_object_stream[tvixd_pb.BuildEvent](EVENT_BUFFER)
        outcome: list[Build | BuildFailed | Exception] = []

        async def on_log(line: bytes) -> None:
            await send.send(wire.event_log(line))

        async def run() -> None:
            async with send:
                try:
                    outcome.append(await self._service.build(request, on_log=on_log))
                except BuildFailed as failure:
                    outcome.append(failure)
                except Exception as exc:  # raised as a status below, after the log lines
                    outcome.append(exc)

        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(run)
            async for event in receive:
                await stream.send_message(event)
        (result,) = outcome
        with status_boundary(method):
            if isinstance(result, Build):
                await stream.send_message(wire.event_result(result))
            elif isinstance(result, BuildFailed):
                await stream.send_message(wire.event_failure(result))
            else:
                raise result


def build_servicers(
    service: BuildService,
) -> list[BuildServiceServicer | StreamingBuildServiceServicer]:
    """Both build servicers, ready for ``grpclib.server.Server``."""
    return [BuildServiceServicer(service), StreamingBuildServiceServicer(service)]
