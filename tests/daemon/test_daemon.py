"""The daemon in-process: composition, readiness, serving every store service, staged shutdown."""

from __future__ import annotations

import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from clients.build.grpc import GrpcBuildService
from clients.build.model import BuildConstraints, BuildRequest
from clients.castore.grpc import GrpcBlobService, GrpcDirectoryService
from clients.castore.model import B3Digest, Directory, FileNode
from clients.castore.streams import put_bytes
from clients.store.grpc import GrpcPathInfoService
from clients.store.model import PathInfo
from nixcompat.storepath import StorePath
from tests.daemon.conftest import NotifySocket, memory_config
from tests.daemon.standin import StandInCoordinator, standin_servicers
from tvixd.config import Config, ConfigError
from tvixd.daemon import Daemon


class Running:
    """A daemon running in a task, with its stand-in coordinator and shutdown controls."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.shutdown = anyio.Event()
        self.force = anyio.Event()
        self.done = anyio.Event()
        self.addresses: list[str] = []
        self.coordinator: StandInCoordinator | None = None


def make_daemon(config: Config, notify: NotifySocket | None, **env: str) -> Daemon:
    systemd_env = dict(env)
    if notify is not None:
        systemd_env["NOTIFY_SOCKET"] = str(notify.path)
    return Daemon(
        config,
        systemd_env=systemd_env,
        coordinator=StandInCoordinator,
        coordinator_servicers=standin_servicers,
    )


@asynccontextmanager
async def running(
    config: Config, notify: NotifySocket | None = None, **env: str
) -> AsyncIterator[Running]:
    """Start the daemon (until READY) and stop it (shutdown event) at the end."""
    StandInCoordinator.instances.clear()
    run = Running(make_daemon(config, notify, **env))
    async with anyio.create_task_group() as tg:

        async def serve(*, task_status: anyio.abc.TaskStatus[list[str]]) -> None:
            try:
                await run.daemon.run(
                    shutdown=run.shutdown, force=run.force, task_status=task_status
                )
            finally:
                run.done.set()

        with anyio.fail_after(20):
            run.addresses = await tg.start(serve)
        run.coordinator = StandInCoordinator.instances[-1]
        yield run
        run.shutdown.set()
        with anyio.fail_after(20):
            await run.done.wait()


def socket_url(config: Config) -> str:
    path = config.listen[0].path
    return f"grpc+unix://{path}"


@pytest.mark.asyncio
async def test_serves_every_store_service(tmp_path: Path, notify_socket: NotifySocket) -> None:
    config = memory_config(tmp_path)
    async with running(config, notify_socket) as run:
        assert run.addresses == [f"unix:{tmp_path}/tvixd.sock"]
        mode = (await anyio.Path(tmp_path / "tvixd.sock").stat()).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660
        url = socket_url(config)
        blobs = GrpcBlobService.from_url(url)
        directories = GrpcDirectoryService.from_url(url)
        pathinfos = GrpcPathInfoService.from_url(url)
        builder = GrpcBuildService.from_url(url)
        try:
            data = b"hello from the daemon test\n"
            digest = await put_bytes(blobs, data)
            assert digest == B3Digest.of(data)
            reader = await blobs.open_read(digest)
            assert reader is not None
            async with reader:
                assert await reader.read_all() == data
            directory = Directory(files=(FileNode(b"hello", digest, len(data), False),))
            assert await directories.put(directory) == directory.digest()
            assert await directories.get(directory.digest()) == directory
            path = StorePath.from_absolute_path("/nix/store/" + "a" * 32 + "-hello")
            info = PathInfo(
                store_path=path,
                node=FileNode(path.basename.encode(), digest, len(data), False),
                nar_size=120,
                nar_sha256=bytes(32),
            )
            await pathinfos.put(info)
            assert await pathinfos.get(path.digest) == info
            out = "nix/store/" + "b" * 32 + "-out"
            request = BuildRequest(("/bin/sh",), (out,), BuildConstraints("x86_64-linux"))
            build = await builder.build(request)  # the dummy builder, through the daemon
            assert [node.name for node in build.outputs] == [out.rpartition("/")[2].encode()]
        finally:
            for client in (blobs, directories, pathinfos, builder):
                await client.close()
    assert run.coordinator is not None
    assert run.coordinator.journal_path == tmp_path / "state" / "jobs.db"
    assert run.coordinator.calls == [
        "recover", "running", "stop_accepting", "drain(5)", "drained", "cancelled",
    ]  # fmt: skip
    assert not (tmp_path / "tvixd.sock").exists()  # removed on stop


@pytest.mark.asyncio
async def test_ready_only_after_recovery_and_bound(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    config = memory_config(tmp_path)
    StandInCoordinator.instances.clear()
    StandInCoordinator.next_recover_gate = gate = anyio.Event()
    daemon = make_daemon(config, notify_socket)
    shutdown = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: daemon.run(shutdown=shutdown))
        await notify_socket.wait_for("STATUS=recovering jobs")
        await anyio.wait_all_tasks_blocked()
        (coordinator,) = StandInCoordinator.instances
        assert coordinator.calls == ["recover"]
        assert "READY=1" not in notify_socket.lines()  # recovering: not ready yet
        gate.set()
        await notify_socket.wait_for("READY=1")
        # READY means the socket accepts connections now
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        probe.connect(str(tmp_path / "tvixd.sock"))
        probe.close()
        shutdown.set()
    lines = notify_socket.lines()
    assert lines.index("READY=1") < lines.index("STOPPING=1")
    assert "WATCHDOG=1" not in lines


@pytest.mark.asyncio
async def test_watchdog_pings(tmp_path: Path, notify_socket: NotifySocket) -> None:
    async with running(memory_config(tmp_path), notify_socket, WATCHDOG_USEC="100000"):
        with anyio.fail_after(10):
            while notify_socket.lines().count("WATCHDOG=1") < 3:
                await anyio.wait_readable(notify_socket.socket)
    assert notify_socket.lines()[-1] != "READY=1"
    assert "STOPPING=1" in notify_socket.lines()


@pytest.mark.asyncio
async def test_watchdog_for_another_pid_is_ignored(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    env = {"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}
    async with running(memory_config(tmp_path), notify_socket, **env):
        await anyio.sleep(0.05)
    assert "WATCHDOG=1" not in notify_socket.lines()


@pytest.mark.asyncio
async def test_drain_happens_while_still_serving(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    config = memory_config(tmp_path, shutdown_grace="30")
    async with running(config, notify_socket) as run:
        assert run.coordinator is not None
        run.coordinator.drain_gate = gate = anyio.Event()
        run.shutdown.set()
        await notify_socket.wait_for("STOPPING=1")
        await anyio.wait_all_tasks_blocked()
        assert run.coordinator.calls[-2:] == ["stop_accepting", "drain(30)"]
        blobs = GrpcBlobService.from_url(socket_url(config))
        try:  # store requests are still served during the drain
            digest = await put_bytes(blobs, b"during drain")
            assert await blobs.stat(digest) == len(b"during drain")
        finally:
            await blobs.close()
        assert not run.done.is_set()
        gate.set()
        with anyio.fail_after(10):
            await run.done.wait()
        assert run.coordinator.calls[-2:] == ["drained", "cancelled"]


@pytest.mark.asyncio
async def test_force_cuts_a_hanging_drain(tmp_path: Path, notify_socket: NotifySocket) -> None:
    config = memory_config(tmp_path, shutdown_grace="600")
    async with running(config, notify_socket) as run:
        assert run.coordinator is not None
        run.coordinator.hang_in_drain = True
        run.shutdown.set()
        await notify_socket.wait_for("STOPPING=1")
        run.force.set()
        with anyio.fail_after(10):
            await run.done.wait()
        assert run.coordinator.calls[-1] == "cancelled"


@pytest.mark.asyncio
async def test_tcp_and_unix_together(tmp_path: Path) -> None:
    config = memory_config(tmp_path, f"unix:{tmp_path}/a.sock", "127.0.0.1:0")
    async with running(config) as run:
        unix, tcp = run.addresses
        assert unix == f"unix:{tmp_path}/a.sock"
        host, _, port = tcp.rpartition(":")
        assert host == "127.0.0.1"
        assert int(port) > 0
        blobs = GrpcBlobService.from_url(f"grpc+http://{tcp}")
        try:
            digest = await put_bytes(blobs, b"over tcp")
            assert await blobs.has(digest)
        finally:
            await blobs.close()


@pytest.mark.asyncio
async def test_stale_socket_is_replaced_but_a_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "tvixd.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    config = memory_config(tmp_path)
    async with running(config):
        second = make_daemon(config, None)
        with pytest.raises(ExceptionGroup) as info:
            await second.run(shutdown=anyio.Event())
        assert info.group_contains(ConfigError, match="another process is already listening")
    await anyio.Path(path).write_text("not a socket")
    with pytest.raises(ExceptionGroup) as info:
        await make_daemon(config, None).run(shutdown=anyio.Event())
    assert info.group_contains(ConfigError, match="exists and is not a socket")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"services.blob_service": "bogus://x"}, "blob service URL 'bogus://x'"),
        ({"services.build_service": "oci://relative"}, "oci://relative"),
        ({"services.evaluator": "nix://?jobs=1"}, "unknown option 'jobs'"),
        ({"signing_key_file": "/nonexistent/key"}, "cannot read /nonexistent/key"),
    ],
)
async def test_bad_services_are_config_errors(
    tmp_path: Path, flags: dict[str, str], message: str
) -> None:
    config = memory_config(tmp_path, **flags)
    with pytest.raises(ExceptionGroup) as info:
        await make_daemon(config, None).run(shutdown=anyio.Event())
    assert info.group_contains(ConfigError, match=message)
    assert not (tmp_path / "tvixd.sock").exists()
