"""The gRPC adapters when the server dies mid-call: the error, and the task's cancel scopes after it.

grpclib 0.4.9 wakes a task waiting on a call whose connection dropped (or
whose deadline passed) with ``task.cancel()``, raises ``StreamTerminatedError``
(``TimeoutError``) instead, and never takes the cancellation request back.
Left alone, the next cancel scope of that task that is cancelled (a task
group, ``move_on_after``) would let a ``CancelledError`` escape instead of
absorbing it.  The adapters' shared status boundary
(``clients.castore.grpc_common.translate``) takes the stale request back;
these tests kill a real ``tvixd`` (castore, store and build on one unix socket)
in the middle of a call of each adapter, then use cancel scopes in the same
task.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import pytest

from clients.build.errors import BuildError
from clients.build.grpc import GrpcBuildService
from clients.build.model import BuildConstraints, BuildRequest
from clients.castore.grpc import GrpcBlobService
from clients.castore.streams import BlobReader, put_bytes
from clients.errors import StorageError
from clients.store.grpc import GrpcPathInfoService

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[2]
KILL_AFTER = 0.3
"""Seconds between stopping the server (SIGSTOP) and killing it: the client is waiting by then."""


_C = TypeVar("_C", GrpcBlobService, GrpcPathInfoService, GrpcBuildService)


@asynccontextmanager
async def tvixd(state: Path) -> AsyncIterator[tuple[anyio.abc.Process, Path]]:
    """A real ``tvixd`` (memory backends, a dummy builder whose builds take 600 s) on a socket."""
    socket = state / "tvixd.sock"
    argv = [
        sys.executable, "-m", "tvixd.main", "--listen", f"unix:{socket}",
        "--state-dir", str(state), "--blob-service", "memory://",
        "--directory-service", "memory://", "--path-info-service", "memory://",
        "--build-service", "dummy://?delay=600",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TVIXD_", "LISTEN_"))}
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONPATH"] = str(ROOT)
    process = await anyio.open_process(
        argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    try:
        assert process.stderr is not None
        stderr = process.stderr
        log = b""
        with anyio.fail_after(30):
            while b"tvixd ready" not in log:
                log += await stderr.receive()

        async def drain() -> None:  # the daemon must never block on a full pipe
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    await stderr.receive()

        async with anyio.create_task_group() as group:
            group.start_soon(drain)
            yield process, socket
            group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.aclose()


@asynccontextmanager
async def connected(
    state: Path, adapter: type[_C], **options: Any
) -> AsyncIterator[tuple[anyio.abc.Process, _C]]:
    """:func:`tvixd` and an ``adapter`` to it (closed at the end)."""
    async with tvixd(state) as (process, socket):
        client = adapter.from_url(f"grpc+unix://{socket}", **options)
        try:
            yield process, client
        finally:
            await client.close()


def stop_then_kill(process: anyio.abc.Process) -> None:
    """Freeze the server now and kill it :data:`KILL_AFTER` s later, mid-call."""
    os.kill(process.pid, signal.SIGSTOP)
    asyncio.get_running_loop().call_later(KILL_AFTER, process.kill)


async def scopes_still_work(fail: Callable[[], Awaitable[None]]) -> None:
    """Run ``fail`` inside a task group and a cancel scope, then cancel both: both absorb it."""
    try:
        with anyio.fail_after(30), anyio.CancelScope() as outer:
            async with anyio.create_task_group() as group:
                await fail()
                group.cancel_scope.cancel()
                await anyio.sleep_forever()
            assert group.cancel_scope.cancelled_caught
            outer.cancel()
            await anyio.sleep_forever()
    except asyncio.CancelledError:
        pytest.fail("a stale cancellation request escaped a cancel scope after the failed call")
    assert outer.cancelled_caught
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


def dummy_request() -> BuildRequest:
    return BuildRequest(
        command_args=("/bin/true",),
        outputs=("nix/store/" + "a" * 32 + "-x",),
        constraints=BuildConstraints("x86_64-linux"),
        scratch_paths=("nix/store",),
    )


ABSENT = b"\0" * 20
"""A store path digest nobody has: ``get`` answers None (once connected) or fails."""


async def test_blob_read_killed_mid_stream(tmp_path: Path) -> None:
    data = os.urandom(8 << 20)
    received: list[int] = []
    async with connected(tmp_path, GrpcBlobService) as (process, blobs):
        digest = await put_bytes(blobs, data)

        async def read(reader: BlobReader) -> None:
            async with reader:
                async for chunk in reader:
                    if not received:
                        stop_then_kill(process)
                    received.append(len(chunk))

        async def fail() -> None:
            reader = await blobs.open_read(digest)
            assert reader is not None
            with pytest.raises(StorageError, match=r"Read on .*StreamTerminatedError"):
                await read(reader)

        await scopes_still_work(fail)
    assert 0 < sum(received) < len(data)


async def test_path_info_get_killed_while_waiting(tmp_path: Path) -> None:
    async with connected(tmp_path, GrpcPathInfoService) as (process, path_infos):
        assert await path_infos.get(ABSENT) is None

        async def fail() -> None:
            stop_then_kill(process)
            with pytest.raises(StorageError, match=r"Get on .*StreamTerminatedError"):
                await path_infos.get(ABSENT)

        await scopes_still_work(fail)


async def test_build_stream_killed_mid_build(tmp_path: Path) -> None:
    logged = anyio.Event()

    async def on_log(line: bytes) -> None:
        assert line.startswith(b"dummy build of ")
        logged.set()

    async with connected(tmp_path, GrpcBuildService) as (process, builds):

        async def kill() -> None:
            await logged.wait()  # the build runs for 600 s: the client waits
            process.kill()

        async def fail() -> None:
            async with anyio.create_task_group() as killer:
                killer.start_soon(kill)
                with pytest.raises(BuildError, match=r"build on .*StreamTerminatedError"):
                    await builds.build(dummy_request(), on_log=on_log)

        await scopes_still_work(fail)
    assert logged.is_set()


async def test_deadline_passed(tmp_path: Path) -> None:
    """grpclib's deadline wakes the task the same way (``TimeoutError``)."""
    async with connected(tmp_path, GrpcPathInfoService, timeout=0.5) as (process, path_infos):
        assert await path_infos.get(ABSENT) is None
        os.kill(process.pid, signal.SIGSTOP)

        async def fail() -> None:
            with pytest.raises(StorageError, match=r"Get on .*TimeoutError"):
                await path_infos.get(ABSENT)

        await scopes_still_work(fail)


async def test_a_real_cancellation_still_cancels(tmp_path: Path) -> None:
    """Taking back grpclib's request never eats the caller's own cancellation."""
    async with connected(tmp_path, GrpcPathInfoService) as (process, path_infos):
        assert await path_infos.get(ABSENT) is None
        os.kill(process.pid, signal.SIGSTOP)
        with anyio.fail_after(30), anyio.move_on_after(0.3) as scope:
            await path_infos.get(ABSENT)
            pytest.fail("the get returned from a stopped server")
        assert scope.cancelled_caught
        await scopes_still_work(anyio.lowlevel.checkpoint)
