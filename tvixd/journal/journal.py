"""The journal: the coordinator's durable state, written by group commit off the event loop.

Writing is split in two so that the state machines' listeners stay
synchronous and SQLite never blocks the loop:

1. *enqueue* (synchronous, on the loop): the listeners and the coordinator
   call :meth:`Journal.save_job`, :meth:`Journal.append`,
   :meth:`Journal.save_derivation`, :meth:`Journal.log_line`, …  Each adds
   rows to the open :class:`~tvixd.journal.db.Batch`; event sequence numbers
   and log line ids are assigned here, in order.
2. *commit* (``await journal.commit()``): returns once everything enqueued
   before the call is durable.  One writer task (:meth:`Journal.run`, in the
   coordinator's task group) takes the open batch, writes it in one
   transaction on the journal's writer thread (a dedicated
   :class:`~tvixd.sqlite.SerialThread`: no per-call thread pool, limiter or
   cancel scope) and starts a new batch meanwhile; every commit waiting for
   that batch (or an earlier one) then wakes up.  A burst of transitions is
   therefore one transaction.  The deadline (``COMMIT_TIMEOUT``) is the
   writer's, per batch: a batch not written in time fails the journal, and
   with it every waiting commit.

After a batch is durable, ``on_commit(batch)`` runs on the loop, in batch
order, before any waiter wakes up: the coordinator publishes the batch's
events and log lines to live watchers there, so watchers only ever see
durable events, in ``seq`` order.

The coordinator acts on a transition (starts a build, answers an RPC) only
after ``commit()`` returned.  A failed write is fatal: the writer raises
:class:`JournalError` out of :meth:`run` (which stops the coordinator), and
every pending and later ``commit()`` raises it too; on restart the daemon
resumes from the last durable transaction.  Reads use a second connection,
on a second dedicated thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from clients.errors import StorageError
from fsm import DerivationRecord, JobState
from tvixd.journal import db
from tvixd.journal.db import Batch, CorruptJournal, Recovered
from tvixd.journal.model import EventBody, JobEvent, JobInfo, LogLine, StoredLogLine
from tvixd.sqlite import SerialThread, ThreadStopped

__all__ = ["COMMIT_TIMEOUT", "Journal", "JournalClosed", "JournalError"]

COMMIT_TIMEOUT = 120.0
"""Seconds a commit may wait for its batch to be written before the journal is declared failed."""

_T = TypeVar("_T")


class _Tracked:
    """An active job's row as the journal keeps it: the last saved info, sequence and time."""

    __slots__ = ("_head", "_info", "last_seq", "spec_json", "updated_ms")

    def __init__(self, info: JobInfo, spec_json: str) -> None:
        self.spec_json = spec_json
        self.info = info
        self.last_seq = info.last_seq
        self.updated_ms = info.updated_ms

    @property
    def info(self) -> JobInfo:
        return self._info

    @info.setter
    def info(self, info: JobInfo) -> None:
        self._info = info
        self._head = db.job_row(info, self.spec_json, 0, 0)

    def snapshot(self) -> JobInfo:
        return dataclasses.replace(self._info, last_seq=self.last_seq, updated_ms=self.updated_ms)

    def row(self) -> tuple[object, ...]:
        head = self._head
        return (*head[:5], self.updated_ms, self.last_seq, head[7])


class JournalError(StorageError):
    """The journal could not be written or read; the coordinator stops (state stays consistent)."""


class JournalClosed(JournalError):
    """The journal's writer stopped (shutdown): a commit can no longer be waited for."""


