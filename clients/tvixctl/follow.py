"""Following a job to its end, and telling the user how it ended (``build`` and ``watch``);
following a build log (``logs -f``).

Both resume after a dropped connection (a daemon restart too): a job's
events from the last sequence number received (the API has it), a build log
after the last line received (:func:`follow_build_log`: the API has no line
numbers, so the client re-reads the stored log and skips what it printed).
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import aclosing
from typing import Any, TextIO, cast

import anyio

from clients.tvixctl.coordinator import (
    ConnectionLost,
    CoordinatorClient,
    DaemonUnreachable,
    NotFoundError,
    Reconnect,
    Unavailable,
)
from clients.tvixctl.formats import event_json, line_text
from clients.tvixctl.progress import Display, running_display
from clients.tvixctl.tracker import Tracker
from proto.gen.tvixd import v1 as pb

__all__ = ["LOG_TAIL", "follow_build_log", "follow_job", "report_failure"]

LOG_TAIL = 25
"""Log lines shown for each failed derivation."""


async def follow_job(
    client: CoordinatorClient,
    job_id: str,
    display: Display,
    *,
    from_seq: int = 0,
    reconnect: Reconnect | None = None,
    events_out: TextIO | None = None,
) -> Tracker:
    """Watch ``job_id`` until its final event, showing progress on ``display``.

    With ``events_out``, every event is also written there as one JSON line.
    A dropped connection is resumed after the last event received (with
    ``reconnect``); the display says so once per outage.
    """
    tracker = Tracker(job_id)
    lost = False

    def on_retry(problem: str) -> None:
        nonlocal lost
        if not lost:
            display.notice(f"tvixctl: {problem}; reconnecting ...")
        lost = True

    async with running_display(display):
        try:
            async for event in client.watch(
                job_id, from_seq=from_seq, reconnect=reconnect, on_retry=on_retry
            ):
                if lost:
                    display.notice(f"tvixctl: reconnected; resuming at event {event.seq}")
                    lost = False
                tracker.apply(event)
                display.event(tracker, event)
                if events_out is not None:
                    events_out.write(json.dumps(event_json(event)) + "\n")
                    events_out.flush()
        finally:
            display.close(tracker)
    return tracker


def _line_key(line: Any) -> bytes:
    """What identifies a received log line, for checking a replayed log against it."""
    data = bytes(line.line)
    return struct.pack(">IQ", int(line.attempt), len(data)) + data


class _Outage:
    """Retry bookkeeping of one dropped connection: doubling delays, a deadline without progress."""

    def __init__(self, reconnect: Reconnect) -> None:
        self.reconnect = reconnect
        self.since = anyio.current_time()
        self.delays: Iterator[float] = reconnect.delays()

    def expired(self) -> bool:
        return anyio.current_time() - self.since >= self.reconnect.timeout


async def follow_build_log(
    client: CoordinatorClient,
    drv_path: str,
    *,
    reconnect: Reconnect | None = None,
    notice: Callable[[str], None] | None = None,
) -> AsyncIterator[Any]:
    """The build log of ``drv_path`` (``LogLine``s): what is stored, then live lines until its build ends.

    With ``reconnect``, a dropped connection, or a daemon that is unavailable
    or unreachable after the first connection, is retried (with
    ``reconnect``'s delays, for at most ``reconnect.timeout`` seconds without
    a line) and the log resumes after the last line received: the stored log
    is read again and the lines already yielded are skipped, so each line is
    yielded once across a daemon restart.  A stored log that no longer starts
    with what was yielded (trimmed to its size cap, or restarted) is
    reported through ``notice`` and followed from the same line count.
    ``notice`` also hears once per outage that it is reconnecting, and when
    it has.  Without ``reconnect``, errors are raised as
    :meth:`CoordinatorClient.follow_log` raises them.
    """
    say = notice or (lambda _: None)
    yielded = 0
    seen = hashlib.blake2b()  # of every line yielded
    outage: _Outage | None = None
    connected = False
    while True:
        replayed = 0
        replay = hashlib.blake2b()
        try:
            stream = cast(AsyncGenerator[Any, None], client.follow_log(drv_path, follow=True))
            async with aclosing(stream) as lines:
                async for line in lines:
                    connected = True
                    if replayed < yielded:
                        replayed += 1
                        replay.update(_line_key(line))
                        if replayed == yielded:
                            _resumed(say, outage, drv_path, yielded, replay, seen)
                            outage = None
                        continue
                    if outage is not None:
                        _resumed(say, outage, drv_path, yielded, replay, seen)
                        outage = None
                    replayed += 1
                    yielded += 1
                    seen.update(_line_key(line))
                    replay.update(_line_key(line))
                    yield line
            if replayed < yielded:
                say(
                    f"tvixctl: warning: the stored log of {drv_path} has {replayed} lines, "
                    f"fewer than the {yielded} printed (it was trimmed or restarted)"
                )
            return
        except (ConnectionLost, DaemonUnreachable, Unavailable) as exc:
            if reconnect is None or (isinstance(exc, DaemonUnreachable) and not connected):
                raise
            problem = str(exc).split("\n", 1)[0]
        connected = True  # it was reached once: from now on, unreachable means restarting
        if outage is None:
            outage = _Outage(reconnect)
            say(f"tvixctl: {problem}; reconnecting ...")
        elif outage.expired():
            raise ConnectionLost(
                f"gave up following the log of {drv_path} after {reconnect.timeout:g} s "
                f"without a connection to tvixd at {client.socket}: {problem}"
            )
        await anyio.sleep(next(outage.delays))


def _resumed(
    say: Callable[[str], None],
    outage: _Outage | None,
    drv_path: str,
    yielded: int,
    replay: hashlib.blake2b,
    seen: hashlib.blake2b,
) -> None:
    """The replayed log has caught up with what was yielded: say so, and whether it matches."""
    if outage is not None:
        say(f"tvixctl: reconnected; resuming after line {yielded}")
    if replay.digest() != seen.digest():
        say(
            f"tvixctl: warning: the stored log of {drv_path} no longer starts with the "
            f"{yielded} lines printed (it was trimmed or restarted); lines may be missing "
            "or repeated"
        )


async def _log_tail(client: CoordinatorClient, drv_path: str, count: int) -> list[str]:
    tail: deque[str] = deque(maxlen=count)
    try:
        async for line in client.follow_log(drv_path, follow=False):
            tail.append(line_text(line.line))
    except NotFoundError:
        return []
    return list(tail)


async def report_failure(
    client: CoordinatorClient,
    job: Any,
    tracker: Tracker,
    *,
    out: TextIO | None = None,
    tail: int = LOG_TAIL,
) -> None:
    """Why ``job`` did not succeed: its error, and each failed derivation with its log tail."""
    out = out or sys.stderr
    failed = tracker.in_state("failed")
    if job.state == pb.JobState.CANCELLED:
        reason = job.error.removeprefix("cancelled: ") or "no reason given"
        lines = [f"error: job {job.id} was cancelled ({reason})"]
    elif failed and any(job.error.startswith(drv.drv_path) for drv in failed):
        lines = [f"error: job {job.id} failed"]  # the derivation's message follows
    else:
        lines = [f"error: job {job.id} failed: {job.error or 'no reason given'}"]
    for drv in failed:
        lines.append(f"error: building {drv.drv_path} failed: {drv.detail}")
        log = await _log_tail(client, drv.drv_path, tail)
        if log:
            lines.append(f"last {len(log)} log line{'s' if len(log) != 1 else ''}:")
            lines += [f"> {text}" for text in log]
        else:
            lines.append("(it wrote no log)")
        lines.append(f"For the full log, run 'tvixctl logs {drv.drv_path}'.")
    out.write("\n".join(lines) + "\n")
    out.flush()
