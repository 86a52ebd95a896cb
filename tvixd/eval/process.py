"""Running Nix's command-line tools without blocking the loop, with deadlines and bounded output.

:func:`run_lines` starts a tool, hands each stdout line to a callback as soon
as it arrives, collects stderr (bounded: the tail is kept), and returns the
exit status and stderr.  The process is killed when the deadline passes or the
caller is cancelled; it never outlives the call.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["MAX_LINE", "MAX_STDERR", "ToolFailed", "ToolResult", "run_lines"]

#: The longest stdout line accepted (store paths are short; this only bounds memory).
MAX_LINE = 1 << 20
#: The most stderr kept (the tail: Nix prints the error last).
MAX_STDERR = 1 << 20


class ToolFailed(Exception):
    """The tool could not run (missing binary), timed out, or wrote an over-long line."""


@dataclass(frozen=True)
class ToolResult:
    """Exit status and stderr (decoded, at most :data:`MAX_STDERR` bytes: the tail)."""

    returncode: int
    stderr: str


async def _collect(stream: ByteReceiveStream, sink: bytearray) -> None:
    async for chunk in stream:
        sink += chunk
        if len(sink) > 2 * MAX_STDERR:
            del sink[: len(sink) - MAX_STDERR]


async def _lines(
    stream: ByteReceiveStream, on_line: Callable[[str], Awaitable[None]], what: str
) -> None:
    buffered = BufferedByteReceiveStream(stream)
    while True:
        try:
            line = await buffered.receive_until(b"\n", MAX_LINE)
        except anyio.IncompleteRead:
            rest = buffered.buffer
            if rest:
                await on_line(rest.decode("utf-8", "surrogateescape"))
            return
        except anyio.DelimiterNotFound:
            raise ToolFailed(f"{what} printed a line longer than {MAX_LINE} bytes") from None
        await on_line(line.decode("utf-8", "surrogateescape"))


async def run_lines(
    argv: Sequence[str],
    on_line: Callable[[str], Awaitable[None]],
    *,
    time_limit: float,
    env: Mapping[str, str] | None = None,
) -> ToolResult:
    """Run ``argv``; ``await on_line(line)`` per stdout line (without the newline), in order.

    Raises :class:`ToolFailed` when the binary cannot be started or the run
    exceeds ``time_limit`` seconds (the process is killed).  Exceptions raised by
    ``on_line`` kill the process and propagate.
    """
    what = os.path.basename(argv[0])
    stderr = bytearray()
    try:
        process: Process = await anyio.open_process(
            list(argv),
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    except OSError as exc:
        raise ToolFailed(f"cannot run {argv[0]}: {exc}") from exc
    failure: Exception | None = None
    async with process:
        assert process.stdout is not None
        assert process.stderr is not None
        with anyio.move_on_after(time_limit) as scope:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_collect, process.stderr, stderr)
                    try:
                        await _lines(process.stdout, on_line, what)
                        await process.wait()
                    except Exception as exc:  # raised unwrapped below, not in an ExceptionGroup
                        failure = exc
                        _kill(process)
                        tg.cancel_scope.cancel()
            except BaseException:
                _kill(process)
                raise
        if failure is not None:
            raise failure
        if scope.cancelled_caught:
            _kill(process)
            raise ToolFailed(f"{what} did not finish within {time_limit:g} s and was killed")
        assert process.returncode is not None
        return ToolResult(process.returncode, stderr.decode("utf-8", "replace"))


def _kill(process: Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
