"""The journal's SQLite schema and its synchronous operations (run on worker threads only).

Tables (schema version :data:`SCHEMA_VERSION`, in ``PRAGMA user_version``):

==============  ==========================================================
``jobs``        one row per job: its spec (JSON), state, failure reason,
                times, ``last_seq`` and, once final, its frozen ``counts``
``job_roots``   the roots a job's evaluation produced, in order
``job_drvs``    which derivations each job needs (what lookup visited)
``derivations`` the latest ``fsm.DerivationRecord`` of each derivation
``events``      every job's event log, keyed by ``(job_id, seq)``
``log_lines``   stored build log lines (``id`` orders them), per derivation
                and attempt; events of kind log point at them by id
==============  ==========================================================

Everything one :class:`Batch` holds is written in one transaction, so a
crash leaves either all of it or none (``last_seq`` of a job and its events
commit together: the event log has no gaps).  WAL mode, ``synchronous=NORMAL``
(as Nix's own database): a process crash loses nothing; an OS crash or power
loss may lose the last transactions whole, never part of one (see
docs/coordinator.md, "The journal").
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsm import DerivationRecord, DrvState, JobState
from tvixd import sqlite
from tvixd.journal.model import (
    DerivationStateChanged,
    JobEvent,
    JobInfo,
    JobOutput,
    JobSpec,
    JobStateChanged,
    LogLine,
    StoredLogLine,
    in_request_order,
)

SCHEMA_VERSION = 1
DROPPED_LINE = b"[tvixd: log line no longer stored (log cap reached or derivation rebuilt)]"
"""What replay shows for a log event whose line was dropped from the stored log."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,
  failure_reason TEXT, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
  last_seq INTEGER NOT NULL, counts TEXT);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE TABLE IF NOT EXISTS job_roots (
  job_id TEXT NOT NULL, idx INTEGER NOT NULL, attr_path TEXT NOT NULL,
  drv_path TEXT NOT NULL, outputs TEXT NOT NULL, PRIMARY KEY (job_id, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS job_drvs (
  job_id TEXT NOT NULL, drv_path TEXT NOT NULL, PRIMARY KEY (job_id, drv_path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS derivations (
  drv_path TEXT PRIMARY KEY NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL,
  max_attempts INTEGER NOT NULL, failure_reason TEXT, updated_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
  job_id TEXT NOT NULL, seq INTEGER NOT NULL, time_ms INTEGER NOT NULL, kind INTEGER NOT NULL,
  state TEXT, drv_path TEXT, attempt INTEGER, detail TEXT, log_id INTEGER,
  PRIMARY KEY (job_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_lines (
  id INTEGER PRIMARY KEY NOT NULL, drv_path TEXT NOT NULL, attempt INTEGER NOT NULL,
  line BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS log_lines_by_drv ON log_lines (drv_path, id);
"""

_JOB, _DRV, _LOG = 0, 1, 2

# An upsert, not INSERT OR REPLACE: the row keeps its rowid, which orders jobs created together.
_UPSERT_JOB = (
    "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
    " state = excluded.state, failure_reason = excluded.failure_reason,"
    " updated_ms = excluded.updated_ms, last_seq = excluded.last_seq, counts = excluded.counts"
)


class CorruptJournal(Exception):
    """A stored row cannot be read back (the message names the table, key and problem)."""


@dataclass
class Batch:
    """Rows waiting to be written together; rows keyed by id keep only their newest version."""

    jobs: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    derivations: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    roots: list[tuple[Any, ...]] = field(default_factory=list)
    job_drvs: list[tuple[str, str]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    log_lines: list[tuple[int, str, int, bytes]] = field(default_factory=list)
    log_resets: list[tuple[str, int]] = field(default_factory=list)
    """``(drv_path, below_id)``: forget the drv's stored lines older than ``below_id``."""
    log_trims: list[tuple[str, int, int]] = field(default_factory=list)
    """``(drv_path, attempt, below_id)``: forget that attempt's lines older than ``below_id``."""
    published: list[JobEvent] = field(default_factory=list)
    published_logs: list[StoredLogLine] = field(default_factory=list)
    published_records: list[DerivationRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.jobs) + len(self.derivations) + len(self.roots) + len(self.job_drvs)
            + len(self.events) + len(self.log_lines) + len(self.log_resets) + len(self.log_trims)
        )  # fmt: skip


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the journal at ``path``; schema checked or created.

    ``synchronous=NORMAL``: on power loss the last commits may be lost, never
    the journal's consistency (WAL).
    """

    def setup(conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise CorruptJournal(
                f"journal {path} has schema version {version}; this tvixd reads {SCHEMA_VERSION}"
            )
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    return sqlite.connect(path, setup, busy_timeout=30, synchronous="NORMAL")


def write(conn: sqlite3.Connection, batch: Batch) -> None:
    """Write ``batch`` in one transaction (all or nothing)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, rows in (
            (_UPSERT_JOB, batch.jobs.values()),
            (
                "INSERT OR REPLACE INTO derivations VALUES (?, ?, ?, ?, ?, ?)",
                batch.derivations.values(),
            ),
            ("INSERT OR REPLACE INTO job_roots VALUES (?, ?, ?, ?, ?)", batch.roots),
            ("INSERT OR IGNORE INTO job_drvs VALUES (?, ?)", batch.job_drvs),
            ("INSERT INTO log_lines VALUES (?, ?, ?, ?)", batch.log_lines),
            ("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", batch.events),
            ("DELETE FROM log_lines WHERE drv_path = ? AND id < ?", batch.log_resets),
            (
                "DELETE FROM log_lines WHERE drv_path = ? AND attempt = ? AND id < ?",
                batch.log_trims,
            ),
        ):
            if rows:
                conn.executemany(sql, rows)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# -- encoding rows ---------------------------------------------------------------


def job_row(info: JobInfo, spec_json: str, last_seq: int, updated_ms: int) -> tuple[Any, ...]:
    """The ``jobs`` row of ``info`` (counts are stored only once the job is final)."""
    final = info.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
    counts = json.dumps(dict(info.counts), sort_keys=True) if final else None
    return (
        info.id, spec_json, info.state.value, info.error or None,
        info.created_ms, updated_ms, last_seq, counts,
    )  # fmt: skip


def derivation_row(record: DerivationRecord, now_ms: int) -> tuple[Any, ...]:
    return (
        record.drv_path, record.state.value, record.attempt, record.max_attempts,
        record.failure_reason, now_ms,
    )  # fmt: skip


def root_row(
    job_id: str, idx: int, attr_path: str, drv_path: str, outputs: Iterable[tuple[str, str]]
) -> tuple[Any, ...]:
    return (job_id, idx, attr_path, drv_path, json.dumps([list(o) for o in outputs]))


def event_row(event: JobEvent, log_id: int | None = None) -> tuple[Any, ...]:
    body = event.body
    head = (event.job_id, event.seq, event.time_ms)
    if isinstance(body, JobStateChanged):
        return (*head, _JOB, body.state.value, None, None, body.error, None)
    if isinstance(body, DerivationStateChanged):
        return (*head, _DRV, body.state.value, body.drv_path, body.attempt, body.detail, None)
    return (*head, _LOG, None, body.drv_path, body.attempt, None, log_id)


# -- reading ----------------------------------------------------------------------


def _outputs(
    conn: sqlite3.Connection, job_id: str, spec: JobSpec, state: JobState, updated_ms: int
) -> tuple[JobOutput, ...]:
    """The job's outputs (:func:`in_request_order`); for a failed or cancelled job only those
    of derivations that were done when it ended."""
    if state in (JobState.FAILED, JobState.CANCELLED):
        rows = conn.execute(
            "SELECT r.attr_path, r.drv_path, r.outputs FROM job_roots r JOIN derivations d"
            " ON d.drv_path = r.drv_path WHERE r.job_id = ? AND d.state = ? AND d.updated_ms <= ?"
            " ORDER BY r.idx",
            (job_id, DrvState.DONE.value, updated_ms),
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT attr_path, drv_path, outputs FROM job_roots WHERE job_id = ? ORDER BY idx",
            (job_id,),
        ).fetchall()
    found = (
        JobOutput(drv_path, name, path, attr_path)
        for attr_path, drv_path, outputs in rows
        for name, path in json.loads(outputs)
    )
    return in_request_order(found, spec)


def _job(conn: sqlite3.Connection, row: tuple[Any, ...]) -> JobInfo:
    job_id, spec, state, reason, created, updated, last_seq, counts = row
    try:
        job_spec, job_state = JobSpec.from_json(spec), JobState(state)
        return JobInfo(
            id=job_id,
            state=job_state,
            spec=job_spec,
            created_ms=created,
            updated_ms=updated,
            last_seq=last_seq,
            counts=json.loads(counts) if counts else {},
            outputs=_outputs(conn, job_id, job_spec, job_state, updated),
            error=reason or "",
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptJournal(f"jobs row {job_id!r} cannot be read: {exc}") from exc


_JOB_COLUMNS = "id, spec, state, failure_reason, created_ms, updated_ms, last_seq, counts"


def get_job(conn: sqlite3.Connection, job_id: str) -> JobInfo | None:
    row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else _job(conn, row)


def list_jobs(conn: sqlite3.Connection, states: Iterable[JobState], limit: int) -> list[JobInfo]:
    """Jobs in ``states`` (every state when empty), newest first, at most ``limit``."""
    wanted = [s.value for s in states]
    where = f"WHERE state IN ({', '.join('?' * len(wanted))})" if wanted else ""
    rows = conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM jobs {where} ORDER BY created_ms DESC, rowid DESC LIMIT ?",
        (*wanted, limit),
    ).fetchall()
    return [_job(conn, row) for row in rows]


@dataclass(frozen=True)
class Unfinished:
    """A job to resume: its info, the drv paths it needs, its roots' (drv path, outputs)."""

    info: JobInfo
    drv_paths: tuple[str, ...]
    roots: tuple[tuple[str, str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class Recovered:
    """Everything a restart needs: the unfinished jobs and their derivations' records."""

    jobs: tuple[Unfinished, ...]
    derivations: dict[str, DerivationRecord]


def load(conn: sqlite3.Connection) -> Recovered:
    """The state to resume from (see :class:`Recovered`)."""
    final = (JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value)
    rows = conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state NOT IN (?, ?, ?) ORDER BY created_ms, rowid",
        final,
    ).fetchall()
    jobs: list[Unfinished] = []
    needed: set[str] = set()
    for row in rows:
        info = _job(conn, row)
        drvs = tuple(
            r[0] for r in conn.execute("SELECT drv_path FROM job_drvs WHERE job_id = ?", (info.id,))
        )
        roots = tuple(
            (attr, drv, tuple(name for name, _ in json.loads(outs)))
            for attr, drv, outs in conn.execute(
                "SELECT attr_path, drv_path, outputs FROM job_roots WHERE job_id = ? ORDER BY idx",
                (info.id,),
            )
        )
        needed.update(drvs)
        jobs.append(Unfinished(info, drvs, roots))
    records = {}
    for path in sorted(needed):
        record = get_derivation(conn, path)
        if record is not None:
            records[path] = record
    return Recovered(tuple(jobs), records)


def get_derivation(conn: sqlite3.Connection, drv_path: str) -> DerivationRecord | None:
    row = conn.execute(
        "SELECT state, attempt, max_attempts, failure_reason FROM derivations WHERE drv_path = ?",
        (drv_path,),
    ).fetchone()
    if row is None:
        return None
    state, attempt, max_attempts, reason = row
    try:
        return DerivationRecord(drv_path, DrvState(state), attempt, max_attempts, reason)
    except ValueError as exc:
        raise CorruptJournal(f"derivations row {drv_path!r} cannot be read: {exc}") from exc


def events_after(conn: sqlite3.Connection, job_id: str, after: int, limit: int) -> list[JobEvent]:
    """Events of ``job_id`` with ``seq > after``, in order, at most ``limit``."""
    rows = conn.execute(
        "SELECT e.seq, e.time_ms, e.kind, e.state, e.drv_path, e.attempt, e.detail, l.line"
        " FROM events e LEFT JOIN log_lines l ON l.id = e.log_id"
        " WHERE e.job_id = ? AND e.seq > ? ORDER BY e.seq LIMIT ?",
        (job_id, after, limit),
    ).fetchall()
    events = []
    for seq, time_ms, kind, state, drv_path, attempt, detail, line in rows:
        try:
            body: JobStateChanged | DerivationStateChanged | LogLine
            if kind == _JOB:
                body = JobStateChanged(JobState(state), detail or "")
            elif kind == _DRV:
                body = DerivationStateChanged(drv_path, DrvState(state), attempt, detail or "")
            else:
                body = LogLine(drv_path, DROPPED_LINE if line is None else bytes(line), attempt)
        except ValueError as exc:
            raise CorruptJournal(f"event {job_id!r}/{seq} cannot be read: {exc}") from exc
        events.append(JobEvent(seq, job_id, time_ms, body))
    return events


def log_lines(
    conn: sqlite3.Connection, drv_path: str, after_id: int, limit: int
) -> list[StoredLogLine]:
    """Stored log lines of ``drv_path`` with ``id > after_id``, in order, at most ``limit``."""
    rows = conn.execute(
        "SELECT id, attempt, line FROM log_lines WHERE drv_path = ? AND id > ? ORDER BY id LIMIT ?",
        (drv_path, after_id, limit),
    ).fetchall()
    return [StoredLogLine(i, LogLine(drv_path, bytes(line), a)) for i, a, line in rows]
