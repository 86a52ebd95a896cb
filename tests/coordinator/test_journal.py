"""The journal on a real SQLite file: group commit, gapless sequences, recovery, logs, failures."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from fsm import DerivationRecord, DrvState, JobState
from tvixd.journal import (
    DerivationStateChanged,
    DrvPathsSource,
    JobInfo,
    JobSpec,
    JobStateChanged,
    Journal,
    JournalClosed,
    JournalError,
    LogLine,
    db,
)
from tvixd.journal import journal as journal_module
from tvixd.journal.db import Batch
from tvixd.journal.model import JobEvent

pytestmark = pytest.mark.asyncio

DRV = "/nix/store/0a1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r-x.drv"


def job(job_id: str, state: JobState = JobState.QUEUED) -> JobInfo:
    return JobInfo(job_id, state, JobSpec(DrvPathsSource((DRV,))), 1000, 1000, 0)


@asynccontextmanager
async def journal_at(path: Path) -> AsyncIterator[tuple[Journal, list[Batch]]]:
    """An open journal with its writer running; the batches written so far."""
    journal = await Journal.open(path)
    batches: list[Batch] = []
    journal.on_commit = batches.append
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(journal.run)
            yield journal, batches
            tg.cancel_scope.cancel()
    finally:
        await journal.close()


async def test_events_are_numbered_per_job_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with journal_at(path) as (journal, batches):
        journal.save_job(job("a"))
        journal.save_job(job("b"))
        for i in range(3):
            journal.append("a", JobStateChanged(JobState.EVALUATING, f"#{i}"), 2000 + i)
        journal.append("b", DerivationStateChanged(DRV, DrvState.LOOKUP), 3000)
        await journal.commit()
        assert [e.seq for e in batches[0].published] == [1, 2, 3, 1]
    async with journal_at(path) as (journal, _):
        recovered = await journal.load()
        assert [(u.info.id, u.info.last_seq) for u in recovered.jobs] == [("a", 3), ("b", 1)]
        events = await journal.events_after("a", 0)
        assert [(e.seq, e.body) for e in events] == [
            (i + 1, JobStateChanged(JobState.EVALUATING, f"#{i}")) for i in range(3)
        ]
        assert [e.seq for e in await journal.events_after("a", 1, limit=1)] == [2]
        assert await journal.events_after("b", 1) == []
        # The journal continues the sequence of an adopted job.
        journal.adopt_job(recovered.jobs[0].info, roots=0)
        assert journal.append("a", JobStateChanged(JobState.REALISING), 4000).seq == 4


async def test_concurrent_commits_share_transactions(tmp_path: Path) -> None:
    async with journal_at(tmp_path / "jobs.db") as (journal, batches):
        journal.save_job(job("a"))
        await journal.commit()

        async def one(i: int) -> None:
            journal.save_derivation(DerivationRecord(f"{DRV[:-6]}{i:02d}.drv"), i)
            await journal.commit()

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
        assert len(batches) <= 3  # 50 commits, at most a couple of transactions
        await journal.commit()  # nothing pending: returns at once
        assert len(batches) <= 3


async def test_only_the_newest_derivation_record_per_batch_is_written(tmp_path: Path) -> None:
    async with journal_at(tmp_path / "jobs.db") as (journal, batches):
        journal.save_derivation(DerivationRecord(DRV), 1)
        journal.save_derivation(DerivationRecord(DRV, DrvState.LOOKUP), 2)
        await journal.commit()
        assert len(batches[0].derivations) == 1
        assert len(batches[0].published_records) == 2
        assert await journal.get_derivation(DRV) == DerivationRecord(DRV, DrvState.LOOKUP)
        assert await journal.get_derivation(DRV.replace("x.drv", "y.drv")) is None


async def test_log_lines_reset_and_trim(tmp_path: Path) -> None:
    async with journal_at(tmp_path / "jobs.db") as (journal, _):
        journal.save_job(job("a"))
        old = journal.append_log(["a"], LogLine(DRV, b"old", 1), 1)
        journal.reset_log(DRV)  # a new series of attempts: the old line goes
        lines = [journal.append_log(["a"], LogLine(DRV, f"l{i}".encode(), 1), 2) for i in range(5)]
        journal.trim_log(DRV, 1, lines[2].id)  # keep l2, l3, l4
        await journal.commit()
        stored = await journal.log_lines(DRV)
        assert [s.line.line for s in stored] == [b"l2", b"l3", b"l4"]
        assert [s.id for s in await journal.log_lines(DRV, after_id=lines[3].id)] == [lines[4].id]
        events = await journal.events_after("a", 0)
        assert [e.body.line for e in events if isinstance(e.body, LogLine)] == [
            b"[tvixd: log line no longer stored (log cap reached or derivation rebuilt)]",
            *[b"[tvixd: log line no longer stored (log cap reached or derivation rebuilt)]"] * 2,
            b"l2",
            b"l3",
            b"l4",
        ]
        assert old.id < lines[0].id


async def test_final_jobs_are_not_recovered_and_keep_their_counts(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with journal_at(path) as (journal, _):
        journal.save_job(job("done"))
        done = dataclasses.replace(
            job("done", JobState.SUCCEEDED), counts={"done": 3}, updated_ms=5000
        )
        journal.save_job(done)
        journal.add_job_drv("done", DRV)
        journal.save_job(job("running", JobState.REALISING))
        journal.add_job_drv("running", DRV)
        journal.add_root(
            "running", "", DRV, [("out", "/nix/store/0a1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r-x")]
        )
        journal.save_derivation(DerivationRecord(DRV, DrvState.LOOKUP), 1)
        await journal.commit()
    async with journal_at(path) as (journal, _):
        recovered = await journal.load()
        assert [u.info.id for u in recovered.jobs] == ["running"]
        assert recovered.jobs[0].drv_paths == (DRV,)
        assert recovered.jobs[0].roots == (("", DRV, ("out",)),)
        assert recovered.derivations == {DRV: DerivationRecord(DRV, DrvState.LOOKUP)}
        stored = await journal.get_job("done")
        assert stored is not None
        assert (stored.state, dict(stored.counts), stored.updated_ms) == (
            JobState.SUCCEEDED,
            {"done": 3},
            5000,
        )
        listed = await journal.list_jobs([JobState.REALISING], limit=10)
        assert [j.id for j in listed] == ["running"]
        assert listed[0].outputs[0].output_name == "out"


async def test_a_failed_write_fails_every_commit(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with journal_at(path) as (journal, _):
        journal.save_job(job("a"))
        journal.append("a", JobStateChanged(JobState.EVALUATING), 1)
        await journal.commit()
    journal = await Journal.open(path)
    try:
        journal.adopt_job(job("a"), roots=0)  # last_seq 0: the next event collides with seq 1
        journal.append("a", JobStateChanged(JobState.REALISING), 2)

        async def write() -> None:
            async with anyio.create_task_group() as tg:
                await tg.start(journal.run)
                await journal.commit()

        with pytest.raises(ExceptionGroup) as caught:  # the writer and the commit both raise
            await write()
        errors = caught.value.exceptions
        assert {type(e) for e in errors} == {JournalError}
        assert all("UNIQUE constraint failed: events.job_id, events.seq" in str(e) for e in errors)
        with pytest.raises(JournalError, match="cannot write the journal"):
            await journal.commit()
    finally:
        await journal.close()
    # The failed transaction left nothing behind.
    async with journal_at(path) as (journal, _):
        assert [e.seq for e in await journal.events_after("a", 0)] == [1]


async def test_a_batch_past_its_deadline_fails_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's deadline per batch (``COMMIT_TIMEOUT``) fails every waiting commit."""
    monkeypatch.setattr(journal_module, "COMMIT_TIMEOUT", 0.05)
    journal = await Journal.open(tmp_path / "jobs.db")
    release = threading.Event()
    write = journal._write

    def slow_write(batch: Batch) -> None:
        release.wait(10)
        write(batch)

    monkeypatch.setattr(journal, "_write", slow_write)
    try:
        journal.save_job(job("a"))

        async def run() -> None:
            async with anyio.create_task_group() as tg:
                await tg.start(journal.run)
                await journal.commit()

        with pytest.raises(ExceptionGroup) as caught:
            await run()
        assert {type(e) for e in caught.value.exceptions} == {JournalError}
        assert all(
            str(e) == f"cannot write the journal {tmp_path / 'jobs.db'}: a batch took longer "
            "than 0.05 s"
            for e in caught.value.exceptions
        )
        with pytest.raises(JournalError, match="took longer than"):
            await journal.commit()
    finally:
        release.set()
        await journal.close()


