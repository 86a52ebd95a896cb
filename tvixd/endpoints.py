"""The daemon's gRPC endpoints: listening sockets, and requests in flight.

* :func:`bind_unix` creates a unix socket with its final mode and group
  before it appears under its name (bound under a temporary name, then
  renamed), replacing a stale socket file but nothing else;
  :func:`bind_tcp` binds host:port (port 0: any free port; the address says
  which).  Both are blocking (file system, DNS): run them on a worker thread.
* :class:`Inflight` counts running gRPC requests through grpclib's
  ``RecvRequest`` event; once ``draining`` it answers new requests with
  ``UNAVAILABLE``.  Streams that last as long as a job (``Watch``,
  ``FollowLog``) are not counted: shutdown does not wait for them.

The daemon and ``tvixd.store.serve`` both listen through this module.
"""

from __future__ import annotations

import contextlib
import grp
import os
import socket
import stat
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from grpclib.const import Status
from grpclib.events import RecvRequest
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from tvixd.config import ConfigError

__all__ = ["FOLLOWING", "Inflight", "Listener", "bind_tcp", "bind_unix"]

#: Requests whose stream lasts as long as a job: not waited for on shutdown.
FOLLOWING = frozenset({"/tvixd.v1.Coordinator/Watch", "/tvixd.v1.Coordinator/FollowLog"})


@dataclass(frozen=True)
class Listener:
    """A bound listening socket; ``unlink`` is the socket file tvixd created (removed on stop)."""

    address: str
    socket: socket.socket
    unlink: Path | None = None


def _remove_stale(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"listen unix:{path}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink()  # left behind by a dead daemon
        return
    finally:
        probe.close()
    raise ConfigError(f"listen unix:{path}: another process is already listening there")


def bind_unix(path: Path, mode: int, group: str | None, backlog: int = 128) -> Listener:
    """Bind a listening unix socket at ``path`` with ``mode`` and ``group`` (blocking).

    The socket is bound under a temporary name, given its mode and group, then
    renamed into place, so it is never reachable with looser permissions.  A
    stale socket file (nobody listening) is replaced; anything else is not.
    """
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"socket_group: there is no group {group!r}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    temporary = path.parent / f".tvixd-{os.getpid()}.sock"
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(temporary))
        os.chmod(temporary, mode)
        if gid != -1:
            os.chown(temporary, -1, gid)
        sock.listen(backlog)
        os.rename(temporary, path)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    return Listener(f"unix:{path}", sock, unlink=path)


def bind_tcp(host: str, port: int, backlog: int = 128) -> Listener:
    """Bind a listening TCP socket (blocking: resolves ``host``)."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = info[0]
    sock = socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
    return Listener(f"{shown}:{bound_port}", sock)


class Inflight:
    """Counts running gRPC requests; once ``draining``, refuses new ones with UNAVAILABLE.

    ``refusal`` is the message of that status.
    """

    def __init__(self, refusal: str = "tvixd is shutting down") -> None:
        self.refusal = refusal
        self.count = 0
        self.draining = False
        self._idle = anyio.Event()
        self._idle.set()

    async def on_request(self, event: RecvRequest) -> None:
        inner: Callable[[Stream[Any, Any]], Coroutine[Any, Any, None]] = event.method_func
        following = event.method_name in FOLLOWING

        async def counted(stream: Stream[Any, Any]) -> None:
            if self.draining:
                raise GRPCError(Status.UNAVAILABLE, self.refusal)
            if following:
                await inner(stream)
                return
            if self.count == 0:
                self._idle = anyio.Event()
            self.count += 1
            try:
                await inner(stream)
            finally:
                self.count -= 1
                if self.count == 0:
                    self._idle.set()

        event.method_func = counted

    async def wait_idle(self) -> None:
        await self._idle.wait()
