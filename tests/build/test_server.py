"""The gRPC servers and the client adapter: DoBuild, the streaming method, errors, cancellation."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import grpc
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server
from grpclib.testing import ChannelFor

from clients.build.errors import BuildFailed
from clients.build.grpc import GrpcBuildService
from clients.build.model import Build, BuildConstraints, BuildRequest, EnvVar
from clients.build.protocols import BuildService, LogSink
from clients.castore.model import FileNode
from clients.errors import InvalidRequest
from nixcompat.storepath import StorePath
from proto.gen.tvix.build import v1 as build_pb
from tests.build.helpers import Store, leftovers, sh_derivation
from tests.grpcserver import closing_connections
from tests.interop import GrpcioProtos, in_thread
from tvixd.build.dummy import FAIL_VARIABLE, DummyBuildService
from tvixd.build.oci.service import OciBuildService, OciConfig
from tvixd.build.server import build_servicers

pytestmark = pytest.mark.asyncio


def dummy_request(fail: str | None = None) -> BuildRequest:
    env = (EnvVar(FAIL_VARIABLE, fail.encode()),) if fail is not None else ()
    return BuildRequest(
        command_args=("/bin/true",),
        outputs=("nix/store/" + "a" * 32 + "-x",),
        constraints=BuildConstraints("x86_64-linux"),
        scratch_paths=("nix/store",),
        environment_vars=env,
    )


@asynccontextmanager
async def serve_unix(service: BuildService, socket: Path) -> AsyncIterator[None]:
    server = Server(build_servicers(service))
    async with closing_connections(server):
        await server.start(path=str(socket))
        try:
            yield
        finally:
            server.close()
            await server.wait_closed()


@asynccontextmanager
async def client_for(
    service: BuildService, kind: str, tmp_path: Path, *, streaming: bool = True
) -> AsyncIterator[GrpcBuildService]:
    if kind == "in-process":
        async with ChannelFor(build_servicers(service)) as channel:
            yield GrpcBuildService(channel, target="in-process", streaming=streaming)
    else:
        socket = tmp_path / "build.sock"
        async with serve_unix(service, socket):
            client = GrpcBuildService.from_url(f"grpc+unix://{socket}", streaming=streaming)
            yield client
            await client.close()


@pytest.mark.parametrize("kind", ["in-process", "unix"])
@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "dobuild"])
async def test_build_and_failure_through_grpc(kind: str, streaming: bool, tmp_path: Path) -> None:
    dummy = DummyBuildService()
    async with client_for(dummy, kind, tmp_path, streaming=streaming) as client:
        lines: list[bytes] = []

        async def on_log(line: bytes) -> None:
            lines.append(line)

        request = dummy_request()
        build = await client.build(request, on_log=on_log)
        assert build == await DummyBuildService().build(request)
        assert lines == ([b"dummy build of /" + request.outputs[0].encode()] if streaming else [])
        with pytest.raises(BuildFailed) as info:
            await client.build(dummy_request("broken on purpose"))
        assert "dummy build failed on request: broken on purpose" in info.value.reason
        assert info.value.exit_code == (1 if streaming else -1)
    assert dummy.builds == 2


async def test_invalid_requests_get_invalid_argument(tmp_path: Path) -> None:
    async with ChannelFor(build_servicers(DummyBuildService())) as channel:
        stub = build_pb.BuildServiceStub(channel)
        constraints = build_pb.BuildRequestBuildConstraints(system="x86_64-linux")
        bad = build_pb.BuildRequest(command_args=["x"], outputs=["/abs"], constraints=constraints)
        with pytest.raises(GRPCError) as info:
            await stub.do_build(bad)
        assert info.value.status is Status.INVALID_ARGUMENT
        assert "outputs[0] '/abs' must be relative" in str(info.value.message)


async def test_builder_errors_become_client_errors(tmp_path: Path, store: Store) -> None:
    """An InvalidRequest raised by the builder itself reaches the client as InvalidRequest."""
    service = await OciBuildService.open(
        tmp_path / "state", store.blobs, store.directories, OciConfig(systems=("x86_64-linux",))
    )
    other = BuildRequest(
        command_args=("/bin/true",),
        outputs=("nix/store/x",),
        constraints=BuildConstraints("riscv64-linux"),
        scratch_paths=("nix/store",),
    )
    for streaming in (True, False):
        async with client_for(service, "in-process", tmp_path, streaming=streaming) as client:
            with pytest.raises(InvalidRequest, match="'riscv64-linux' builder is required"):
                await client.build(other)
    await service.close()


async def test_grpcio_client_against_our_server(
    grpcio_protos: GrpcioProtos, tmp_path: Path
) -> None:
    """A client sharing no code with ours (protoc + grpcio) speaks both methods to our server."""
    socket = tmp_path / "build.sock"
    pb, rpc = grpcio_protos.build, grpcio_protos.rpc_build_grpc
    request = dummy_request()
    expected = await DummyBuildService().build(request)

    def client() -> None:
        message = pb.BuildRequest(
            command_args=list(request.command_args),
            outputs=list(request.outputs),
            scratch_paths=list(request.scratch_paths),
            constraints=pb.BuildRequest.BuildConstraints(system="x86_64-linux"),
        )
        with grpc.insecure_channel(f"unix:{socket}") as channel:
            build = rpc.BuildServiceStub(channel).DoBuild(message, timeout=10)
            assert list(build.build_request.outputs) == list(request.outputs)
            (node,) = build.outputs
            assert node.file.digest == expected.outputs[0].digest  # type: ignore[union-attr]
            stub = grpcio_protos.coordinator_grpc.StreamingBuildServiceStub(channel)
            events = list(stub.Build(message, timeout=10))
            assert [e.WhichOneof("event") for e in events] == ["log", "result"]
            bad = pb.BuildRequest(command_args=["x"], outputs=["a/../b"])
            with pytest.raises(grpc.RpcError) as info:
                rpc.BuildServiceStub(channel).DoBuild(bad, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async with serve_unix(DummyBuildService(), socket):
        await in_thread(client)


class Watched:
    """A BuildService wrapper that signals when a build has finished on the server side."""

    def __init__(self, inner: BuildService) -> None:
        self.inner = inner
        self.ended = anyio.Event()
        self.outcome: BaseException | None = None

    async def build(self, request: BuildRequest, *, on_log: LogSink | None = None) -> Build:
        try:
            return await self.inner.build(request, on_log=on_log)
        except BaseException as exc:
            self.outcome = exc
            raise
        finally:
            self.ended.set()

    async def close(self) -> None:
        await self.inner.close()


@pytest.mark.runc
async def test_oci_builds_over_grpc_and_closing_the_stream_cancels(
    builder: OciBuildService, store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    async with client_for(builder, "unix", tmp_path) as client:
        lines: list[bytes] = []

        async def collect(line: bytes) -> None:
            lines.append(line)

        drv = sh_derivation("remote", "echo one; echo two >&2; echo three; echo x > $out", busybox)
        build = await store.build(client, drv, on_log=collect)
        assert lines == [b"one", b"two", b"three"]
        assert isinstance(build.outputs[0], FileNode)

    watched = Watched(builder)
    async with client_for(watched, "unix", tmp_path) as client:
        running = anyio.Event()

        async def on_log(line: bytes) -> None:
            running.set()

        slow = sh_derivation("slow", "echo running; sleep 100; echo x > $out", busybox)
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: store.build(client, slow, on_log=on_log))
            with anyio.fail_after(30):
                await running.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(30):
            await watched.ended.wait()  # the server cancelled the build and cleaned up
        assert time.monotonic() - started < 30
    assert isinstance(watched.outcome, anyio.get_cancelled_exc_class())
    assert await builder._runc.list_ids() == []
    builds, idle = tmp_path / "state" / "builds", builder.store_dirs.idle
    assert await anyio.to_thread.run_sync(leftovers, builds, idle) == []
