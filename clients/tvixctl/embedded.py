"""A tvixd started for the duration of one command (``tvixctl build --embedded``).

``clients`` may not import ``tvixd`` (the layering rule), so the daemon is
the ``tvixd`` executable in a child process: the console script next to the
running Python when there is one, else ``python -m tvixd.main``.  It listens
on a socket in a fresh temporary directory, keeps its state in ``state_dir``
(default: the daemon's own default, so results persist between commands),
and logs to a file there too.  Readiness is systemd's protocol: the child
gets ``NOTIFY_SOCKET`` pointing at a datagram socket bound here and sends
``READY=1`` once it serves; a child that exits first is reported with the
end of its log.  On the way out it gets SIGTERM (then SIGKILL after
``stop_timeout``) and the temporary directory is removed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from clients.tvixctl.common import CommandError

__all__ = ["EmbeddedDaemon", "embedded_daemon", "tvixd_command"]

READY_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
_DROP = (
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
)


@dataclass(frozen=True)
class EmbeddedDaemon:
    """A running embedded tvixd: its socket, its state directory (``None``: its default), its log."""

    socket: str
    state_dir: Path | None
    log: Path
    pid: int


def tvixd_command() -> list[str]:
    """The argv prefix that starts tvixd with the running Python's packages."""
    script = Path(sys.executable).parent / "tvixd"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "tvixd.main"]


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


async def _ready(notify: socket.socket) -> None:
    while True:
        await anyio.wait_readable(notify)
        try:
            data = notify.recv(4096)
        except BlockingIOError:
            continue
        if "READY=1" in data.decode(errors="replace").split("\n"):
            return


async def _start(
    argv: list[str], env: dict[str, str], log: Path, notify: socket.socket, ready_within: float
) -> anyio.abc.Process:
    log_file = await anyio.to_thread.run_sync(open, log, "ab")
    try:
        process = await anyio.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env
        )
    finally:
        log_file.close()
    try:
        async with anyio.create_task_group() as tg:

            async def exited() -> None:
                await process.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(exited)
            with anyio.fail_after(ready_within):
                await _ready(notify)
            tg.cancel_scope.cancel()
    except TimeoutError:
        await _stop(process, 5.0)
        raise CommandError(
            f"the embedded tvixd did not become ready within {ready_within:g} s; its log:\n"
            + await anyio.to_thread.run_sync(_log_tail, log)
        ) from None
    except BaseException:
        await _stop(process, 5.0)
        raise
    if process.returncode is not None:
        tail = await anyio.to_thread.run_sync(_log_tail, log)
        raise CommandError(
            f"the embedded tvixd ({' '.join(argv)}) exited with status {process.returncode} "
            f"before it was ready:\n{tail}"
        )
    return process


async def _stop(process: anyio.abc.Process, grace: float) -> None:
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(grace):
                await process.wait()
        if process.returncode is None:
            process.kill()
            with anyio.move_on_after(5.0):
                await process.wait()
        await process.aclose()


@asynccontextmanager
async def embedded_daemon(
    state_dir: Path | None = None,
    *,
    extra_args: Sequence[str] = (),
    log: Path | None = None,
    ready_timeout: float = READY_TIMEOUT,
    stop_timeout: float = STOP_TIMEOUT,
) -> AsyncIterator[EmbeddedDaemon]:
    """Run tvixd (see the module docstring) until the block ends.

    ``extra_args`` are more tvixd flags (``--build-service dummy://``);
    ``log`` is where its stderr goes (appended; default: a temporary file).
    :class:`CommandError` when it does not start.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = runtime if runtime and os.path.isdir(runtime) else None  # noqa: ASYNC240
    tmp = Path(
        await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="tvixctl-", dir=base))
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        notify.bind(str(tmp / "notify.sock"))
        notify.setblocking(False)
        sock, log = tmp / "tvixd.sock", log or tmp / "tvixd.log"
        env = {k: v for k, v in os.environ.items() if k not in _DROP}
        env["NOTIFY_SOCKET"] = str(tmp / "notify.sock")
        argv = [*tvixd_command(), "--listen", f"unix:{sock}"]
        if state_dir is not None:
            argv += ["--state-dir", str(state_dir)]
        argv += [*extra_args]
        process = await _start(argv, env, log, notify, ready_timeout)
        try:
            yield EmbeddedDaemon(str(sock), state_dir, log, process.pid)
        finally:
            await _stop(process, stop_timeout)
    finally:
        notify.close()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(tmp, ignore_errors=True))
