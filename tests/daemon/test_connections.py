"""Shutdown closes client connections: idle ones, ``Watch`` streams, and clients that do not read.

Neither grpclib's nor asyncio's ``Server.close()`` closes connections a
server already accepted; the daemon does (``tvixd.endpoints.Connections``):
``GOAWAY``, then close, then drop what is left.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import anyio
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from h2.errors import ErrorCodes

from clients.castore.grpc import GrpcBlobService
from clients.castore.streams import put_bytes
from proto.gen.tvix.castore import v1 as castore_pb
from proto.gen.tvixd import v1 as tvixd_pb
from tests.conftest import require_tool
from tests.daemon.conftest import NotifySocket, memory_config
from tests.daemon.h2client import MAX_WINDOW, RawClient
from tests.daemon.test_daemon import running
from tests.daemon.test_process import MEMORY, environment, launched, wait_exit

SLOW_BUILD = """\
{ top = derivation {
    name = "slow"; system = "x86_64-linux"; builder = "/bin/sh"; salt = "connections";
  }; }
"""


async def _watch_until_stopped(
    stub: tvixd_pb.CoordinatorStub, job_id: str, first_event: anyio.Event
) -> Exception | None:
    """Follow the job; the error that ended the stream (``None``: it ended normally)."""
    try:
        async for _ in stub.watch(tvixd_pb.WatchRequest(job_id=job_id, follow=True)):
            first_event.set()
    except (GRPCError, StreamTerminatedError) as exc:
        return exc
    return None


@pytest.mark.asyncio
async def test_sigterm_closes_idle_connections_and_ends_watch_streams(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    require_tool("nix-instantiate")
    nix_file = tmp_path / "slow.nix"
    await anyio.Path(nix_file).write_text(SLOW_BUILD)
    sock = tmp_path / "tvixd.sock"
    memory = [*MEMORY[:-1], "dummy://?delay=600"]  # the build outlives the daemon
    argv = [sys.executable, "-m", "tvixd.main", "--listen", f"unix:{sock}", *memory]
    flags = ["--state-dir", str(tmp_path / "state"), "--shutdown-grace", "1"]
    with launched([*argv, *flags], environment(notify_socket)) as process:
        await notify_socket.wait_for("READY=1")
        channel = Channel(path=str(sock))
        idle = await RawClient.connect(sock)
        try:
            stub = tvixd_pb.CoordinatorStub(channel)
            request = tvixd_pb.SubmitRequest(
                nix_file=tvixd_pb.NixFile(path=str(nix_file), attr_paths=["top"])
            )
            job = await stub.submit(request, timeout=30)
            # the idle client made one call and then keeps its connection, saying nothing
            get_job = bytes(tvixd_pb.GetJobRequest(id=job.id))
            await idle.until_ended(await idle.call("/tvixd.v1.Coordinator/GetJob", get_job))
            outcome: list[Exception | None] = []
            async with anyio.create_task_group() as tg:
                first_event = anyio.Event()

                async def watch() -> None:
                    outcome.append(await _watch_until_stopped(stub, job.id, first_event))

                tg.start_soon(watch)
                with anyio.fail_after(30):
                    await first_event.wait()
                process.send_signal(signal.SIGTERM)
                with anyio.fail_after(30):
                    await idle.until_closed()
            status, stderr = await wait_exit(process, 30)
        finally:
            channel.close()
            await idle.aclose()
    assert status == 0, stderr
    # the Watch stream was ended with a status, not by a dropped connection
    (error,) = outcome
    assert isinstance(error, GRPCError), error  # before: StreamTerminatedError, Connection lost
    assert error.status is Status.UNAVAILABLE
    assert error.message == "tvixd is shutting down"
    # the idle connection was told (GOAWAY, no error) before it was closed
    goaway = idle.goaway()
    assert goaway is not None, idle.events
    assert goaway.error_code == ErrorCodes.NO_ERROR
    assert 'msg="closing 2 client connections"' in stderr
    assert "dropped" not in stderr


@pytest.mark.asyncio
async def test_in_process_stop_closes_idle_connections(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A daemon in a longer-lived process (tests, embedded) must not leave sockets open."""
    caplog.set_level(logging.INFO, "tvixd.daemon")
    caplog.set_level(logging.INFO, "tvixd.endpoints")
    config = memory_config(tmp_path)
    sock = tmp_path / "tvixd.sock"
    async with running(config) as run:
        blobs = GrpcBlobService.from_url(f"grpc+unix://{sock}")
        digest = await put_bytes(blobs, b"kept open")  # grpclib's client keeps its connection
        idle = await RawClient.connect(sock)
        stat = bytes(castore_pb.StatBlobRequest(digest=bytes(digest)))
        await idle.until_ended(await idle.call("/tvix.castore.v1.BlobService/Stat", stat))
        silent = await RawClient.connect(sock)  # connected, never made a call
        await silent.receive()  # the server's SETTINGS: it was accepted
    assert run.done.is_set()
    try:
        for client in (idle, silent):
            with anyio.fail_after(10):  # before the fix: open until the process exits
                await client.until_closed()
            goaway = client.goaway()
            assert goaway is not None
            assert goaway.error_code == ErrorCodes.NO_ERROR
    finally:
        await blobs.close()
        await idle.aclose()
        await silent.aclose()
    assert "closing 3 client connections" in caplog.messages
    assert not any("dropped" in message for message in caplog.messages)


@pytest.mark.asyncio
async def test_a_client_that_does_not_read_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stuck reader holds its connection's unsent bytes: closing cannot finish; it is cut."""
    caplog.set_level(logging.INFO, "tvixd.daemon")
    caplog.set_level(logging.INFO, "tvixd.endpoints")
    config = memory_config(tmp_path, shutdown_grace="1")
    sock = tmp_path / "tvixd.sock"
    data = bytes(range(256)) * (32 << 10)  # 8 MiB: far beyond the socket buffers
    async with running(config) as run:
        blobs = GrpcBlobService.from_url(f"grpc+unix://{sock}")
        try:
            digest = await put_bytes(blobs, data)
        finally:
            await blobs.close()
        stuck = await RawClient.connect(sock, window=MAX_WINDOW)
        read = bytes(castore_pb.ReadBlobRequest(digest=bytes(digest)))
        stream_id = await stuck.call("/tvix.castore.v1.BlobService/Read", read)
        await stuck.until_response(stream_id)  # then it stops reading
    assert run.done.is_set()
    try:
        with anyio.fail_after(10):
            await stuck.until_closed()  # what was in flight, then the end
    finally:
        await stuck.aclose()
    assert stuck.received < len(data)
    assert "cancelling 1 requests still running" in caplog.messages
    assert "dropped 1 client connections that did not close" in caplog.messages
