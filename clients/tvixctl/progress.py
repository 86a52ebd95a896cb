"""Progress of a job while ``tvixctl build`` / ``watch`` follow it.

The displays read a :class:`~clients.tvixctl.tracker.Tracker` and write to a
text stream (stderr):

* :class:`PlainProgress` — one line per thing that happened, for logs and
  pipes: ``building <drv>``, ``<name>> <log line>``, ``built <drv>``,
  ``failed <drv>: <why>``, the final job state; the lines of one batch of
  events are flushed together (one write);
* :class:`LiveProgress` — for a terminal: a compact block redrawn in place
  with ANSI escapes (at most ten times a second, and every second for the
  clock): a status line ``3 done · 1 building · 2 waiting · 0:04`` naming the
  running builds, then the last few log lines of running builds.  Finished
  and failed derivations scroll by above it.

:func:`choose_display` picks one: live only when the stream is a terminal
and ``$TERM`` is not ``dumb``.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import unicodedata
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol, TextIO

import anyio

from clients.tvixctl.formats import drv_name, job_state_name, line_text, oneof
from clients.tvixctl.tracker import TAIL_LINES, Tracker

__all__ = [
    "Display",
    "LiveProgress",
    "PlainProgress",
    "SilentProgress",
    "choose_display",
    "running_display",
]

_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")


class Display(Protocol):
    """Where progress goes."""

    def event(self, tracker: Tracker, event: Any) -> None:
        """``event`` was just applied to ``tracker``."""

    def notice(self, text: str) -> None:
        """A message for the user (a reconnect, say)."""

    def close(self, tracker: Tracker) -> None:
        """The job is followed no further: leave the screen clean."""


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return (
        f"{minutes}:{secs:02d}"
        if minutes < 60
        else f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"
    )


class PlainProgress:
    """Line-by-line progress (see the module docstring)."""

    def __init__(self, stream: TextIO, *, logs: bool = True) -> None:
        self._out = stream
        self._logs = logs
        self._flush_pending = False

    def __repr__(self) -> str:
        return f"PlainProgress({self._out!r})"

    def _say(self, text: str) -> None:
        """Write a line; flushed at the end of this turn of the event loop (at once without one).

        A batch of events arrives in one turn: its lines go out in one write, not one each.
        """
        self._out.write(text + "\n")
        if self._flush_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: nothing would flush later
            self._out.flush()
            return
        self._flush_pending = True
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        self._out.flush()

    def event(self, tracker: Tracker, event: Any) -> None:
        which, body = oneof(event, "event")
        if which == "job_state":
            state = job_state_name(body.state)
            if state in ("succeeded", "failed", "cancelled"):
                self._say(
                    f"job {tracker.job_id} {state} after {tracker.elapsed():.1f} s: "
                    f"{tracker.summary()}"
                )
            else:
                self._say(f"job {tracker.job_id}: {state}")
        elif which == "derivation_state":
            drv = tracker.drvs[body.drv_path]
            if drv.state == "build":
                again = f" (attempt {drv.attempt})" if drv.attempt > 1 else ""
                self._say(f"building {drv.drv_path}{again}")
            elif drv.state == "done" and drv.built:
                self._say(f"built {drv.drv_path}")
            elif drv.state in ("failed", "dependency_failed"):
                what = "failed" if drv.state == "failed" else "dependency failed"
                self._say(f"{what} {drv.drv_path}: {drv.detail}")
        elif which == "log" and self._logs:
            self._say(f"{drv_name(body.drv_path)}> {line_text(body.line)}")

    def notice(self, text: str) -> None:
        self._say(text)

    def close(self, tracker: Tracker) -> None:
        self._flush()


def _clean(text: str) -> str:
    return _ESCAPES.sub("", text.replace("\t", "    "))


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` terminal cells (wide characters count two)."""
    cells = 0
    for i, char in enumerate(text):
        cells += 2 if unicodedata.east_asian_width(char) in "WF" else 1
        if cells > width:
            return text[: max(0, i - 1)] + "…"
    return text


