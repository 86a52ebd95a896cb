"""sd_notify, the watchdog interval and socket activation, against real sockets."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import anyio
import pytest

from tests.daemon.conftest import NotifySocket
from tvixd.systemd import Notifier, SystemdError, listen_fds, take_environment, watchdog_interval


@pytest.mark.asyncio
async def test_notifier_sends_one_datagram(notify_socket: NotifySocket) -> None:
    notifier = Notifier(str(notify_socket.path))
    assert notifier.enabled
    await notifier.notify("READY=1", "STATUS=serving")
    await notifier.notify("WATCHDOG=1")
    notifier.close()
    notifier.close()
    assert notify_socket.pending() == ["READY=1\nSTATUS=serving", "WATCHDOG=1"]


@pytest.mark.asyncio
async def test_notifier_abstract_socket_and_disabled() -> None:
    name = f"tvixd-test-{os.getpid()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(b"\0" + name.encode())
    try:
        notifier = Notifier("@" + name)
        await notifier.notify("READY=1")
        notifier.close()
        assert receiver.recv(100) == b"READY=1"
    finally:
        receiver.close()
    disabled = Notifier(None)
    assert not disabled.enabled
    await disabled.notify("READY=1")  # a no-op
    with pytest.raises(SystemdError, match="neither an absolute path nor @abstract"):
        Notifier("relative/path")


@pytest.mark.asyncio
async def test_notifier_with_systemd_gone(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    with pytest.raises(OSError, match="No such file"):
        await notifier.notify("READY=1")
    notifier.close()


def test_watchdog_interval() -> None:
    assert watchdog_interval({}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 42) is None
    for bad in ("0", "-5", "soon"):
        with pytest.raises(SystemdError, match=f"WATCHDOG_USEC={bad!r}"):
            watchdog_interval({"WATCHDOG_USEC": bad}, 42)


def test_take_environment() -> None:
    env = {"NOTIFY_SOCKET": "/n", "LISTEN_FDS": "1", "LISTEN_PID": "9", "PATH": "/bin"}
    assert take_environment(env) == {"NOTIFY_SOCKET": "/n", "LISTEN_FDS": "1", "LISTEN_PID": "9"}
    assert env == {"PATH": "/bin"}


def _sockets(tmp_path: Path) -> tuple[socket.socket, socket.socket, socket.socket]:
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(tmp_path / "l.sock"))
    listening.listen(1)
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    datagram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    return listening, idle, datagram


def test_listen_fds(tmp_path: Path) -> None:
    """Descriptors are checked from ``start`` on (3 in a real daemon; free fds here)."""
    listening, idle, datagram = _sockets(tmp_path)
    pid = os.getpid()
    try:
        assert listen_fds({}, pid) == []
        env = {"LISTEN_FDS": "1", "LISTEN_PID": str(pid), "LISTEN_FDNAMES": "api"}
        (activated,) = listen_fds(env, pid, start=listening.fileno())
        assert activated.name == "api"
        assert activated.socket.fileno() == listening.fileno()
        assert not activated.socket.get_inheritable()
        activated.socket.detach()  # the test's socket object still owns the descriptor
        cases = [
            ({"LISTEN_PID": "1"}, listening, "LISTEN_PID='1' is not this process"),
            ({"LISTEN_FDS": "x"}, listening, "LISTEN_FDS='x' is not a positive number"),
            ({"LISTEN_FDNAMES": "a:b"}, listening, "LISTEN_FDNAMES has 2 names for 1"),
            ({}, idle, "is not a listening stream socket"),
            ({}, datagram, "is not a listening stream socket"),
        ]
        for override, sock, message in cases:
            with pytest.raises(SystemdError, match=message):
                listen_fds({**env, **override}, pid, start=sock.fileno())
        with open(tmp_path / "file", "w") as f, pytest.raises(SystemdError, match="not a socket"):
            listen_fds(env, pid, start=f.fileno())
    finally:
        for sock in (listening, idle, datagram):
            sock.close()


@pytest.mark.asyncio
async def test_a_full_queue_makes_notify_wait_not_block(notify_socket: NotifySocket) -> None:
    """Nobody reads: the queue fills, and notify waits on the loop (cancellable) instead of blocking."""
    notifier = Notifier(str(notify_socket.path))
    sent = 0
    with anyio.move_on_after(0.5):
        while True:
            await notifier.notify("STATUS=" + "x" * 1000)
            sent += 1
    notifier.close()
    assert sent > 0
