"""The daemon's gRPC endpoints: listening sockets, and requests in flight.

* :func:`bind_unix` creates a unix socket with its final mode and group
  before it appears under its name (bound under a temporary name, then
  renamed), replacing a stale socket file but nothing else;
  :func:`bind_tcp` binds host:port (port 0: any free port; the address says
  which).  Both are blocking (file system, DNS): run them on a worker thread.
* :class:`Inflight` counts running gRPC requests through grpclib's
  ``RecvRequest`` event; once ``draining`` it answers new requests with
  ``UNAVAILABLE``.  Streams that last as long as a job (``Watch``,
  ``WatchBatches``, ``FollowLog``) are not counted: shutdown does not wait for them, it ends
  them (:meth:`Inflight.end_following`) with ``UNAVAILABLE``.
* :class:`Connections` tracks the client connections a grpclib server
  accepts and closes them on shutdown: grpclib's ``Server.close()`` (like
  asyncio's ``Server.close()`` on Python 3.11) stops listening and cancels
  handlers but leaves accepted connections open until the peer hangs up.

The daemon and ``tvixd.store.serve`` both listen through this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import socket
import stat
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio
from grpclib.const import Status
from grpclib.events import RecvRequest
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from grpclib.server import Server, Stream
from h2.errors import ErrorCodes
from h2.exceptions import H2Error

from tvixd.config import ConfigError

__all__ = ["FOLLOWING", "Connections", "Inflight", "Listener", "bind_tcp", "bind_unix"]

log = logging.getLogger(__name__)

#: Requests whose stream lasts as long as a job: not waited for on shutdown, ended.
FOLLOWING = frozenset(
    {
        "/tvixd.v1.Coordinator/Watch",
        "/tvixd.v1.Coordinator/WatchBatches",
        "/tvixd.v1.Coordinator/FollowLog",
    }
)


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

    ``refusal`` is the message of that status.  Streams that follow a job
    or a log (:data:`FOLLOWING`) are not counted; :meth:`end_following` ends
    them with that status.
    """

    def __init__(self, refusal: str = "tvixd is shutting down") -> None:
        self.refusal = refusal
        self.count = 0
        self.draining = False
        self._idle = anyio.Event()
        self._idle.set()
        self._following: set[anyio.CancelScope] = set()
        self._no_following = anyio.Event()
        self._no_following.set()

    async def on_request(self, event: RecvRequest) -> None:
        inner: Callable[[Stream[Any, Any]], Coroutine[Any, Any, None]] = event.method_func
        following = event.method_name in FOLLOWING

        async def counted(stream: Stream[Any, Any]) -> None:
            if self.draining:
                raise GRPCError(Status.UNAVAILABLE, self.refusal)
            if following:
                await self._follow(inner, stream)
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

    async def _follow(
        self,
        inner: Callable[[Stream[Any, Any]], Coroutine[Any, Any, None]],
        stream: Stream[Any, Any],
    ) -> None:
        with anyio.CancelScope() as scope:
            if not self._following:
                self._no_following = anyio.Event()
            self._following.add(scope)
            try:
                await inner(stream)
            finally:
                self._following.discard(scope)
                if not self._following:
                    self._no_following.set()
        if scope.cancelled_caught:  # ended by end_following(): tell the client why
            raise GRPCError(Status.UNAVAILABLE, self.refusal)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    @property
    def following(self) -> int:
        """Streams running that follow a job or a log (:data:`FOLLOWING`)."""
        return len(self._following)

    async def end_following(self) -> None:
        """End every running :data:`FOLLOWING` stream with ``UNAVAILABLE``; wait until they have.

        Each stream's handler is cancelled; its client gets the status (the
        trailers are sent while the connection is still open).  Call it with
        a deadline: a client that does not read may hold its stream's trailers up.
        """
        for scope in list(self._following):
            scope.cancel()
        await self._no_following.wait()