async def test_corrupt_rows_and_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with journal_at(path) as (journal, _):
        journal.save_job(job("a"))
        await journal.commit()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE jobs SET state = 'bogus' WHERE id = 'a'")
    async with journal_at(path) as (journal, _):
        with pytest.raises(JournalError, match="jobs row 'a' cannot be read: 'bogus'"):
            await journal.get_job("a")
    (tmp_path / "not-a-db").write_bytes(b"x" * 4096)
    with pytest.raises(JournalError, match="cannot open the journal"):
        await Journal.open(tmp_path / "not-a-db")


async def test_a_stopped_writer_fails_commits_at_once_and_close_flushes(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    journal = await Journal.open(path)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(journal.run)
            tg.cancel_scope.cancel()  # the coordinator is stopping
        journal.save_job(job("late"))
        with anyio.fail_after(5), pytest.raises(JournalClosed, match="has stopped"):
            await journal.commit()
    finally:
        await journal.close()  # writes what is still open
    async with journal_at(path) as (reopened, _):
        assert await reopened.get_job("late") is not None


async def test_the_journal_runs_in_wal_mode_with_synchronous_normal(tmp_path: Path) -> None:
    """The durability contract of docs/coordinator.md: WAL, commits not fsynced (Nix's choice).

    Safe only because the store stays ``synchronous=FULL`` (tests/castore/test_sqlite.py).
    """
    from tvixd.journal import db

    def pragmas() -> tuple[object, object]:
        conn = db.connect(tmp_path / "jobs.db")
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()
            return mode, conn.execute("PRAGMA synchronous").fetchone()
        finally:
            conn.close()

    assert await anyio.to_thread.run_sync(pragmas) == (("wal",), (1,))  # 1: NORMAL


@pytest.mark.parametrize("count", [0, 1, 5, 21, 87])
async def test_a_batch_of_many_rows_is_written_whole(tmp_path: Path, count: int) -> None:
    await anyio.to_thread.run_sync(_write_and_read_back, tmp_path / "jobs.db", count)


def _write_and_read_back(path: Path, count: int) -> None:
    """A batch of ``count`` derivations, log lines and events reads back."""
    conn = db.connect(path)
    try:
        batch = Batch()
        events = []
        for i in range(count):
            drv = f"/nix/store/{i:032d}-d{i}.drv"
            batch.derivations[drv] = db.derivation_row(DerivationRecord(drv, DrvState.BUILD, 1), i)
            batch.log_lines.append((i + 1, drv, 1, f"line {i}".encode()))
            event = JobEvent(i + 1, "j", 2000 + i, DerivationStateChanged(drv, DrvState.BUILD, 1))
            events.append(event)
            batch.events.append(db.event_row(event))
        db.write(conn, batch)
        assert db.events_after(conn, "j", 0, 1000) == events
        for i in range(count):
            drv = f"/nix/store/{i:032d}-d{i}.drv"
            assert db.get_derivation(conn, drv) == DerivationRecord(drv, DrvState.BUILD, 1)
            [stored] = db.log_lines(conn, drv, 0, 10)
            assert (stored.id, stored.line.line) == (i + 1, f"line {i}".encode())
        if count:  # a newer row of a derivation replaces the older one
            drv = "/nix/store/" + "0" * 32 + "-d0.drv"
            again = Batch()
            again.derivations[drv] = db.derivation_row(DerivationRecord(drv, DrvState.PUSH, 1), 1)
            db.write(conn, again)
            assert db.get_derivation(conn, drv) == DerivationRecord(drv, DrvState.PUSH, 1)
    finally:
        conn.close()
