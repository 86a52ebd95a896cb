"""systemd integration without libsystemd: readiness notification, watchdog, socket activation.

* :class:`Notifier` sends ``sd_notify`` datagrams (``READY=1``, ``STOPPING=1``,
  ``WATCHDOG=1``, ``STATUS=…``) to ``$NOTIFY_SOCKET`` (a path, or ``@name``
  for an abstract socket); without it, notifications are dropped.
* :func:`watchdog_interval` reads ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``):
  the daemon pings every half of it.
* :func:`listen_fds` takes the sockets systemd passed (``$LISTEN_FDS``
  descriptors from fd 3, named by ``$LISTEN_FDNAMES``) after checking
  ``$LISTEN_PID`` is this process, and checks each is a listening stream socket.

:func:`take_environment` removes these variables from a mapping (the daemon
passes ``os.environ``) so that child processes (runc, nix-instantiate) do not
see them, as ``sd_listen_fds(1)`` does.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

import anyio

__all__ = [
    "SD_LISTEN_FDS_START",
    "ActivatedSocket",
    "Notifier",
    "SystemdError",
    "listen_fds",
    "take_environment",
    "watchdog_interval",
]

SD_LISTEN_FDS_START = 3
_VARIABLES = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)


class SystemdError(Exception):
    """The environment systemd set up is inconsistent (wrong LISTEN_PID, a bad fd, …)."""


def take_environment(environ: MutableMapping[str, str]) -> dict[str, str]:
    """Remove and return the systemd protocol variables of ``environ``."""
    return {name: environ.pop(name) for name in _VARIABLES if name in environ}


def _address(value: str) -> str | bytes:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if not value.startswith("/"):
        raise SystemdError(f"NOTIFY_SOCKET={value!r} is neither an absolute path nor @abstract")
    return value


class Notifier:
    """Sends notifications to ``NOTIFY_SOCKET`` (a no-op when it is not set)."""

    def __init__(self, notify_socket: str | None) -> None:
        self._address = _address(notify_socket) if notify_socket else None
        self._socket: socket.socket | None = None
        if self._address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)

    def __repr__(self) -> str:
        return f"Notifier({self._address!r})"

    @property
    def enabled(self) -> bool:
        """Whether a notification socket is configured."""
        return self._socket is not None

    async def notify(self, *lines: str) -> None:
        """Send ``lines`` (``"READY=1"``, ``"STATUS=…"``) as one datagram; waits at most 5 s.

        A failure to deliver is logged by the caller's choice: it raises
        ``OSError`` (systemd gone), never blocks the loop.
        """
        if self._socket is None or self._address is None:
            return
        message = "\n".join(lines).encode()
        with anyio.fail_after(5):
            while True:
                try:
                    self._socket.sendto(message, self._address)
                    return
                except BlockingIOError:
                    await anyio.wait_writable(self._socket)

    def close(self) -> None:
        """Close the socket; idempotent."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None when not asked."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid != str(pid):
        return None
    if not usec.isdigit() or int(usec) == 0:
        raise SystemdError(f"WATCHDOG_USEC={usec!r} is not a positive number of microseconds")
    return int(usec) / 2_000_000


@dataclass(frozen=True)
class ActivatedSocket:
    """A socket passed by systemd: its name (``LISTEN_FDNAMES``, default ``unknown``)."""

    name: str
    socket: socket.socket


def _check_listening(fd: int, name: str) -> socket.socket:
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise SystemdError(f"LISTEN_FDS: fd {fd} ({name}) is not open: {exc}") from exc
    if not stat.S_ISSOCK(mode):
        raise SystemdError(f"LISTEN_FDS: fd {fd} ({name}) is not a socket")
    sock = socket.socket(fileno=fd)
    try:
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            raise SystemdError(
                f"LISTEN_FDS: fd {fd} ({name}) is not a listening stream socket "
                "(use ListenStream= in the .socket unit)"
            )
        sock.set_inheritable(False)
        sock.setblocking(False)
    except BaseException:
        sock.detach()
        raise
    return sock


def listen_fds(
    env: Mapping[str, str], pid: int, *, start: int = SD_LISTEN_FDS_START
) -> list[ActivatedSocket]:
    """The sockets systemd passed to process ``pid`` (from fd ``start``); [] when none were passed.

    Raises :class:`SystemdError` when ``LISTEN_PID`` names another process,
    the variables are malformed, or a descriptor is not a listening stream
    socket.  The returned sockets own their descriptors.
    """
    count = env.get("LISTEN_FDS")
    if not count:
        return []
    listen_pid = env.get("LISTEN_PID", "")
    if listen_pid != str(pid):
        raise SystemdError(
            f"LISTEN_PID={listen_pid!r} is not this process ({pid}): "
            "the sockets were meant for another process"
        )
    if not count.isdigit() or int(count) == 0:
        raise SystemdError(f"LISTEN_FDS={count!r} is not a positive number")
    n = int(count)
    names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
    if names and len(names) != n:
        raise SystemdError(f"LISTEN_FDNAMES has {len(names)} names for {n} descriptors")
    sockets: list[ActivatedSocket] = []
    try:
        for i in range(n):
            fd = start + i
            name = names[i] if names else "unknown"
            sockets.append(ActivatedSocket(name, _check_listening(fd, name)))
    except BaseException:
        for activated in sockets:
            with contextlib.suppress(OSError):
                activated.socket.close()
        raise
    return sockets
