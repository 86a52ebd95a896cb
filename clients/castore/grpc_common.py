"""Plumbing shared by the gRPC adapters (castore, store and build clients).

``channel_from_url`` parses the gRPC URLs; :func:`translate` is the client-side
status boundary (the one place gRPC status becomes ``StoreError``, or the
build errors); :class:`GrpcClient` holds a channel and deadlines;
:func:`abort` ends a stream whose outcome is already decided.

grpclib 0.4.9 ends a call whose connection dropped (or whose deadline
passed) by ``task.cancel()`` on the waiting task, then raises
``StreamTerminatedError`` (``TimeoutError``) instead of the ``CancelledError``
and never calls ``task.uncancel()``.  The stale cancellation request would
make the next cancel scope that expires or is cancelled around the same task
(anyio's ``move_on_after``, a task group, ``asyncio.timeout``) let a
``CancelledError`` escape instead of absorbing it.  :func:`translate` and
:func:`abort` take such requests back (:func:`forget_stale_cancels`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, AsyncExitStack, contextmanager, suppress
from typing import Any, Self
from urllib.parse import urlsplit

import anyio
from grpclib.client import Channel, Stream
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from clients.errors import InvalidRequest, NotFound, StorageError

DEFAULT_TIMEOUT = 60.0


def channel_from_url(url: str) -> Channel:
    """A Channel for ``grpc+unix:///abs/path.sock`` or ``grpc+http://host:port``.

    Call it from the event loop's thread.  Rejects any other shape with
    ``InvalidRequest`` naming the problem.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"invalid gRPC URL {url!r}: {exc}") from exc
    if parts.query or parts.fragment:
        raise InvalidRequest(f"invalid gRPC URL {url!r}: query and fragment are not supported")
    if parts.scheme == "grpc+unix":
        if parts.netloc:
            raise InvalidRequest(
                f"invalid gRPC URL {url!r}: grpc+unix takes no host "
                f"(write grpc+unix:///absolute/path.sock)"
            )
        if not parts.path.startswith("/") or parts.path.endswith("/"):
            raise InvalidRequest(f"invalid gRPC URL {url!r}: needs an absolute socket path")
        return Channel(path=parts.path)
    if parts.scheme == "grpc+http":
        if not parts.hostname or port is None:
            raise InvalidRequest(f"invalid gRPC URL {url!r}: grpc+http needs host:port")
        if parts.username is not None or parts.password is not None:
            raise InvalidRequest(f"invalid gRPC URL {url!r}: credentials are not supported")
        if parts.path not in ("", "/"):
            raise InvalidRequest(f"invalid gRPC URL {url!r}: grpc+http takes no path")
        return Channel(parts.hostname, port)
    raise InvalidRequest(f"invalid gRPC URL {url!r}: scheme must be grpc+unix or grpc+http")


ErrorFactory = Callable[[str], Exception]
"""An exception type (or any callable) building the error raised for a status, from a message."""


def _cancelling() -> tuple[asyncio.Task[object] | None, int]:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop in this thread
        return None, 0
    return task, 0 if task is None else task.cancelling()


def forget_stale_cancels(task: asyncio.Task[object] | None, cancelling: int) -> None:
    """Take back the cancellation requests made on ``task`` since it had ``cancelling`` of them.

    For the moment a grpclib call ended with ``StreamTerminatedError`` or
    ``TimeoutError``: grpclib cancelled the task to wake it and did not take
    the request back (see the module docstring).
    """
    while task is not None and task.cancelling() > cancelling:
        task.uncancel()


@contextmanager
def translate(
    target: str,
    what: str,
    *,
    failure: ErrorFactory = StorageError,
    statuses: Mapping[Status, ErrorFactory] | None = None,
) -> Iterator[None]:
    """The client-side status boundary: gRPC and transport errors to domain errors.

    ``NOT_FOUND`` → ``NotFound``, ``INVALID_ARGUMENT`` → ``InvalidRequest``
    and each status in ``statuses`` → its error, with the server's message (or
    the status name); any other status → ``failure`` with
    ``"{what} on {target}: STATUS: message"``; a dropped connection, a
    protocol error, ``OSError`` or a passed deadline → ``failure`` with
    ``"{what} on {target}: Type: message"``, after taking back grpclib's stale
    cancellation request (:func:`forget_stale_cancels`).
    """
    task, cancelling = _cancelling()
    try:
        yield
    except GRPCError as exc:
        message = exc.message or exc.status.name
        if exc.status is Status.NOT_FOUND:
            raise NotFound(message) from exc
        if exc.status is Status.INVALID_ARGUMENT:
            raise InvalidRequest(message) from exc
        factory = (statuses or {}).get(exc.status)
        if factory is not None:
            raise factory(message) from exc
        raise failure(f"{what} on {target}: {exc.status.name}: {message}") from exc
    except (StreamTerminatedError, ProtocolError, OSError, TimeoutError) as exc:
        forget_stale_cancels(task, cancelling)
        raise failure(f"{what} on {target}: {type(exc).__name__}: {exc}") from exc


class GrpcClient:
    """What the adapters share: a channel (maybe owned), a label, deadlines."""

    def __init__(
        self,
        channel: Channel,
        *,
        target: str,
        owns_channel: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        stream_timeout: float | None = None,
    ) -> None:
        self._channel = channel
        self._target = target
        self._owns_channel = owns_channel
        self._timeout = timeout
        self._stream_timeout = stream_timeout

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        """An adapter owning a channel to ``grpc+unix:///p.sock`` or ``grpc+http://host:port``."""
        return cls(channel_from_url(url), target=url, owns_channel=True, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._target})"

    @property
    def target(self) -> str:
        """The URL or label of the remote, for messages."""
        return self._target

    def open_stream(
        self, path: str, cardinality: Cardinality, send: type, recv: type, *, unary: bool
    ) -> Any:
        """A grpclib ``Stream`` context; unary calls get ``timeout``, streams ``stream_timeout``."""
        timeout = self._timeout if unary else self._stream_timeout
        return self._channel.request(path, cardinality, send, recv, timeout=timeout)

    def errors(self, what: str) -> AbstractContextManager[None]:
        """:func:`translate` for this remote."""
        return translate(self._target, what)

    async def close(self) -> None:
        """Close the channel if this adapter created it (``from_url``)."""
        if self._owns_channel:
            self._owns_channel = False
            self._channel.close()


async def abort(
    stack: AsyncExitStack, stream: Stream[Any, Any] | None, exc: BaseException | None
) -> None:
    """Reset ``stream`` (when ``exc`` says it did not finish) and exit its context.

    Best effort, shielded and bounded: the stream may already be closed by the
    server (h2 then refuses the reset), and the outcome was already decided.
    """
    task, cancelling = _cancelling()
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        if stream is not None and exc is not None:
            with suppress(Exception):
                await stream.cancel()
        with suppress(Exception):
            await stack.aclose()
    forget_stale_cancels(task, cancelling)
