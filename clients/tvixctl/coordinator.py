"""An async client of the ``tvixd.v1.Coordinator`` API on a unix socket, for ``tvixctl``.

A thin wrapper over the generated ``CoordinatorStub`` that turns gRPC and
transport failures into :class:`~clients.tvixctl.common.CommandError`
subclasses with messages a user can act on:

=============================  ==========================================
failure                        raised
=============================  ==========================================
nothing listens on the socket  :class:`DaemonUnreachable` (names the socket,
                               says how to start tvixd)
``NOT_FOUND``                  :class:`NotFoundError` (the server's message)
``UNAVAILABLE``                :class:`Unavailable` (e.g. shutting down)
the connection drops           :class:`ConnectionLost`
any other status               :class:`CommandError` (status and message)
=============================  ==========================================

:meth:`CoordinatorClient.watch` resumes after a dropped connection: it
reconnects with backoff (:class:`Reconnect`) and asks for the events after
the last sequence number it received, so the caller sees every event once,
in order — across a daemon restart too, since the journal keeps them.  It
reads ``WatchBatches`` (events decoded by :mod:`clients.tvixctl.events`, not
betterproto: a busy job's events cost tvixctl little CPU), falling back to
``Watch`` (generated messages) for a daemon that does not have it.
"""

from __future__ import annotations

import asyncio
import errno
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn, cast

import anyio
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from clients.castore.grpc_common import forget_stale_cancels
from clients.tvixctl.common import CommandError
from clients.tvixctl.events import Event, EventBatch
from clients.tvixctl.formats import oneof
from proto.gen.tvixd import v1 as pb

__all__ = [
    "FINAL_JOB_STATES",
    "ConnectionLost",
    "CoordinatorClient",
    "DaemonUnreachable",
    "NotFoundError",
    "Reconnect",
    "Unavailable",
    "is_final",
    "probe",
]

DEFAULT_TIMEOUT = 30.0
"""Seconds a unary call may take."""
FINAL_JOB_STATES = frozenset({pb.JobState.SUCCEEDED, pb.JobState.FAILED, pb.JobState.CANCELLED})


class DaemonUnreachable(CommandError):
    """Nothing accepts connections on the socket."""

    def __init__(self, socket: str, reason: str) -> None:
        self.socket = socket
        self.reason = reason
        hint = ""
        if reason.startswith("Permission denied"):
            hint = "The socket's group decides who may use the daemon (see docs/daemon.md).\n"
        super().__init__(
            f"cannot connect to tvixd at {socket}: {reason}\n"
            f"{hint}"
            f"Is the daemon running? Start it with\n"
            f"  tvixd --listen unix:{socket}\n"
            f"(or 'systemctl start tvixd.socket' where the systemd units are installed),\n"
            f"point tvixctl at another socket with --socket PATH or $TVIXD_SOCKET,\n"
            f"or let 'tvixctl build --embedded ...' start a daemon for one build."
        )


class NotFoundError(CommandError):
    """The daemon does not know the job or derivation."""


class Unavailable(CommandError):
    """The daemon refuses the request for now (it is starting or stopping)."""


class ConnectionLost(CommandError):
    """The connection dropped in the middle of a call."""


def _reason(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, "") or str(exc)


async def probe(socket: str) -> DaemonUnreachable | None:
    """``None`` when something accepts connections on ``socket``; else why not."""
    try:
        stream = await anyio.connect_unix(socket)
    except OSError as exc:
        return DaemonUnreachable(socket, _reason(exc))
    await stream.aclose()
    return None


def is_final(event: Any) -> bool:
    """Whether a ``JobEvent`` is the job's last (a final job state)."""
    which, body = oneof(event, "event")
    return which == "job_state" and body.state in FINAL_JOB_STATES


def _unimplemented(exc: GRPCError) -> bool:
    """Whether the server does not have the method (a grpclib server says so without the
    content-type header, which grpclib's client reports as ``UNKNOWN``)."""
    return exc.status is Status.UNIMPLEMENTED or (
        exc.status is Status.UNKNOWN and exc.message == "Missing content-type header"
    )


@dataclass(frozen=True)
class Reconnect:
    """How :meth:`CoordinatorClient.watch` retries: doubling delays, for at most ``timeout`` s."""

    timeout: float = 120.0
    first_delay: float = 0.1
    max_delay: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.first_delay
        while True:
            yield delay
            delay = min(delay * 2, self.max_delay)


