"""The daemon: services composed from the config, one gRPC endpoint, a staged lifecycle.

Startup (``STATUS=`` tells systemd how far it got):

1. open the services from their URLs (blobs, directories, path infos, the
   builder, the evaluator) and the signing key;
2. bind every listen address (unix sockets are created with their final mode
   and group before they appear under their name; TCP; the sockets systemd
   passed) — nothing is served yet, connections wait in the backlog;
3. start the coordinator (``task_group.start``): it recovers the journal;
4. serve on every socket: tvix.castore.v1 Blob/Directory, tvix.store.v1
   PathInfo, tvix.build.v1 BuildService, tvixd.v1 StreamingBuildService and
   Coordinator — one daemon is a complete Tvix-compatible store and builder;
5. when the daemon owns its process (``handle_signals``), tune the garbage
   collector (:func:`tune_gc`); ``READY=1``; ``WATCHDOG=1`` every half
   ``$WATCHDOG_USEC`` from then on.

Shutdown (the ``shutdown`` event, set by SIGTERM/SIGINT when the daemon
handles signals): ``STOPPING=1`` → the coordinator stops accepting jobs →
it drains in-flight builds for up to ``shutdown_grace`` seconds → new gRPC
requests are refused (``UNAVAILABLE``), unix socket files are removed and
running requests get what is left of the grace period (streams that
follow a job or a log, ``tvixd.endpoints.FOLLOWING``, are not waited for)
→ those streams end with ``UNAVAILABLE`` → servers close (cancelling what
still runs) → every client connection gets an HTTP/2 ``GOAWAY`` and is
closed (idle ones too: neither grpclib's nor asyncio's ``Server.close()``
closes accepted connections), those still open after
:data:`HANGUP_TIMEOUT` are dropped → the coordinator task is cancelled → services close in reverse
order.  The ``force`` event (a second signal) cuts every wait short; each
closing step is shielded and bounded.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.to_thread
from grpclib.events import RecvRequest, listen
from grpclib.server import Server

from clients.errors import InvalidRequest
from clients.store.nar import CastoreNarCalculator
from nixcompat.errors import NixCompatError
from nixcompat.signing import SigningKey
from tvixd import api
from tvixd.build.registry import build_service_from_url
from tvixd.build.server import build_servicers
from tvixd.castore.registry import blob_service_from_url, directory_service_from_url
from tvixd.castore.server import castore_servicers
from tvixd.config import Config, ConfigError, ListenAddress
from tvixd.coordinator import Coordinator
from tvixd.endpoints import Connections, Inflight, Listener, bind_tcp, bind_unix
from tvixd.eval import evaluator_from_url
from tvixd.store.nixfile import NixFilePathInfoService
from tvixd.store.registry import PATH_INFO_BACKENDS, path_info_service_from_url
from tvixd.store.server import PathInfoServiceServicer
from tvixd.systemd import Notifier, SystemdError, listen_fds, watchdog_interval

__all__ = [
    "GC_THRESHOLD",
    "HANGUP_TIMEOUT",
    "SWITCH_INTERVAL",
    "CoordinatorLike",
    "Daemon",
    "tune_gc",
    "tune_threads",
]

log = logging.getLogger(__name__)

#: Seconds each closing step (server close, service close) may take.
CLOSE_TIMEOUT = 5.0
#: Seconds ``Watch``/``FollowLog`` streams get to send their ``UNAVAILABLE`` status, and
#: client connections to close after ``GOAWAY``, before they are cut (once each).
HANGUP_TIMEOUT = 1.0
_PATH_INFO_BACKENDS = {**PATH_INFO_BACKENDS, "nix+file": NixFilePathInfoService.from_url}
GC_THRESHOLD = (20_000, 10, 10)
"""``gc.set_threshold`` once started: collect the youngest generation every 20 000 net
allocations of container objects instead of Python's 700 (the other two as Python's)."""


def tune_gc() -> None:
    """Tune the process's cyclic garbage collector for a long-running daemon (process-wide).

    Everything alive once the daemon has started (modules, classes, the services, the
    recovered jobs) is collected once and then *frozen*: moved to a generation the
    collector never walks again, so full collections only look at what came later.
    The youngest generation is collected less often (:data:`GC_THRESHOLD`): the
    coordinator and the gRPC servers allocate in bursts that die young.  See
    docs/daemon.md ("Garbage collection").
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits for it (Python's default: 0.005).

tvixd moves file I/O, hashing and SQLite to threads, and those give the GIL
up at every system call: with the default, a thread coming back from one
may wait up to 5 ms behind a thread running Python.  Ingesting /usr/lib
(60k files) into the objectstore took 8.3-8.7 s with the default and 7.4 s
with 0.5 ms, with less CPU: the walker thread, which paces the whole
pipeline, no longer waits behind the store thread's Python."""


def tune_threads() -> None:
    """Give the GIL up after :data:`SWITCH_INTERVAL` when another thread waits (process-wide;
    ``bench/`` applies it too, to measure as tvixd runs)."""
    sys.setswitchinterval(SWITCH_INTERVAL)


class CoordinatorLike(Protocol):
    """What the daemon needs of the coordinator (``tvixd.coordinator.Coordinator``)."""

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None: ...

    def stop_accepting(self) -> None: ...

    async def drain(self, grace: float) -> None: ...


CoordinatorFactory = Callable[..., CoordinatorLike]
"""Called with the keyword arguments of ``Coordinator.__init__``."""
ServicersFactory = Callable[[Any], Sequence[Any]]
"""``coordinator_servicers(coordinator)``."""


@asynccontextmanager
async def _unless(event: anyio.Event) -> AsyncIterator[anyio.CancelScope]:
    """Run the body, cancelled as soon as ``event`` is set."""
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        yield tg.cancel_scope
        tg.cancel_scope.cancel()


async def _bounded(what: str, step: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """A closing step: shielded, at most CLOSE_TIMEOUT seconds, failures logged."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT) as scope:
        try:
            await step()
        except Exception:
            log.exception("closing %s failed", what)
    if scope.cancelled_caught:
        log.warning("closing %s took longer than %.0f s; abandoned", what, CLOSE_TIMEOUT)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


async def _cancel_on(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _hang_up(
    servers: Sequence[tuple[str, Server]],
    connections: Connections,
    inflight: Inflight,
    force: anyio.Event,
) -> None:
    """The last serving stage: end following streams, close the servers and every connection.

    Shielded; each wait is bounded (:data:`HANGUP_TIMEOUT`, :data:`CLOSE_TIMEOUT`) and
    cut short by ``force``.
    """
    with anyio.CancelScope(shield=True):
        if inflight.following:
            async with _unless(force):
                with anyio.move_on_after(HANGUP_TIMEOUT):
                    await inflight.end_following()
        for address, server in servers:
            try:
                server.close()  # stops listening, cancels the handlers still running
            except Exception:
                log.exception("closing server %s failed", address)
        await connections.hang_up(HANGUP_TIMEOUT, force)
        for address, server in servers:
            await _bounded(f"server {address}", server.wait_closed)


class Daemon:
    """tvixd, composed from a :class:`~tvixd.config.Config` (see the module docstring).

    ``systemd_env`` holds the systemd variables (``NOTIFY_SOCKET``,
    ``WATCHDOG_USEC``, ``LISTEN_*``; see :func:`tvixd.systemd.take_environment`).
    ``coordinator`` / ``coordinator_servicers`` replace the real coordinator
    (tests).
    """

    def __init__(
        self,
        config: Config,
        *,
        systemd_env: Mapping[str, str] | None = None,
        coordinator: CoordinatorFactory | None = None,
        coordinator_servicers: ServicersFactory | None = None,
    ) -> None:
        self.config = config
        self._env = dict(systemd_env or {})
        self._coordinator_factory: CoordinatorFactory = coordinator or Coordinator
        self._servicers_factory: ServicersFactory = (
            coordinator_servicers or api.coordinator_servicers
        )
        self.addresses: list[str] = []

    def __repr__(self) -> str:
        return f"Daemon({', '.join(map(str, self.config.listen))}, state={self.config.state_dir})"

    async def run(
        self,
        *,
        shutdown: anyio.Event | None = None,
        force: anyio.Event | None = None,
        handle_signals: bool = False,
        task_status: anyio.abc.TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until ``shutdown`` is set (or a signal, with ``handle_signals``), then stop in stages.

        ``handle_signals`` means the daemon owns the process: it also handles
        SIGTERM/SIGINT and tunes the process's garbage collector when it has
        started (:func:`tune_gc`).  ``task_status.started`` gets the addresses
        served, after ``READY=1``.
        Raises :class:`ConfigError` for configuration the services reject
        (bad URLs, an unreadable key) and :class:`SystemdError` for a broken
        socket-activation environment.
        """
        shutdown = shutdown if shutdown is not None else anyio.Event()
        force = force if force is not None else anyio.Event()
        notifier = Notifier(self._env.get("NOTIFY_SOCKET"))
        try:
            async with anyio.create_task_group() as root:
                if handle_signals:
                    await root.start(self._signals, shutdown, force)
                await self._lifetime(
                    root, notifier, shutdown, force, task_status, tune=handle_signals
                )
                root.cancel_scope.cancel()
        finally:
            notifier.close()

    async def _lifetime(
        self,
        root: anyio.abc.TaskGroup,
        notifier: Notifier,
        shutdown: anyio.Event,
        force: anyio.Event,
        task_status: anyio.abc.TaskStatus[list[str]],
        *,
        tune: bool,
    ) -> None:
        config = self.config
        async with AsyncExitStack() as stack:  # services, then sockets: closed in reverse
            with anyio.CancelScope() as startup:
                root.start_soon(_cancel_on, force, startup)
                await self._notify(notifier, "STATUS=opening services")
                coordinator, handlers = await self._compose(stack)
                listeners = await self._bind(stack)
            if startup.cancelled_caught:
                log.warning("forced to stop during startup")
                return
            async with anyio.create_task_group() as coordinator_group:
                with anyio.CancelScope() as recovery:
                    root.start_soon(_cancel_on, force, recovery)
                    await self._notify(notifier, "STATUS=recovering jobs")
                    await coordinator_group.start(self._run_coordinator, coordinator, shutdown)
                if recovery.cancelled_caught:
                    log.warning("forced to stop during recovery")
                    coordinator_group.cancel_scope.cancel()
                    return
                inflight = Inflight()
                connections = Connections()
                servers: list[tuple[str, Server]] = []
                try:
                    await self._serve(servers, listeners, handlers, inflight, connections)
                    self.addresses = [listener.address for listener in listeners]
                    served = ", ".join(self.addresses)
                    log.info(
                        "tvixd ready", extra={"listen": served, "state_dir": str(config.state_dir)}
                    )
                    if tune:
                        tune_gc()
                        tune_threads()
                    await self._notify(notifier, "READY=1", f"STATUS=serving on {served}")
                    interval = watchdog_interval(self._env, os.getpid())
                    if interval is not None:
                        root.start_soon(self._watchdog, notifier, interval)
                    task_status.started(self.addresses)
                    await shutdown.wait()
                    await self._stop(notifier, coordinator, listeners, inflight, force)
                finally:
                    await _hang_up(servers, connections, inflight, force)
                    coordinator_group.cancel_scope.cancel()
            log.info("closing services")

    async def _notify(self, notifier: Notifier, *lines: str) -> None:
        try:
            await notifier.notify(*lines)
        except (OSError, TimeoutError) as exc:
            log.warning("cannot notify systemd: %s", exc, extra={"notify": " ".join(lines)})

    async def _compose(self, stack: AsyncExitStack) -> tuple[CoordinatorLike, list[Any]]:
        config = self.config
        services = config.services

        def closing(what: str, service: Any) -> None:
            stack.push_async_callback(_bounded, what, service.close)

        try:
            await anyio.to_thread.run_sync(
                lambda: config.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
            )
            key = await self._signing_key()
            blobs = await blob_service_from_url(services.blob_service)
            closing("blob service", blobs)
            directories = await directory_service_from_url(services.directory_service)
            closing("directory service", directories)
            pathinfos = await path_info_service_from_url(
                services.path_info_service,
                blobs=blobs,
                directories=directories,
                backends=_PATH_INFO_BACKENDS,
            )
            closing("path info service", pathinfos)
            builder = await build_service_from_url(
                services.build_service, blobs=blobs, directories=directories
            )
            closing("build service", builder)
            evaluator = await evaluator_from_url(
                services.evaluator, blobs=blobs, directories=directories, pathinfos=pathinfos
            )
            closing("evaluator", evaluator)
        except InvalidRequest as exc:
            raise ConfigError(str(exc)) from exc
        coordinator = self._coordinator_factory(
            evaluator=evaluator,
            blobs=blobs,
            directories=directories,
            pathinfos=pathinfos,
            builder=builder,
            journal_path=config.journal,
            signing_key=key,
            max_jobs=config.max_jobs,
        )
        handlers: list[Any] = [
            *castore_servicers(blobs, directories),
            PathInfoServiceServicer(pathinfos, CastoreNarCalculator(blobs, directories)),
            *build_servicers(builder),
            *self._servicers_factory(coordinator),
        ]
        return coordinator, handlers

    async def _signing_key(self) -> SigningKey | None:
        path = self.config.signing_key_file
        if path is None:
            return None
        try:
            text = await anyio.Path(path).read_text()
            return SigningKey.parse(text.strip())
        except OSError as exc:
            raise ConfigError(f"signing_key_file: cannot read {path}: {exc.strerror}") from exc
        except (NixCompatError, UnicodeDecodeError) as exc:
            raise ConfigError(f"signing_key_file: {path} is not a Nix secret key: {exc}") from exc

    async def _bind(self, stack: AsyncExitStack) -> list[Listener]:
        config = self.config
        listeners: list[Listener] = []

        def keep(listener: Listener) -> None:
            listeners.append(listener)
            stack.callback(listener.socket.close)
            if listener.unlink is not None:
                path = listener.unlink

                async def unlink(path: Path = path) -> None:
                    await anyio.to_thread.run_sync(_unlink, path)

                stack.push_async_callback(_bounded, f"socket file {path}", unlink)

        for address in config.listen:
            if address.kind == "systemd":
                for activated in listen_fds(self._env, os.getpid()) or self._no_sockets():
                    keep(Listener(f"systemd:{activated.name}", activated.socket))
            elif address.kind == "unix":
                assert address.path is not None
                mode, group = config.socket_mode, config.socket_group
                keep(await self._bind_one(bind_unix, address, address.path, mode, group))
            else:
                assert address.host is not None and address.port is not None  # noqa: PT018
                keep(await self._bind_one(bind_tcp, address, address.host, address.port))
        if self._env.get("LISTEN_FDS") and all(a.kind != "systemd" for a in config.listen):
            log.warning("systemd passed sockets, but --listen does not include systemd: unused")
        return listeners

    @staticmethod
    async def _bind_one(
        bind: Callable[..., Listener], address: ListenAddress, *args: object
    ) -> Listener:
        try:
            return await anyio.to_thread.run_sync(bind, *args)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {address}: {exc.strerror}") from exc

    @staticmethod
    def _no_sockets() -> list[Any]:
        raise SystemdError(
            "--listen systemd, but systemd passed no sockets (LISTEN_FDS is not set): "
            "start tvixd through tvixd.socket, or listen on unix:/path"
        )

    async def _run_coordinator(
        self,
        coordinator: CoordinatorLike,
        shutdown: anyio.Event,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        await coordinator.run(task_status=task_status)
        if not shutdown.is_set():
            log.error("the coordinator stopped on its own; shutting down")
            shutdown.set()

    async def _serve(
        self,
        servers: list[tuple[str, Server]],
        listeners: Sequence[Listener],
        handlers: Sequence[Any],
        inflight: Inflight,
        connections: Connections,
    ) -> None:
        for listener in listeners:
            server = Server(list(handlers))
            listen(server, RecvRequest, inflight.on_request)
            connections.track(server)
            await server.start(sock=listener.socket)
            servers.append((listener.address, server))

    async def _stop(
        self,
        notifier: Notifier,
        coordinator: CoordinatorLike,
        listeners: Sequence[Listener],
        inflight: Inflight,
        force: anyio.Event,
    ) -> None:
        grace = self.config.shutdown_grace
        deadline = anyio.current_time() + grace
        log.info("stopping", extra={"grace_s": grace})
        await self._notify(notifier, "STOPPING=1", "STATUS=stopping: draining builds")
        coordinator.stop_accepting()
        async with _unless(force):
            with anyio.move_on_after(grace + CLOSE_TIMEOUT):
                await coordinator.drain(grace)
        await self._notify(notifier, "STATUS=stopping: finishing requests")
        inflight.draining = True
        for listener in listeners:
            if listener.unlink is not None:  # no new connections by name
                await anyio.to_thread.run_sync(_unlink, listener.unlink)
        async with _unless(force):
            with anyio.move_on_after(max(deadline - anyio.current_time(), 1.0)):
                await inflight.wait_idle()
        if inflight.count:
            log.warning("cancelling %d requests still running", inflight.count)
        await self._notify(notifier, "STATUS=stopping: closing")
        if force.is_set():
            log.warning("forced stop: in-flight work was cancelled")

    async def _signals(
        self,
        shutdown: anyio.Event,
        force: anyio.Event,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if not shutdown.is_set():
                    log.info("received %s: stopping (again to force)", name)
                    shutdown.set()
                else:
                    log.warning("received %s again: forcing the stop", name)
                    force.set()

    async def _watchdog(self, notifier: Notifier, interval: float) -> None:
        while True:
            await self._notify(notifier, "WATCHDOG=1")
            await anyio.sleep(interval)
