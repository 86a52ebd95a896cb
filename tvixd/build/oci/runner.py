"""Running one container with runc, log lines streamed as they come.

A small shim process (:mod:`tvixd.build.oci.shim`) runs ``runc create`` and
``runc start`` with one pipe as the container's stdout *and* stderr, so the
caller gets the build's output as one ordered stream, line by line (without
the ``\\n``; lines longer than :data:`MAX_LINE` are split; a last
unterminated line is delivered at the end), and the shim reports the exit
status of the container's init (pid 1 of its pid namespace).  When the init
exits, the kernel kills every other process in the namespace, so a build
cannot leave anything running.

On timeout, cancellation or a failing ``on_line``, the container is killed
(``runc kill ID KILL``), the shim is waited for (and killed with its process
group if it hangs), and ``runc delete --force ID`` removes what is left —
shielded and bounded by :data:`CLEANUP_TIMEOUT`.  Cancellation then
propagates; a timeout is reported in the result.  Every runc call uses a
private state directory (``runc --root``), so :meth:`Runc.remove_all` can
clear containers left behind by a crash.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import anyio
from anyio.abc import Process

from clients.build.errors import BuildError, BuildFailed

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


class Runc:
    """The runc binary and its private state directory."""

    def __init__(self, state_dir: Path, *, runc: str = "runc") -> None:
        self._runc = runc
        self._root = state_dir

    def __repr__(self) -> str:
        return f"Runc({self._runc}, root={self._root})"

    def _cmd(self, *args: str) -> list[str]:
        return [self._runc, "--root", str(self._root), *args]

    async def run(
        self,
        bundle_dir: Path,
        container_id: str,
        *,
        on_line: Callable[[bytes], Awaitable[None]] | None = None,
        time_limit: float | None = None,
    ) -> RunResult:
        """Run the bundle to completion (or ``time_limit`` seconds); see the module docstring.

        When the container could not be started: :class:`BuildFailed` if the
        builder program cannot be executed (runc's message says why), else
        :class:`BuildError`.
        """
        lines = _Lines(on_line)
        status_file = bundle_dir / "status.json"
        command = [sys.executable, "-I", "-S", SHIM, self._runc, str(self._root)]
        command += [str(bundle_dir), container_id, str(status_file)]
        try:
            process = await anyio.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise BuildError(f"cannot start the runc shim: {exc}") from exc
        finished = False
        try:
            with anyio.move_on_after(time_limit) as scope:
                assert process.stdout is not None
                async for chunk in process.stdout:
                    await lines.feed(chunk)
                await lines.finish()
                await process.wait()
                finished = True
        finally:
            with anyio.CancelScope(shield=True):
                if not finished:
                    await self._stop(process, container_id)
                with anyio.move_on_after(CLEANUP_TIMEOUT):
                    await process.aclose()
        tail = tuple(lines.tail)
        if scope.cancelled_caught:
            return RunResult(-1, True, tail)
        status = await anyio.to_thread.run_sync(_read_status, status_file)
        code = status.get("exit_code")
        if not isinstance(code, int):
            _raise_start_failure(status.get("error"), process.returncode, tail)
        return RunResult(code, False, tail)

    async def _stop(self, process: Process, container_id: str) -> None:
        """Kill the container and the shim, delete the container; bounded, never raises."""
        with anyio.move_on_after(CLEANUP_TIMEOUT) as scope:
            await self._quiet("kill", container_id, "KILL")
            with anyio.move_on_after(CLEANUP_TIMEOUT / 4):
                await process.wait()
            if process.returncode is None:
                _kill_group(process.pid)
                await process.wait()
            await self._quiet("delete", "--force", container_id)
        if scope.cancelled_caught:
            log.error("could not stop container %s within %s s", container_id, CLEANUP_TIMEOUT)
        if process.returncode is None:
            _kill_group(process.pid)

    async def _quiet(self, *args: str) -> None:
        try:
            result = await anyio.run_process(self._cmd(*args), check=False)
        except OSError as exc:
            log.warning("runc %s failed: %s", args[0], exc)
            return
        if result.returncode != 0:
            log.debug("runc %s: %s", " ".join(args), result.stderr.decode(errors="replace"))

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


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _read_status(path: Path) -> dict[str, object]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


_RUNC_MESSAGE = re.compile(rb'msg="((?:[^"\\]|\\.)*)"')
_EXEC_FAILURE = "unable to start container process: exec:"


def _raise_start_failure(
    error: object, returncode: int | None, tail: tuple[bytes, ...]
) -> NoReturn:
    """The container did not start: the builder program is not executable, or runc failed."""
    messages = [
        m.group(1).decode("utf-8", "replace").replace('\\"', '"')
        for line in tail
        if (m := _RUNC_MESSAGE.search(line))
    ]
    for message in messages:
        if _EXEC_FAILURE in message:
            detail = message.split(_EXEC_FAILURE, 1)[1].strip()
            raise BuildFailed(f"could not execute the builder: {detail}", log_tail=tail)
    detail = error if isinstance(error, str) else f"the shim exited with {returncode}"
    last = "".join("\n  " + line.decode(errors="replace") for line in tail)
    raise BuildError(f"could not run the container: {detail}{last}")
