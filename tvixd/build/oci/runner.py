"""Running containers with runc, log lines streamed as they come.

One long-lived shim process per builder (:mod:`tvixd.build.oci.shim`,
started on the first build and again if it dies) runs ``runc run
--detach`` with one pseudoterminal (:func:`log_terminal`, raw mode, as
Nix gives its builders) as the container's stdout *and* stderr, so the
caller gets the build's output as one ordered stream, line by line (without
the ``\\n``; lines longer than :data:`MAX_LINE` are split; a last
unterminated line is delivered at the end), and the shim reports the exit
status of the container's init (pid 1 of its pid namespace) on a socket
private to the build as soon as it is reaped, then deletes the container
and reports that too.  When the init exits, the kernel kills every other
process in the namespace, so a build cannot leave anything running, and
its files can be read while the container is deleted
(:meth:`Runc.container`).

On timeout, cancellation or a failing ``on_line``, the container is killed
(``runc kill ID KILL``; the shim is told too, by shutting down the build's
socket) and its deletion waited for; ``runc delete --force ID`` removes
what is left when the shim does not confirm it — shielded and bounded by
:data:`CLEANUP_TIMEOUT`.  Cancellation then propagates; a timeout is
reported in the result.  Every runc call uses a private state directory
(``runc --root``), so :meth:`Runc.remove_all` can clear containers left
behind by a crash.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import termios
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import anyio
import anyio.to_thread

from clients.build.errors import BuildError, BuildFailed
from clients.store.nar import single_errors

__all__ = ["CLEANUP_TIMEOUT", "MAX_LINE", "TAIL_LINES", "RunResult", "Runc"]

log = logging.getLogger(__name__)

SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim.py")

MAX_LINE = 64 * 1024
"""Longer log lines are split."""
TAIL_LINES = 10
"""Log lines kept for failure messages (Nix's ``log-lines`` default)."""
CLEANUP_TIMEOUT = 20.0
"""Seconds that killing and deleting a container may take."""


@dataclass(frozen=True)
class RunResult:
    """How a container ended: runc's exit status (the init's, or 128+signal), and the log tail."""

    exit_code: int
    timed_out: bool
    tail: tuple[bytes, ...]


class _Lines:
    """Splits a byte stream into lines, keeping the last :data:`TAIL_LINES`."""

    def __init__(self, on_line: Callable[[bytes], Awaitable[None]] | None) -> None:
        self._on_line = on_line
        self._partial = bytearray()
        self.tail: deque[bytes] = deque(maxlen=TAIL_LINES)

    async def _emit(self, line: bytes) -> None:
        self.tail.append(line)
        if self._on_line is not None:
            await self._on_line(line)

    async def feed(self, data: bytes) -> None:
        self._partial += data
        while True:
            end = self._partial.find(b"\n", 0, MAX_LINE + 1)
            if end == -1:
                if len(self._partial) < MAX_LINE:
                    return
                end = MAX_LINE
                line, self._partial = bytes(self._partial[:end]), self._partial[end:]
            else:
                line, self._partial = bytes(self._partial[:end]), self._partial[end + 1 :]
            await self._emit(line)

    async def finish(self) -> None:
        if self._partial:
            line, self._partial = bytes(self._partial), bytearray()
            await self._emit(line)


class _Shim:
    """The running shim process and the control socket to it."""

    def __init__(self, process: subprocess.Popen[bytes], control: socket.socket) -> None:
        self.process = process
        self.control = control

    @classmethod
    def start(cls, runc: str, root: Path) -> _Shim:
        """Start a shim (blocking)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", SHIM, runc, str(root)],
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(process, ours)

    def stop(self) -> None:
        """Close the control socket (the shim kills what still runs), wait for it (blocking)."""
        self.control.close()
        try:
            self.process.wait(CLEANUP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.error("the runc shim (pid %d) did not exit; killing it", self.process.pid)
            _kill_group(self.process.pid)
            self.process.wait()


class Runc:
    """The runc binary, its private state directory and the shim that runs containers."""

    def __init__(self, state_dir: Path, *, runc: str = "runc") -> None:
        self._runc = runc
        self._root = state_dir
        self.unstopped: set[str] = set()
        """Containers whose deletion was not confirmed after a kill: what they could write to
        (their store directory) must not be used again."""
        self._shim: _Shim | None = None
        self._shim_lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"Runc({self._runc}, root={self._root})"

    def _cmd(self, *args: str) -> list[str]:
        return [self._runc, "--root", str(self._root), *args]

    async def _control(self) -> socket.socket:
        """The control socket of a running shim, started if needed."""
        async with self._shim_lock:
            shim = self._shim
            if shim is not None and shim.process.poll() is not None:
                log.warning(
                    "the runc shim exited with %s; starting a new one", shim.process.returncode
                )
                shim.control.close()
                shim = self._shim = None
            if shim is None:
                try:
                    shim = await anyio.to_thread.run_sync(_Shim.start, self._runc, self._root)
                except OSError as exc:
                    raise BuildError(f"cannot start the runc shim: {exc}") from exc
                self._shim = shim
            return shim.control

    async def close(self) -> None:
        """Stop the shim (killing containers still running); bounded."""
        async with self._shim_lock:
            shim, self._shim = self._shim, None
        if shim is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shim.stop)

    @contextlib.asynccontextmanager
    async def container(
        self,
        bundle_dir: Path,
        container_id: str,
        *,
        on_line: Callable[[bytes], Awaitable[None]] | None = None,
        time_limit: float | None = None,
    ) -> AsyncIterator[RunResult]:
        """Run the bundle; the block gets the result once the container's init has exited.

        No process of the container is left then, so the block can read its
        files while the shim deletes it; leaving the block waits for the
        deletion (shielded, bounded by :data:`CLEANUP_TIMEOUT`), and deletes
        the container itself when the shim did not (see :meth:`_deleted`).
        When the container could not be started: :class:`BuildFailed` if the
        builder program cannot be executed (runc's message says why), else
        :class:`BuildError`.
        """
        lines = _Lines(on_line)
        control = await self._control()
        request = json.dumps({"id": container_id, "bundle": str(bundle_dir)}).encode()
        log_read, log_write = log_terminal()
        conn, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        answers = _Answers(conn)
        answer: dict[str, object] | None = None
        try:
            try:
                try:
                    await _send(control, request, [log_write, theirs.fileno()])
                except OSError as exc:
                    raise BuildError(f"cannot reach the runc shim: {exc}") from exc
                finally:
                    os.close(log_write)
                    theirs.close()
                os.set_blocking(log_read, False)
                conn.setblocking(False)
                with anyio.move_on_after(time_limit) as scope:
                    with single_errors():  # on_line's error on its own, not in a group
                        async with anyio.create_task_group() as tg:

                            async def wait_for_answer() -> None:
                                nonlocal answer
                                answer = await answers.next()
                                if answer is None:  # the shim died: stop reading a dead log
                                    tg.cancel_scope.cancel()

                            tg.start_soon(wait_for_answer)
                            while data := await _read(log_read):
                                await lines.feed(data)
                            await lines.finish()
            finally:
                if answer is None:  # timed out, cancelled, on_line failed or the shim died
                    with anyio.CancelScope(shield=True):
                        await self._stop(answers, container_id)
            tail = tuple(lines.tail)
            if scope.cancelled_caught:
                result = RunResult(-1, True, tail)
            else:
                code = answer.get("exit_code") if answer else None
                if not isinstance(code, int):
                    error = (
                        answer.get("error") if answer else "the runc shim exited during the build"
                    )
                    _raise_start_failure(error, tail)
                result = RunResult(code, False, tail)
            try:
                yield result
            finally:
                if answer is not None:  # exited by itself: the shim deletes it meanwhile
                    with anyio.CancelScope(shield=True):
                        await self._deleted(answers, container_id)
        finally:
            os.close(log_read)
            conn.close()

    async def _stop(self, answers: _Answers, container_id: str) -> None:
        """Kill the container and see it deleted (:meth:`_deleted`); bounded, never raises."""
        with anyio.move_on_after(CLEANUP_TIMEOUT / 2):
            await self._quiet("kill", container_id, "KILL")
        with contextlib.suppress(OSError):
            answers.conn.shutdown(socket.SHUT_WR)
        await self._deleted(answers, container_id)

    async def _deleted(self, answers: _Answers, container_id: str) -> None:
        """Wait for the shim to report the container deleted; delete it here when it does not.

        Bounded by :data:`CLEANUP_TIMEOUT`, never raises.  When the deletion
        is still not confirmed, ``container_id`` goes into :attr:`unstopped`.
        """
        deleted = False
        with anyio.move_on_after(CLEANUP_TIMEOUT) as scope:
            with anyio.move_on_after(CLEANUP_TIMEOUT / 2), contextlib.suppress(OSError):
                while (answer := await answers.next()) is not None:
                    if "deleted" in answer or "error" in answer:
                        deleted = answer.get("deleted") is True
                        break
            if not deleted:
                deleted = await self._quiet("delete", "--force", container_id)
        if scope.cancelled_caught:
            log.error("could not stop container %s within %s s", container_id, CLEANUP_TIMEOUT)
        if not deleted:
            self.unstopped.add(container_id)

    async def _quiet(self, *args: str) -> bool:
        """Run ``runc ARGS``; whether it succeeded (failures are logged, never raised)."""
        try:
            result = await anyio.run_process(self._cmd(*args), check=False)
        except OSError as exc:
            log.warning("runc %s failed: %s", args[0], exc)
            return False
        if result.returncode != 0:
            log.debug("runc %s: %s", " ".join(args), result.stderr.decode(errors="replace"))
            return False
        return True

    async def list_ids(self) -> list[str]:
        """Ids of the containers in this state directory."""
        try:
            result = await anyio.run_process(self._cmd("list", "--format", "json"), check=False)
        except OSError as exc:
            raise BuildError(f"cannot run runc ({self._runc}): {exc}") from exc
        if result.returncode != 0:
            raise BuildError(f"runc list failed: {result.stderr.decode(errors='replace')}")
        listed = json.loads(result.stdout or b"null") or []
        return [str(c["id"]) for c in listed]

    async def remove_all(self) -> list[str]:
        """Kill and delete every container of this state directory (left by a crash)."""
        ids = await self.list_ids()
        for container_id in ids:
            await self._quiet("kill", container_id, "KILL")
            await self._quiet("delete", "--force", container_id)
        return ids


async def _send(control: socket.socket, message: bytes, fds: list[int]) -> None:
    """One request with its descriptors on the (non-blocking) control socket."""
    while True:
        try:
            socket.send_fds(control, [message], fds)
            return
        except BlockingIOError:
            await anyio.wait_writable(control)


async def _read(fd: int) -> bytes:
    """The next chunk of the (non-blocking) log terminal; ``b""`` at its end (``EIO`` once
    every process holding the other side has closed it)."""
    while True:
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            await anyio.wait_readable(fd)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise


def log_terminal() -> tuple[int, int]:
    """A pseudoterminal for a build's output: ``(master, slave)``, the slave in raw mode.

    Like Nix's: the builder's stdout and stderr are the slave, so it sees a
    terminal (``isatty``), and ``cfmakeraw`` settings keep its bytes as they
    are (no ``\\n`` → ``\\r\\n``, no echo, no signal characters).  Where no
    pseudoterminal can be had (no ``/dev/pts``), a pipe, with a warning:
    the build runs, its output is the same, only ``isatty`` differs.
    """
    try:
        master, slave = os.openpty()
    except OSError as exc:
        log.warning("no pseudoterminal for the build's output (%s); using a pipe", exc)
        return os.pipe()
    try:
        iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(slave)
        iflag &= ~(
            termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
            | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON
        )  # fmt: skip
        oflag &= ~termios.OPOST
        lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
        cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
        cc[termios.VMIN], cc[termios.VTIME] = 1, 0
        attrs = [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    return master, slave


class _Answers:
    """The shim's JSON lines on a build's (non-blocking) socket."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self._buffer = b""
        self._closed = False

    async def next(self) -> dict[str, object] | None:
        """The next answer; None once the shim closed the socket (or sent something else)."""
        while b"\n" not in self._buffer:
            if self._closed:
                return None
            try:
                chunk = self.conn.recv(4096)
            except BlockingIOError:
                await anyio.wait_readable(self.conn)
                continue
            if not chunk:
                self._closed = True
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            value = json.loads(line)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


_EXEC_FAILURE = "unable to start container process: exec:"


def _runc_messages(tail: tuple[bytes, ...]) -> list[str]:
    """runc's own messages among the log lines (the shim runs it with ``--log-format json``:
    its text format is coloured on a terminal)."""
    messages = []
    for line in tail:
        if not line.startswith(b"{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("msg"), str) and "level" in entry:
            messages.append(entry["msg"])
    return messages


def _raise_start_failure(error: object, tail: tuple[bytes, ...]) -> NoReturn:
    """The container did not start: the builder program is not executable, or runc failed."""
    messages = _runc_messages(tail)
    for message in messages:
        if _EXEC_FAILURE in message:
            detail = message.split(_EXEC_FAILURE, 1)[1].strip()
            raise BuildFailed(f"could not execute the builder: {detail}", log_tail=tail)
    detail = error if isinstance(error, str) else f"the shim answered {error!r}"
    last = "".join("\n  " + line.decode(errors="replace") for line in tail)
    raise BuildError(f"could not run the container: {detail}{last}")
