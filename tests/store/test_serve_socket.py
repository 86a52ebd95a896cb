"""``tvixd.store.serve``'s unix socket (bound through ``tvixd.endpoints.bind_unix``).

Mode 0660 from the start, a stale socket file replaced, a live one or a
non-socket refused with a clear error, the file removed on stop.
"""

from __future__ import annotations

import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from clients.castore.grpc import GrpcBlobService
from clients.castore.model import B3Digest
from clients.errors import InvalidRequest
from tvixd.store.serve import ServeConfig, main, serve


@asynccontextmanager
async def serving(path: Path) -> AsyncIterator[str]:
    """``serve`` on ``unix:{path}`` until the block ends; the address it announced."""
    stop, ready = anyio.Event(), anyio.Event()
    addresses: list[str] = []

    def announce(address: str) -> None:
        addresses.append(address)
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(serve, ServeConfig(f"unix:{path}"), stop=stop, ready=announce))
        with anyio.fail_after(10):
            await ready.wait()
        try:
            yield addresses[0]
        finally:
            stop.set()


def _stale_socket(path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens


@pytest.mark.asyncio
async def test_stale_socket_is_replaced_mode_0660_removed_on_stop(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "store.sock"
    path.parent.mkdir()
    await anyio.to_thread.run_sync(_stale_socket, path)
    async with serving(path) as address:
        assert address == f"unix:{path}"
        st = await anyio.Path(path).lstat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        blobs = GrpcBlobService.from_url(f"grpc+unix://{path}")
        try:
            assert not await blobs.has(B3Digest.of(b"x"))
        finally:
            await blobs.close()
    assert not await anyio.Path(path).exists()
    assert [p.name async for p in anyio.Path(path.parent).iterdir()] == []  # no temporary left


@pytest.mark.asyncio
async def test_live_socket_and_other_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.sock"
    async with serving(path):
        with pytest.raises(InvalidRequest, match=rf"unix:{path}: another process is already"):
            await serve(ServeConfig(f"unix:{path}"), stop=anyio.Event())
        assert await anyio.Path(path).exists()  # the live server's socket is left alone
    await anyio.Path(path).write_text("not a socket")
    with pytest.raises(InvalidRequest, match=rf"unix:{path}: the path exists and is not a socket"):
        await serve(ServeConfig(f"unix:{path}"), stop=anyio.Event())
    assert await anyio.Path(path).read_text() == "not a socket"


def test_main_reports_a_path_in_the_way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store.sock"
    path.write_text("not a socket")
    assert main(["--listen", f"unix:{path}", "--log-level", "WARNING"]) == 2
    err = capsys.readouterr().err
    assert f"tvixd.store.serve: listen unix:{path}: the path exists and is not a socket" in err


def _read_until_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (at most 10 s)."""
    sock.settimeout(10)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@pytest.mark.asyncio
async def test_stop_closes_idle_client_connections(tmp_path: Path) -> None:
    """grpclib's ``Server.close()`` leaves accepted connections open; ``serve`` closes them."""
    path = tmp_path / "store.sock"
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        async with serving(path):
            await anyio.to_thread.run_sync(client.connect, str(path))
            blobs = GrpcBlobService.from_url(f"grpc+unix://{path}")
            try:  # a request the server answers, so the idle connection above is set up too
                assert not await blobs.has(B3Digest.of(b"x"))
            finally:
                await blobs.close()
        received = await anyio.to_thread.run_sync(_read_until_eof, client)
    finally:
        client.close()
    assert received  # the server's HTTP/2 preface and its GOAWAY, then end of stream