class LiveProgress:
    """The redrawn block for a terminal (see the module docstring)."""

    def __init__(self, stream: TextIO, *, width: int | None = None) -> None:
        self._out = stream
        self._width = width
        self._drawn = 0  # lines of the block now on screen
        self._pending: list[str] = []  # lines to scroll by above the block
        self._dirty = anyio.Event()
        self._tracker: Tracker | None = None
        self._tick = 0
        encoding = (getattr(stream, "encoding", None) or "ascii").lower()
        self._dot = " · " if "utf" in encoding else " | "

    def __repr__(self) -> str:
        return f"LiveProgress({self._out!r})"

    def _columns(self) -> int:
        if self._width is not None:
            return self._width
        try:
            columns = os.get_terminal_size(self._out.fileno()).columns
        except (OSError, ValueError):
            columns = 0
        return columns if columns > 0 else 80  # a pty nobody sized reports 0

    def event(self, tracker: Tracker, event: Any) -> None:
        self._tracker = tracker
        which, body = oneof(event, "event")
        if which == "derivation_state":
            drv = tracker.drvs[body.drv_path]
            if drv.state == "done" and drv.built:
                self._pending.append(f"built {drv.name}")
            elif drv.state in ("failed", "dependency_failed"):
                what = "failed" if drv.state == "failed" else "dependency failed"
                self._pending.append(f"{what} {drv.name}: {drv.detail}")
        self._dirty.set()

    def notice(self, text: str) -> None:
        self._pending.append(text)
        self._dirty.set()

    def block(self, tracker: Tracker, columns: int) -> list[str]:
        """The lines of the live block (without escapes)."""
        width = max(20, columns - 1)
        running = tracker.in_state("build", "push")
        if not tracker.drvs:
            state = "waiting in the queue" if tracker.job_state == "queued" else tracker.job_state
            status = f"{state}{self._dot}{_clock(tracker.elapsed())}"
        else:
            groups = tracker.groups()
            status = self._dot.join(f"{n} {group}" for group, n in groups.items())
            status += f"{self._dot}{_clock(tracker.elapsed())}"
            if running:
                status += f"  [{', '.join(d.name for d in running)}]"
        lines = [_fit(status, width)]
        per_build = max(1, TAIL_LINES // max(1, len(running)))
        for drv in running[:TAIL_LINES]:
            lines += [_fit(f"{drv.name}> {_clean(text)}", width) for text in drv.tail][-per_build:]
        return lines

    def _draw(self, lines: Sequence[str]) -> None:
        out = []
        if self._drawn:
            out.append(f"\r\x1b[{self._drawn}F\x1b[J")
        out += [_clean(line) + "\n" for line in self._pending]  # they scroll: may wrap
        self._pending.clear()
        out += [line + "\x1b[K\n" for line in lines]
        self._drawn = len(lines)
        self._out.write("".join(out))
        self._out.flush()

    def redraw(self) -> None:
        """Draw the block now (it is also redrawn by :meth:`run`)."""
        if self._tracker is not None:
            self._draw(self.block(self._tracker, self._columns()))
        elif self._pending:
            self._draw([])

    async def run(self) -> None:
        """Redraw when something changed (at most ten times a second) and every second."""
        self._out.write("\x1b[?25l")  # hide the cursor while drawing
        try:
            while True:
                with anyio.move_on_after(1.0):
                    await self._dirty.wait()
                self._dirty = anyio.Event()
                self.redraw()
                await anyio.sleep(0.1)
        finally:
            self._out.write("\x1b[?25h")
            self._out.flush()

    def close(self, tracker: Tracker) -> None:
        self._tracker = tracker
        if tracker.final:
            state = tracker.job_state
            self._pending.append(
                f"job {tracker.job_id} {state} after {tracker.elapsed():.1f} s: {tracker.summary()}"
            )
        self._draw([])


class SilentProgress:
    """No progress (``--quiet``); notices still go to ``stream`` (default: stderr)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._out = stream

    def __repr__(self) -> str:
        return "SilentProgress()"

    def event(self, tracker: Tracker, event: Any) -> None:
        pass

    def notice(self, text: str) -> None:
        out = self._out or sys.stderr
        out.write(text + "\n")
        out.flush()

    def close(self, tracker: Tracker) -> None:
        pass


def choose_display(stream: TextIO, *, live: bool | None = None, logs: bool = True) -> Display:
    """:class:`LiveProgress` on a terminal (unless ``TERM=dumb``), else :class:`PlainProgress`.

    ``live`` forces the choice.
    """
    if live is None:
        try:
            live = stream.isatty() and os.environ.get("TERM", "dumb") != "dumb"
        except ValueError:
            live = False
    return LiveProgress(stream) if live else PlainProgress(stream, logs=logs)


@asynccontextmanager
async def running_display(display: Display) -> AsyncIterator[Display]:
    """Run ``display``'s redraw loop (for :class:`LiveProgress`) for the duration of the block."""
    if not isinstance(display, LiveProgress):
        yield display
        return
    async with anyio.create_task_group() as tg:
        tg.start_soon(display.run)
        try:
            yield display
        finally:
            tg.cancel_scope.cancel()
