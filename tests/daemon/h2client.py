"""A bare HTTP/2 gRPC client over a unix socket, to see what a server does to a connection.

grpclib's client hides the frames (a ``GOAWAY`` and a dropped connection
look alike to it); these tests need to see them, and to hold a connection
in states a well-behaved client never does (idle forever, or not reading).
"""

from __future__ import annotations

import struct
from pathlib import Path

import anyio
import anyio.abc
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, Event, ResponseReceived, StreamEnded
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes

__all__ = ["RawClient"]

MAX_WINDOW = 2**31 - 1


class RawClient:
    """One HTTP/2 connection to a gRPC server at a unix socket path.

    ``window``: the flow-control window granted to the server (per stream and
    for the connection); a large one lets the server send far more than this
    client reads.
    """

    def __init__(self, stream: anyio.abc.SocketStream, connection: H2Connection) -> None:
        self.stream = stream
        self.h2 = connection
        self.events: list[Event] = []
        self.eof = False
        self.reset = False
        self.received = 0

    @classmethod
    async def connect(cls, path: Path, *, window: int = 65535) -> RawClient:
        stream = await anyio.connect_unix(path)
        h2 = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        h2.initiate_connection()
        if window > 65535:
            h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
            h2.increment_flow_control_window(window - 65535)
        client = cls(stream, h2)
        await client.flush()
        return client

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            await self.stream.send(data)

    async def call(self, method: str, message: bytes) -> int:
        """Start a call of ``method`` (``/package.Service/Method``) with one message; its stream id."""
        stream_id = self.h2.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "localhost"),
            ("content-type", "application/grpc+proto"),
            ("te", "trailers"),
        ]
        self.h2.send_headers(stream_id, headers)
        self.h2.send_data(stream_id, struct.pack(">?I", False, len(message)) + message)
        self.h2.end_stream(stream_id)
        await self.flush()
        return stream_id

    async def receive(self) -> bool:
        """Read once and process what came; ``False`` at the end of the connection."""
        try:
            data = await self.stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
            self.eof = True
            return False
        self.received += len(data)
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:  # after a GOAWAY h2 may refuse further frames
            return True
        self.events.extend(events)
        await self.flush()
        return True

    async def until_ended(self, stream_id: int) -> None:
        """Read until the response of ``stream_id`` has ended."""
        while not any(isinstance(e, StreamEnded) and e.stream_id == stream_id for e in self.events):
            assert await self.receive(), "the connection ended before the response"

    async def until_response(self, stream_id: int) -> None:
        """Read until the response headers of ``stream_id`` arrived."""
        while not any(
            isinstance(e, ResponseReceived) and e.stream_id == stream_id for e in self.events
        ):
            assert await self.receive(), "the connection ended before the response"

    async def until_closed(self) -> None:
        """Read (and discard) until the server ends the connection."""
        while await self.receive():
            pass

    def goaway(self) -> ConnectionTerminated | None:
        """The ``GOAWAY`` the server sent, if any."""
        return next((e for e in self.events if isinstance(e, ConnectionTerminated)), None)

    async def aclose(self) -> None:
        await self.stream.aclose()