class _Tracked(asyncio.Protocol):
    """An ``H2Protocol`` that reports to ``connections`` when its connection opens and closes."""

    def __init__(self, inner: H2Protocol, connections: Connections) -> None:
        self.inner = inner
        self.connections = connections
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.connections._opened(self)
        self.inner.connection_made(transport)
        if self.connections.closing:  # accepted just before the server closed
            self.goaway()
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.inner.connection_lost(exc)
        finally:
            self.connections._lost(self)

    def goaway(self) -> None:
        """Tell the client no new streams will be accepted (HTTP/2 ``GOAWAY``, no error)."""
        connection = getattr(self.inner, "connection", None)
        if connection is None or connection.is_closing():
            return
        try:
            connection._connection.close_connection(error_code=ErrorCodes.NO_ERROR)
            connection.flush()
        except (H2Error, OSError, RuntimeError) as exc:
            log.debug("cannot send GOAWAY: %s", exc)


class Connections:
    """The client connections of grpclib servers, closed on shutdown (see the module docstring).

    :meth:`track` a server before ``server.start()``.  :meth:`close` (after
    the server stopped listening) sends each open connection an HTTP/2
    ``GOAWAY`` and closes it once what was written is flushed; :meth:`wait_closed` waits until every one is gone;
    :meth:`abort` drops those still open at once (a client that does not
    read keeps its connection's buffer from draining).  Uses grpclib 0.4's
    ``Server._protocol_factory`` (grpclib is pinned below 0.5).
    """

    def __init__(self) -> None:
        self._open: set[_Tracked] = set()
        self._none_open = anyio.Event()
        self._none_open.set()
        self.accepted = 0
        self.closing = False

    def __repr__(self) -> str:
        return f"Connections({len(self._open)} open, {self.accepted} accepted)"

    @property
    def count(self) -> int:
        """Connections open now."""
        return len(self._open)

    def track(self, server: Server) -> None:
        """Track every connection ``server`` accepts from now on (call before it starts)."""
        factory = server._protocol_factory

        def tracking() -> asyncio.Protocol:
            return _Tracked(factory(), self)

        server._protocol_factory = tracking  # type: ignore[method-assign,assignment]

    def _opened(self, protocol: _Tracked) -> None:
        if not self._open:
            self._none_open = anyio.Event()
        self._open.add(protocol)
        self.accepted += 1

    def _lost(self, protocol: _Tracked) -> None:
        self._open.discard(protocol)
        if not self._open:
            self._none_open.set()

    def close(self) -> int:
        """``GOAWAY`` and close every open connection (after its buffered writes); how many.

        A connection the server accepted but had not set up yet is closed as
        soon as it is.
        """
        self.closing = True
        closing = list(self._open)
        for protocol in closing:
            protocol.goaway()
            if protocol.transport is not None:
                protocol.transport.close()
        return len(closing)

    async def wait_closed(self) -> None:
        """Wait until no connection is open."""
        await self._none_open.wait()

    def abort(self) -> int:
        """Drop every connection still open, discarding unsent data; how many."""
        left = list(self._open)
        for protocol in left:
            if protocol.transport is not None:
                protocol.transport.abort()
        return len(left)

    async def hang_up(self, grace: float, force: anyio.Event | None = None) -> None:
        """:meth:`close` every connection, wait up to ``grace`` seconds (less once ``force``
        is set) for them to go, then :meth:`abort` the rest; logged."""
        closing = self.close()
        if not closing:
            return
        log.info("closing %d client connections", closing)
        async with anyio.create_task_group() as tg:

            async def forced() -> None:
                if force is not None:
                    await force.wait()
                    tg.cancel_scope.cancel()

            tg.start_soon(forced)
            with anyio.move_on_after(grace):
                await self.wait_closed()
            tg.cancel_scope.cancel()
        dropped = self.abort()
        if dropped:
            log.warning("dropped %d client connections that did not close", dropped)
