"""Following a job to its end, and telling the user how it ended (``build`` and ``watch``)."""

from __future__ import annotations

import json
import sys
from collections import deque
from typing import Any, TextIO

from clients.tvixctl.coordinator import CoordinatorClient, NotFoundError, Reconnect
from clients.tvixctl.formats import event_json, line_text
from clients.tvixctl.progress import Display, running_display
from clients.tvixctl.tracker import Tracker
from proto.gen.tvixd import v1 as pb

__all__ = ["LOG_TAIL", "follow_job", "report_failure"]

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