class Journal:
    """One SQLite journal file; see the module docstring.  Open with :meth:`open`."""

    def __init__(
        self, path: Path, writer: sqlite3.Connection, reader: sqlite3.Connection, next_log_id: int
    ) -> None:
        self._path = path
        self._writer: sqlite3.Connection | None = writer
        self._reader: sqlite3.Connection | None = reader
        self._write_thread = SerialThread(f"journal writer {path.name}")
        self._read_thread = SerialThread(f"journal reader {path.name}")
        self._batch = Batch()
        self._open_number = 1  # the number of the batch being filled
        self._durable = 0  # the newest batch number known written
        self._wakeup = anyio.Event()
        self._written = anyio.Event()
        self._failed: JournalError | None = None
        self._stopped = False
        self._jobs: dict[str, _Tracked] = {}
        self._root_counts: dict[str, int] = {}
        self._next_log_id = next_log_id
        self.on_commit: Callable[[Batch], None] = lambda batch: None

    @classmethod
    async def open(cls, path: Path) -> Journal:
        """Open (creating if needed) the journal at ``path``."""

        def connect() -> Journal:
            writer = db.connect(path)
            try:
                reader = db.connect(path)
                next_id = writer.execute(
                    "SELECT coalesce(max(id), 0) + 1 FROM log_lines"
                ).fetchone()[0]
            except BaseException:
                writer.close()
                raise
            return cls(path, writer, reader, next_id)

        opener = SerialThread(f"journal open {path.name}")
        try:
            return await opener.run(connect)
        except (sqlite3.Error, OSError, CorruptJournal) as exc:
            raise JournalError(f"cannot open the journal {path}: {exc}") from exc
        finally:
            await opener.stop()

    def __repr__(self) -> str:
        return f"Journal({str(self._path)!r}, {len(self._jobs)} active jobs)"

    # -- enqueue (synchronous, on the event loop) -------------------------------------

    def save_job(self, info: JobInfo) -> None:
        """Record ``info`` (a new job, or a job's new state); ``last_seq`` stays the journal's own."""
        tracked = self._jobs.get(info.id)
        if tracked is None:
            tracked = self._jobs[info.id] = _Tracked(info, info.spec.to_json())
        else:
            tracked.info = info
        tracked.updated_ms = info.updated_ms
        self._batch.jobs[info.id] = tracked.row()

    def adopt_job(self, info: JobInfo, roots: int) -> None:
        """Track a job loaded from the journal (nothing is written)."""
        self._jobs[info.id] = _Tracked(info, info.spec.to_json())
        self._root_counts[info.id] = roots

    def job(self, job_id: str) -> JobInfo | None:
        """The journal's view of an active job (``last_seq`` as assigned so far)."""
        tracked = self._jobs.get(job_id)
        return None if tracked is None else tracked.snapshot()

    def forget_job(self, job_id: str) -> None:
        """Stop tracking a job that reached a final state (its rows stay)."""
        self._jobs.pop(job_id, None)
        self._root_counts.pop(job_id, None)

    def _next_event(self, job_id: str, body: EventBody, now_ms: int) -> JobEvent:
        tracked = self._jobs[job_id]
        tracked.last_seq += 1
        tracked.updated_ms = now_ms
        self._batch.jobs[job_id] = tracked.row()
        return JobEvent(tracked.last_seq, job_id, now_ms, body)

    def append(self, job_id: str, body: EventBody, now_ms: int) -> JobEvent:
        """Add the next event of ``job_id`` (``seq`` = last + 1) and bump the job's ``last_seq``."""
        event = self._next_event(job_id, body, now_ms)
        self._batch.events.append(db.event_row(event))
        self._batch.published.append(event)
        return event

    def append_log(self, job_ids: Iterable[str], line: LogLine, now_ms: int) -> StoredLogLine:
        """Store ``line`` in its derivation's log and append it to each job's event log."""
        stored = StoredLogLine(self._next_log_id, line)
        self._next_log_id += 1
        batch = self._batch
        batch.log_lines.append((stored.id, line.drv_path, line.attempt, line.line))
        batch.published_logs.append(stored)
        for job_id in job_ids:
            event = self._next_event(job_id, line, now_ms)
            batch.events.append(db.event_row(event, stored.id))
            batch.published.append(event)
        return stored

    def reset_log(self, drv_path: str) -> None:
        """Forget the stored log of ``drv_path`` (a new series of build attempts starts)."""
        self._batch.log_resets.append((drv_path, self._next_log_id))

    def trim_log(self, drv_path: str, attempt: int, below_id: int) -> None:
        """Forget that attempt's stored lines with ids below ``below_id`` (the log cap)."""
        self._batch.log_trims.append((drv_path, attempt, below_id))

    def add_root(
        self, job_id: str, attr_path: str, drv_path: str, outputs: Iterable[tuple[str, str]]
    ) -> None:
        """Record a root of a job's evaluation: ``outputs`` as (name, store path)."""
        idx = self._root_counts.get(job_id, 0)
        self._root_counts[job_id] = idx + 1
        self._batch.roots.append(db.root_row(job_id, idx, attr_path, drv_path, outputs))

    def add_job_drv(self, job_id: str, drv_path: str) -> None:
        """Record that ``job_id`` needs ``drv_path``."""
        self._batch.job_drvs.append((job_id, drv_path))

    def save_derivation(self, record: DerivationRecord, now_ms: int) -> None:
        """Record a derivation's new state (only its newest record per batch is written)."""
        self._batch.derivations[record.drv_path] = db.derivation_row(record, now_ms)
        self._batch.published_records.append(record)

    @property
    def pending(self) -> int:
        """Rows waiting in the open batch (callers producing many apply backpressure on it)."""
        return len(self._batch)

    # -- commit -------------------------------------------------------------------------

    async def commit(self) -> None:
        """Return once everything enqueued so far is durable; :class:`JournalError` if it cannot be."""
        if self._failed is not None:
            raise self._failed
        target = self._open_number if len(self._batch) else self._open_number - 1
        if self._durable >= target:
            return
        self._wakeup.set()
        # No deadline of its own: the writer's per batch fails the journal (and this wait).
        while self._durable < target:
            if self._stopped:
                raise JournalClosed(f"the writer of the journal {self._path} has stopped")
            await self._written.wait()
            if self._failed is not None:
                raise self._failed

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The writer: write batches as commits ask for them, until cancelled.

        On cancellation the batch being written completes (a started
        transaction is not abandoned); what is still open is flushed by
        :meth:`close`.  Commits waiting then, or made later, raise
        :class:`JournalClosed` (the coordinator is stopping: nothing waits
        for them to be acted upon).
        """
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                # Group commit: let the tasks woken in this turn of the event loop enqueue
                # what they have first (one transaction for all of it, not one each).
                await anyio.lowlevel.checkpoint()
                self._wakeup = anyio.Event()
                await self._write_open_batch()
        finally:
            self._stopped = True
            self._notify()

    async def _write_open_batch(self) -> None:
        batch, number = self._batch, self._open_number
        self._batch = Batch()
        self._open_number += 1
        try:
            if len(batch):
                # Shielded: a started batch is waited for (and published) even when the
                # writer is being cancelled; bounded by the deadline.  (A bare scope:
                # fail_after costs twice as much, and this runs for every batch.)
                deadline = anyio.current_time() + COMMIT_TIMEOUT
                with anyio.CancelScope(deadline=deadline, shield=True) as scope:
                    await self._write_thread.run(lambda: self._write(batch))
                if scope.cancelled_caught:
                    raise JournalError(f"a batch took longer than {COMMIT_TIMEOUT:g} s")
        except (sqlite3.Error, OSError, JournalError, ThreadStopped) as exc:
            self._failed = JournalError(f"cannot write the journal {self._path}: {exc}")
            self._notify()
            raise self._failed from exc
        self._durable = number
        try:
            self.on_commit(batch)
        finally:
            self._notify()

    def _write(self, batch: Batch) -> None:
        if self._writer is None:
            raise JournalError(f"the journal {self._path} is closed")
        db.write(self._writer, batch)

    def _notify(self) -> None:
        written, self._written = self._written, anyio.Event()
        written.set()

    async def close(self, *, flush_timeout: float = 10.0) -> None:
        """Write what is still open (bounded, shielded), then close the connections; idempotent."""
        with anyio.CancelScope(shield=True):
            if self._failed is None and self._writer is not None and len(self._batch):
                # A failure loses nothing acknowledged: nobody waited for this batch.
                with anyio.move_on_after(flush_timeout), contextlib.suppress(JournalError):
                    await self._write_open_batch()

            def close() -> None:
                for conn in (self._writer, self._reader):
                    if conn is not None:
                        conn.close()
                self._writer = self._reader = None

            with contextlib.suppress(ThreadStopped):  # closed already
                await self._write_thread.run(close)
            await self._write_thread.stop()
            await self._read_thread.stop()

    # -- reads (worker threads, second connection) ----------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        def call() -> _T:
            if self._reader is None:
                raise JournalError(f"the journal {self._path} is closed")
            return fn(self._reader)

        try:
            return await self._read_thread.run(call)
        except ThreadStopped as exc:
            raise JournalError(f"the journal {self._path} is closed") from exc
        except (sqlite3.Error, CorruptJournal) as exc:
            raise JournalError(f"cannot read the journal {self._path}: {exc}") from exc

    async def load(self) -> Recovered:
        """The unfinished jobs and their derivations' records (see :func:`db.load`)."""
        return await self._read(db.load)

    async def get_job(self, job_id: str) -> JobInfo | None:
        """The stored job (as last committed), or None."""
        return await self._read(lambda conn: db.get_job(conn, job_id))

    async def list_jobs(self, states: Iterable[JobState], limit: int) -> list[JobInfo]:
        """Stored jobs in ``states`` (all when empty), newest first, at most ``limit``."""
        wanted = tuple(states)
        return await self._read(lambda conn: db.list_jobs(conn, wanted, limit))

    async def events_after(self, job_id: str, after: int, limit: int = 1000) -> list[JobEvent]:
        """Committed events of ``job_id`` with ``seq > after``, at most ``limit``."""
        return await self._read(lambda conn: db.events_after(conn, job_id, after, limit))

    async def log_lines(
        self, drv_path: str, after_id: int = 0, limit: int = 1000
    ) -> list[StoredLogLine]:
        """Committed stored log lines of ``drv_path`` with ``id > after_id``."""
        return await self._read(lambda conn: db.log_lines(conn, drv_path, after_id, limit))

    async def get_derivation(self, drv_path: str) -> DerivationRecord | None:
        """The stored record of ``drv_path``, or None."""
        return await self._read(lambda conn: db.get_derivation(conn, drv_path))
