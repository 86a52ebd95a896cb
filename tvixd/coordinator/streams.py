"""The streams of the API: a job's events (``Watch``) and a derivation's build log (``FollowLog``).

Both subscribe to live items *before* reading what the journal stored, then
drop live items they already sent (by ``seq`` / log line id): nothing is
missed, nothing repeated, and the order is the journal's.  A subscriber that
falls behind (see :mod:`tvixd.coordinator.hub`) catches up from the journal.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from contextlib import aclosing

import anyio

from clients.errors import InvalidRequest, NotFound
from fsm import DerivationRecord, DrvState
from nixcompat.errors import NixCompatError
from nixcompat.storepath import StorePath
from tvixd.coordinator.hub import Hub
from tvixd.coordinator.jobdriver import Driver
from tvixd.journal.journal import Journal
from tvixd.journal.model import JobEvent, LogLine, StoredLogLine

__all__ = ["follow_log", "watch", "watch_batches"]

PAGE = 1000
"""Stored events or log lines read per journal query."""
_BUILDING = frozenset({DrvState.EVAL, DrvState.LOOKUP, DrvState.WAITING, DrvState.BUILD})


async def watch(
    driver: Driver,
    journal: Journal,
    hub: Hub[str, JobEvent],
    job_id: str,
    from_seq: int = 0,
    follow: bool = True,
) -> AsyncGenerator[JobEvent, None]:
    """Events of the job with ``seq > from_seq``; with ``follow``, live ones until it is final.

    ``NotFound`` for an unknown job; ``InvalidRequest`` when ``from_seq``
    is negative or beyond the job's last event.  (:func:`watch_batches`, one
    event at a time.)
    """
    batches = watch_batches(driver, journal, hub, job_id, from_seq, follow)
    async with aclosing(batches):
        async for batch in batches:
            for event in batch:
                yield event


async def watch_batches(
    driver: Driver,
    journal: Journal,
    hub: Hub[str, JobEvent],
    job_id: str,
    from_seq: int = 0,
    follow: bool = True,
    interval: float = 0.0,
) -> AsyncGenerator[list[JobEvent], None]:
    """:func:`watch`'s events in batches: consecutive, never empty, in ``seq`` order.

    A batch is a page of the stored events (at most :data:`PAGE`) or the
    live events of this job made durable since the last batch; the last batch
    ends with the final event.  ``interval``: live batches are at least that
    many seconds apart (what commits meanwhile joins the next batch), so a
    busy job sends one message per interval, not one per commit.  Errors as
    :func:`watch`.
    """
    if from_seq < 0:
        raise InvalidRequest(f"from_seq must not be negative, got {from_seq}")
    with hub.subscribe(job_id) as sub:
        current = journal.job(job_id) if job_id in driver.runs else None
        if current is None:
            current = await journal.get_job(job_id)
        if current is None:
            raise NotFound(f"job {job_id!r} not found")
        if from_seq > current.last_seq:
            raise InvalidRequest(
                f"from_seq {from_seq} is beyond the last event of job {job_id} ({current.last_seq})"
            )
        last = from_seq
        while True:
            sub.caught_up()
            while True:  # replay what is durable
                events = await journal.events_after(job_id, last, PAGE)
                if events:
                    batch, final = _until_final(events)
                    yield batch
                    last = batch[-1].seq
                    if final:
                        return
                if len(events) < PAGE:
                    break
            if not follow:
                return
            if job_id not in driver.runs:
                # Final: once this commit returns, the journal has every event.
                await journal.commit()
                if not await journal.events_after(job_id, last, 1):
                    return
                continue
            sent = -math.inf
            while not sub.lagged:
                if interval > 0:
                    wait = sent + interval - anyio.current_time()
                    if wait > 0:
                        await anyio.sleep(wait)
                fresh = [event for event in await sub.next_batch() if event.seq > last]
                if not fresh:
                    continue
                if fresh[0].seq != last + 1:
                    break  # cannot happen (commits are published in order): replay
                batch, final = _until_final(fresh)
                yield batch
                sent = anyio.current_time()
                last = batch[-1].seq
                if final:
                    return


def _until_final(events: list[JobEvent]) -> tuple[list[JobEvent], bool]:
    """``events`` up to and including the first final one, and whether there was one."""
    for i, event in enumerate(events):
        if event.is_final:
            return events[: i + 1], True
    return events, False


async def follow_log(
    driver: Driver,
    journal: Journal,
    hub: Hub[str, StoredLogLine | DerivationRecord],
    drv_path: str,
    follow: bool = True,
) -> AsyncGenerator[LogLine, None]:
    """The stored build log of ``drv_path``, then (with ``follow``) live lines until its build ends.

    The stored log holds the current series of attempts (the last
    ``log_cap`` bytes of each).  Following ends when the derivation leaves
    its build (``push`` or a final state); a derivation that is not being
    realised ends after its stored log.  ``NotFound`` for a derivation
    this daemon never saw.
    """
    try:
        path = StorePath.from_absolute_path(drv_path)
    except NixCompatError as exc:
        raise InvalidRequest(f"{drv_path!r} is not a store path: {exc}") from exc
    if not path.is_derivation:
        raise InvalidRequest(f"{drv_path} is not a derivation (.drv) path")
    key = path.absolute
    with hub.subscribe(key) as sub:
        if driver.graph.get(key) is None and await journal.get_derivation(key) is None:
            raise NotFound(f"derivation {key} is not known to this daemon")
        last = 0
        while True:
            sub.caught_up()
            await journal.commit()  # every line enqueued so far is now in the journal
            node = driver.graph.get(key)
            live = follow and node is not None and node.state in _BUILDING
            while True:
                lines = await journal.log_lines(key, last, PAGE)
                for stored in lines:
                    yield stored.line
                    last = stored.id
                if len(lines) < PAGE:
                    break
            if not live:
                return
            while not sub.lagged:
                for item in await sub.next_batch():
                    if isinstance(item, DerivationRecord):
                        if item.state not in _BUILDING:
                            return
                    elif item.id > last:
                        yield item.line
                        last = item.id
