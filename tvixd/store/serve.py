"""A small store server: blobs, directories and path infos on one socket.

    python -m tvixd.store.serve --listen unix:/run/tvixd/tvixd.sock \\
        --blob-service objectstore+file:///var/lib/tvixd/blobs \\
        --directory-service sqlite:///var/lib/tvixd/store.db \\
        --path-info-service sqlite:///var/lib/tvixd/store.db

Serves ``tvix.castore.v1.BlobService``, ``tvix.castore.v1.DirectoryService``
and ``tvix.store.v1.PathInfoService`` (with ``CalculateNAR`` computed from the
castore) over grpclib, for tests and ``tvixctl store`` until the daemon
exists (the daemon will absorb this module).  Every backend URL the
registries know is accepted (including ``nix+file://`` for path infos).

``--listen``: ``unix:/abs/path`` (socket mode 0660 from the start; a stale
socket file left by a dead server is replaced, a live one is not: see
``tvixd.endpoints.bind_unix``) or ``tcp:host:port``.  Once listening it prints
``ready <address>`` on stdout.

Shutdown is staged: SIGTERM or SIGINT (or the injected ``stop`` event) →
stop accepting (the unix socket file is removed, so no new client can
connect; new requests on open connections get ``UNAVAILABLE`` from
``tvixd.endpoints.Inflight``) → wait for in-flight requests up to
``--grace`` seconds → close the server and every client connection it
accepted (``GOAWAY``, then dropped after :data:`HANGUP_TIMEOUT`; see
``tvixd.endpoints.Connections``) → close the services.  A second signal
skips the wait.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from grpclib.events import RecvRequest, listen
from grpclib.server import Server

from clients.errors import InvalidRequest, StoreError
from clients.store.nar import CastoreNarCalculator
from tvixd.castore.registry import blob_service_from_url, directory_service_from_url
from tvixd.castore.server import castore_servicers
from tvixd.config import ConfigError
from tvixd.endpoints import Connections, Inflight, Listener, bind_unix
from tvixd.store.registry import path_info_service_from_url
from tvixd.store.server import PathInfoServiceServicer

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
HANGUP_TIMEOUT = 1.0
"""Seconds client connections get to close after ``GOAWAY`` before they are dropped."""


@dataclass(frozen=True)
class ServeConfig:
    """Where to listen, which backends, how long to drain on shutdown."""

    listen: str
    blob_service: str = "memory://"
    directory_service: str = "memory://"
    path_info_service: str = "memory://"
    grace: float = 10.0

    def address(self) -> tuple[Path | None, str | None, int | None]:
        """``(unix path, host, port)`` from ``listen``; InvalidRequest when malformed."""
        kind, _, rest = self.listen.partition(":")
        if kind == "unix" and rest.startswith("/"):
            return Path(rest), None, None
        if kind == "tcp":
            host, _, port = rest.rpartition(":")
            if host and port.isdigit() and 0 < int(port) < 65536:
                return None, host.strip("[]"), int(port)
        raise InvalidRequest(
            f"--listen {self.listen!r}: expected unix:/absolute/path or tcp:host:port"
        )


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _bind_unix(path: Path) -> Listener:
    """``bind_unix`` with the mode of ``--listen``; what is in the way is InvalidRequest."""
    try:
        return bind_unix(path, SOCKET_MODE, None)
    except ConfigError as exc:
        raise InvalidRequest(str(exc)) from exc


@contextlib.asynccontextmanager
async def _services(config: ServeConfig) -> AsyncIterator[list[Any]]:
    async with AsyncExitStack() as stack:

        async def closing(service: Any) -> Any:
            async def close() -> None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await service.close()

            stack.push_async_callback(close)
            return service

        blobs = await closing(await blob_service_from_url(config.blob_service))
        directories = await closing(await directory_service_from_url(config.directory_service))
        path_infos = await closing(
            await path_info_service_from_url(
                config.path_info_service,
                blobs=blobs,
                directories=directories,
            )
        )
        calculator = CastoreNarCalculator(blobs, directories)
        yield [
            *castore_servicers(blobs, directories),
            PathInfoServiceServicer(path_infos, calculator),
        ]


async def serve(
    config: ServeConfig,
    *,
    stop: anyio.Event,
    force: anyio.Event | None = None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until ``stop`` is set, then shut down in stages (``force`` skips the drain)."""
    path, host, port = config.address()
    async with _services(config) as handlers:
        server = Server(handlers)
        connections = Connections()
        connections.track(server)
        inflight = Inflight("the store server is shutting down")
        listen(server, RecvRequest, inflight.on_request)
        if path is not None:
            listener = await anyio.to_thread.run_sync(_bind_unix, path)
            try:
                await server.start(sock=listener.socket)
            except BaseException:
                listener.socket.close()
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_remove, path)
                raise
            address = listener.address
        else:
            await server.start(host, port)
            address = f"tcp:{host}:{port}"
        log.info("store server listening on %s", address)
        if ready is not None:
            ready(address)
        try:
            await stop.wait()
            log.info("stopping: draining %d in-flight requests", inflight.count)
            inflight.draining = True
            if path is not None:
                await anyio.to_thread.run_sync(_remove, path)
            with anyio.move_on_after(config.grace):
                async with anyio.create_task_group() as tg:

                    async def forced() -> None:
                        if force is not None:
                            await force.wait()
                        else:
                            await anyio.sleep_forever()
                        tg.cancel_scope.cancel()

                    tg.start_soon(forced)
                    await inflight.wait_idle()
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                server.close()
                await connections.hang_up(HANGUP_TIMEOUT, force)
                with anyio.move_on_after(5):
                    await server.wait_closed()
                if path is not None:
                    await anyio.to_thread.run_sync(_remove, path)
        log.info("store server stopped")


async def _run(config: ServeConfig) -> None:
    stop, force = anyio.Event(), anyio.Event()

    def ready(address: str) -> None:
        print(f"ready {address}", flush=True)

    async with anyio.create_task_group() as tg:

        async def signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                async for signum in received:
                    log.info("received %s", signal.Signals(signum).name)
                    (force if stop.is_set() else stop).set()

        tg.start_soon(signals)
        await serve(config, stop=stop, force=force, ready=ready)
        tg.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tvixd.store.serve",
        description="Serve blobs, directories and path infos (tvix.castore.v1, tvix.store.v1) "
        "on one socket.",
        epilog="example: python -m tvixd.store.serve --listen unix:/tmp/tvixd.sock "
        "--blob-service objectstore+file:///tmp/store/blobs "
        "--directory-service sqlite:///tmp/store/store.db "
        "--path-info-service sqlite:///tmp/store/store.db",
    )
    parser.add_argument("--listen", required=True, help="unix:/abs/path or tcp:host:port")
    parser.add_argument("--blob-service", default="memory://", help="blob service URL")
    parser.add_argument("--directory-service", default="memory://", help="directory service URL")
    parser.add_argument("--path-info-service", default="memory://", help="path info service URL")
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds to drain requests on SIGTERM"
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = ServeConfig(
        args.listen, args.blob_service, args.directory_service, args.path_info_service, args.grace
    )
    try:
        config.address()
    except InvalidRequest as exc:
        print(f"tvixd.store.serve: {exc}", file=sys.stderr)
        return 2
    failures: list[BaseException] = []
    try:
        anyio.run(_run, config, backend_options={"use_uvloop": True})
    except* (StoreError, OSError) as group:
        failures.extend(group.exceptions)
    for failure in failures:
        print(f"tvixd.store.serve: {failure}", file=sys.stderr)
    return 2 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
