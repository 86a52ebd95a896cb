"""Closing a grpclib server's client connections when a test's server stops.

grpclib's ``Server.close()`` stops accepting and cancels handlers but leaves
accepted connections open until the peer hangs up (asyncio's ``Server`` on
Python 3.11 does the same). grpcio clients keep their connection in a shared
subchannel pool after ``channel.close()``, so the server side of it outlives
the test's event loop and is reported later as an unclosed transport, in
whatever test the garbage collector happens to run. Tests that serve grpcio
clients track the connections their server accepts and close them at teardown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from grpclib.server import Server


@asynccontextmanager
async def closing_connections(server: Server) -> AsyncIterator[Server]:
    """Track what ``server`` accepts inside the block; close the connections still open after it.

    Uses grpclib 0.4's ``_protocol_factory`` and ``H2Protocol.connection._transport``
    (the dependency is pinned below 0.5); a test helper, not product code.
    """
    protocols: list[Any] = []
    factory = server._protocol_factory

    def tracking() -> Any:
        protocol = factory()
        protocols.append(protocol)
        return protocol

    server._protocol_factory = tracking  # type: ignore[method-assign]
    try:
        yield server
    finally:
        for protocol in protocols:
            transport = getattr(getattr(protocol, "connection", None), "_transport", None)
            if transport is not None and not transport.is_closing():
                transport.close()
        await anyio.sleep(0.01)  # let the loop finish closing the sockets