class CoordinatorClient:
    """The coordinator API of the daemon at the unix socket ``socket``.

    Use as an async context manager (or call :meth:`aclose`).  Unary calls
    have a deadline of ``timeout`` seconds; streams have none.
    """

    def __init__(self, socket: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket = socket
        self.timeout = timeout
        self._channel: Channel | None = None
        self._batches = True  # WatchBatches until the daemon says it has none

    def __repr__(self) -> str:
        return f"CoordinatorClient({self.socket!r})"

    async def __aenter__(self) -> CoordinatorClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _stub(self) -> Any:
        if self._channel is None:
            self._channel = Channel(path=self.socket)
        return pb.CoordinatorStub(self._channel)

    def _reset(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    @contextmanager
    def _errors(self, method: str) -> Iterator[None]:
        """Translate what ``method`` raised (see the module docstring)."""
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        try:
            yield
        except (StreamTerminatedError, ProtocolError, ConnectionError):
            # grpclib wakes a task waiting on a stream whose connection died with task.cancel()
            # and then raises StreamTerminatedError without task.uncancel(): the stale request
            # would make the next cancel scope (anyio, asyncio.timeout) believe it was cancelled.
            forget_stale_cancels(task, cancels)
            self._translate_lost(method)
        except GRPCError as exc:
            message = exc.message or exc.status.name
            if exc.status is Status.NOT_FOUND:
                raise NotFoundError(message) from None
            if exc.status is Status.UNAVAILABLE:
                self._reset()
                raise Unavailable(f"tvixd at {self.socket} is unavailable: {message}") from None
            raise CommandError(f"{method}: {exc.status.name}: {message}") from None
        except OSError as exc:
            self._reset()
            raise DaemonUnreachable(self.socket, _reason(exc)) from None

    def _translate_lost(self, method: str) -> NoReturn:
        """Raise what the connection error being handled means."""
        exc = sys.exc_info()[1]
        self._reset()
        if isinstance(exc, ConnectionRefusedError | FileNotFoundError | PermissionError):
            raise DaemonUnreachable(self.socket, _reason(exc)) from None
        raise ConnectionLost(
            f"lost the connection to tvixd at {self.socket} during {method}: {exc}"
        ) from None

    # -- unary calls -------------------------------------------------------------------

    async def submit(self, request: Any) -> Any:
        """Create a job from a ``SubmitRequest``; the ``Job`` as queued."""
        with self._errors("Submit"):
            return await self._stub().submit(request, timeout=self.timeout)

    async def get_job(self, job_id: str) -> Any:
        """The ``Job``; :class:`NotFoundError` for an unknown id."""
        with self._errors("GetJob"):
            return await self._stub().get_job(pb.GetJobRequest(id=job_id), timeout=self.timeout)

    async def list_jobs(self, states: Iterable[Any] = ()) -> list[Any]:
        """Jobs in ``states`` (``JobState`` values; all when empty), newest first."""
        request = pb.ListJobsRequest(states=list(states))
        with self._errors("ListJobs"):
            response = await self._stub().list_jobs(request, timeout=self.timeout)
        return list(response.jobs)

    async def cancel(self, job_id: str) -> Any:
        """Cancel the job; the ``Job`` afterwards (a final job is answered as it is)."""
        with self._errors("Cancel"):
            return await self._stub().cancel(pb.CancelRequest(id=job_id), timeout=self.timeout)

    # -- streams -----------------------------------------------------------------------

    async def follow_log(self, drv_path: str, *, follow: bool = False) -> AsyncIterator[Any]:
        """The stored build log of ``drv_path`` (``LogLine``s), then live lines with ``follow``."""
        request = pb.FollowLogRequest(drv_path=drv_path, follow=follow)
        with self._errors("FollowLog"):
            async with aclosing(self._stub().follow_log(request)) as lines:
                async for line in lines:
                    yield line

    async def _watch_once(
        self, job_id: str, from_seq: int, follow: bool
    ) -> AsyncGenerator[Any, None]:
        request = pb.WatchRequest(job_id=job_id, from_seq=from_seq, follow=follow)
        if self._batches:
            received = False
            with self._errors("WatchBatches"):
                try:
                    self._stub()  # connects
                    assert self._channel is not None
                    async with self._channel.request(
                        "/tvixd.v1.Coordinator/WatchBatches",
                        Cardinality.UNARY_STREAM,
                        pb.WatchRequest,
                        EventBatch,
                    ) as stream:
                        await stream.send_message(request, end=True)
                        async for batch in stream:
                            received = True
                            for event in cast("list[Event]", batch):
                                yield event
                    return
                except GRPCError as exc:
                    if not _unimplemented(exc) or received:
                        raise
                    self._batches = False  # a daemon from before WatchBatches
        with self._errors("Watch"):
            async with aclosing(self._stub().watch(request)) as events:
                async for event in events:
                    yield event

    async def watch(
        self,
        job_id: str,
        *,
        from_seq: int = 0,
        follow: bool = True,
        reconnect: Reconnect | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> AsyncIterator[Any]:
        """The job's ``JobEvent``s after ``from_seq``; with ``follow``, until its final event.

        With ``reconnect``, a dropped connection, an unreachable or
        unavailable daemon, or a stream that ends before the final event is
        retried (``on_retry`` gets the reason before each wait) from the last
        sequence number received, for at most ``reconnect.timeout`` seconds
        without progress; then :class:`ConnectionLost`.
        """
        last = from_seq
        delays: Iterator[float] | None = None
        failing_since: float | None = None
        while True:
            try:
                async with aclosing(self._watch_once(job_id, last, follow)) as events:
                    async for event in events:
                        delays, failing_since = None, None
                        yield event
                        last = event.seq
                        if is_final(event):
                            return
                if not follow:
                    return
                problem = "the daemon ended the stream before the job finished"
            except (ConnectionLost, DaemonUnreachable, Unavailable) as exc:
                if reconnect is None:
                    raise
                problem = str(exc).split("\n", 1)[0]
            if reconnect is None:
                raise ConnectionLost(f"watching job {job_id}: {problem}")
            now = anyio.current_time()
            failing_since = now if failing_since is None else failing_since
            if now - failing_since >= reconnect.timeout:
                raise ConnectionLost(
                    f"gave up watching job {job_id} after {reconnect.timeout:g} s without "
                    f"a connection to tvixd at {self.socket}: {problem}"
                )
            delays = delays or reconnect.delays()
            if on_retry is not None:
                on_retry(problem)
            self._reset()
            await anyio.sleep(next(delays))
