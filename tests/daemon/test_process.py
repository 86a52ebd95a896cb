"""tvixd as a process: socket activation, signals, exit codes.

The real daemon (``tvixd.main``) except where a test needs a coordinator that
misbehaves on purpose (``tests.daemon.standin``: a drain that hangs).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from clients.castore.grpc import GrpcBlobService
from clients.castore.streams import put_bytes
from tests.daemon.conftest import NotifySocket

ROOT = Path(__file__).resolve().parents[2]
MEMORY = [
    "--blob-service", "memory://", "--directory-service", "memory://",
    "--path-info-service", "memory://", "--build-service", "dummy://",
]  # fmt: skip
# Sets LISTEN_PID to its own pid, moves the inherited socket to fd 3, then becomes tvixd.
ACTIVATE = (
    "import os, sys\n"
    "os.environ['LISTEN_PID'] = str(os.getpid())\n"
    "os.dup2(int(os.environ.pop('TEST_LISTEN_FD')), 3)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'tvixd.main', *sys.argv[1:]])\n"
)


def environment(notify: NotifySocket, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TVIXD_", "LISTEN_"))}
    env.update(NOTIFY_SOCKET=str(notify.path), PYTHONPATH=str(ROOT), **extra)
    return env


@contextmanager
def launched(
    argv: list[str], env: dict[str, str], **kwargs: object
) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        **kwargs,  # type: ignore[call-overload]
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


async def wait_exit(process: subprocess.Popen[str], seconds: float) -> tuple[int, str]:
    """The exit status and stderr, waited for on a worker thread."""
    _, stderr = await anyio.to_thread.run_sync(lambda: process.communicate(timeout=seconds))
    return process.returncode, stderr


@pytest.mark.asyncio
async def test_socket_activation_and_sigterm(tmp_path: Path, notify_socket: NotifySocket) -> None:
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    env = environment(
        notify_socket, LISTEN_FDS="1", LISTEN_FDNAMES="tvixd.socket",
        TEST_LISTEN_FD=str(listener.fileno()),
    )  # fmt: skip
    argv = [sys.executable, "-c", ACTIVATE, "--listen", "systemd", "--state-dir", str(tmp_path)]
    with launched(
        [*argv, *MEMORY, "--shutdown-grace", "20"], env, pass_fds=[listener.fileno()]
    ) as process:
        listener.close()  # only the daemon holds it now
        await notify_socket.wait_for("READY=1")
        assert "STATUS=serving on systemd:tvixd.socket" in notify_socket.lines()
        blobs = GrpcBlobService.from_url(f"grpc+unix://{path}")
        try:
            digest = await put_bytes(blobs, b"socket-activated")
            reader = await blobs.open_read(digest)
            assert reader is not None
            async with reader:
                assert await reader.read_all() == b"socket-activated"
        finally:
            await blobs.close()
        process.send_signal(signal.SIGTERM)
        status, stderr = await wait_exit(process, 20)
        assert status == 0, stderr
    assert "STOPPING=1" in notify_socket.lines()
    assert path.exists()  # systemd's socket file is systemd's: left in place
    assert 'msg="tvixd stopped"' in stderr


@pytest.mark.asyncio
async def test_listen_pid_of_another_process_is_refused(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    env = environment(notify_socket, LISTEN_FDS="1", LISTEN_PID="1")
    argv = [sys.executable, "-m", "tvixd.main", "--listen", "systemd"]
    with launched([*argv, "--state-dir", str(tmp_path), *MEMORY], env) as process:
        status, stderr = await wait_exit(process, 20)
    assert status == 2
    assert "LISTEN_PID='1' is not this process" in stderr
    assert "READY=1" not in notify_socket.lines()


@pytest.mark.asyncio
async def test_second_signal_forces_exit(tmp_path: Path, notify_socket: NotifySocket) -> None:
    env = environment(notify_socket, STANDIN_DRAIN="hang")
    sock = tmp_path / "tvixd.sock"
    argv = [sys.executable, "-m", "tests.daemon.standin", "--listen", f"unix:{sock}"]
    with launched(
        [*argv, "--state-dir", str(tmp_path), *MEMORY, "--shutdown-grace", "600"], env
    ) as process:
        await notify_socket.wait_for("READY=1")
        process.send_signal(signal.SIGTERM)
        await notify_socket.wait_for("STOPPING=1")
        assert process.poll() is None  # draining (the stand-in's drain hangs)
        process.send_signal(signal.SIGINT)
        status, stderr = await wait_exit(process, 20)
    assert status == 0, stderr
    assert "forcing the stop" in stderr
    assert not sock.exists()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        ([], "listen = 3\n", "key 'listen': expected a list of listen addresses, got 3"),
        ([], "[services]\nblobs = 'memory://'\n", "unknown key 'services.blobs'"),
        ([], "max_jobs = = 1\n", "is not valid TOML"),
        (["--max-jobs", "-3"], None, "flag --max-jobs: expected a positive integer, got '-3'"),
        (["--blob-service", "ftp://x"], None, "blob service URL 'ftp://x': unsupported scheme"),
        (["--log-format", "xml"], None, "flag --log-format: 'xml' is not one of text, json"),
    ],
)
async def test_bad_config_exits_2(
    tmp_path: Path, notify_socket: NotifySocket, args: list[str], config: str | None, message: str
) -> None:
    if config is not None:
        await anyio.Path(tmp_path / "tvixd.toml").write_text(config)
        args = [*args, "--config", str(tmp_path / "tvixd.toml")]
    argv = [sys.executable, "-m", "tvixd.main", "--state-dir", str(tmp_path)]
    flags = [*MEMORY, "--listen", f"unix:{tmp_path}/s.sock", *args]
    with launched([*argv, *flags], environment(notify_socket)) as process:
        status, stderr = await wait_exit(process, 20)
    assert status == 2
    assert message in stderr
    assert stderr.rstrip("\n").splitlines()[-1].startswith("tvixd: ")
