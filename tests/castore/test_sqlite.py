"""``tvixd.sqlite``: the connection helper both SQLite backends (directories, path infos) use.

Real SQLite files; the autouse blockbuster fixture fails any SQLite call made
on the event loop.
"""

from __future__ import annotations

import sqlite3
import threading
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import pytest

from clients.errors import StorageError
from tvixd.castore.directories.sqlite import SqliteDirectoryService
from tvixd.sqlite import (
    Database,
    SerialThread,
    ThreadStopped,
    check_schema,
    connect,
    run_each,
    transaction,
)
from tvixd.store.pathinfo.sqlite import SqlitePathInfoService

pytestmark = pytest.mark.asyncio


def _create(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")


def _setup(conn: sqlite3.Connection) -> None:
    check_schema(conn, 3, _create, what="test database")


async def _sql(path: Path, statement: str, *args: object) -> list[tuple[object, ...]]:
    def run() -> list[tuple[object, ...]]:
        with sqlite3.connect(path) as conn:
            return list(conn.execute(statement, args).fetchall())

    return await anyio.to_thread.run_sync(run)


async def _open(path: Path) -> Database:
    return await Database.open(path, _setup, what="test database", owner="TestService")


async def test_open_creates_parents_wal_schema_and_version(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "test.db"
    db = await _open(path)
    try:
        assert db.path == path
        assert repr(db) == f"TestService({str(path)!r})"
        assert await db.run(lambda c: c.execute("PRAGMA journal_mode").fetchone()) == ("wal",)
        # synchronous=FULL is 2; the setting is per connection, so ask this one
        assert await db.run(lambda c: c.execute("PRAGMA synchronous").fetchone()) == (2,)
        assert await db.run(lambda c: c.isolation_level) is None
    finally:
        await db.close()
    assert await _sql(path, "PRAGMA user_version") == [(3,)]
    assert await _sql(path, "SELECT name FROM sqlite_master WHERE type = 'table'") == [("t",)]
    again = await _open(path)  # the expected version: accepted, nothing recreated
    await again.close()


async def test_write_is_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "test.db"
    db = await _open(path)
    try:

        def two_rows_then_fail(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t VALUES (1, 'one')")
            conn.execute("INSERT INTO t VALUES (2, 'two')")
            raise RuntimeError("fails after two rows")

        with pytest.raises(RuntimeError, match="fails after two rows"):
            await db.write(two_rows_then_fail)
        assert await db.run(lambda c: c.in_transaction) is False
        assert await _sql(path, "SELECT count(*) FROM t") == [(0,)]

        def duplicate(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t VALUES (3, 'three')")
            conn.execute("INSERT INTO t VALUES (3, 'again')")

        with pytest.raises(StorageError, match=rf"^test database {path}: UNIQUE constraint"):
            await db.write(duplicate)
        assert await _sql(path, "SELECT count(*) FROM t") == [(0,)]

        assert await db.write(lambda c: c.execute("INSERT INTO t VALUES (4, 'four')").rowcount) == 1
        assert await _sql(path, "SELECT k, v FROM t") == [(4, "four")]
    finally:
        await db.close()


async def test_transaction_outside_database(tmp_path: Path) -> None:
    def insert_then_fail(conn: sqlite3.Connection) -> None:
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (1, 'x')")
            raise ValueError("boom")

    def run() -> list[tuple[object, ...]]:
        conn = connect(tmp_path / "plain.db", _create)
        try:
            with pytest.raises(ValueError, match="boom"):
                insert_then_fail(conn)
            assert not conn.in_transaction
            with transaction(conn):
                conn.execute("INSERT INTO t VALUES (2, 'y')")
            return list(conn.execute("SELECT k FROM t").fetchall())
        finally:
            conn.close()

    assert await anyio.to_thread.run_sync(run) == [(2,)]


async def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "test.db"
    await _sql(path, "PRAGMA user_version = 7")
    with pytest.raises(
        StorageError, match=r"^test database has schema version 7, this tvixd understands 3$"
    ):
        await _open(path)


async def test_unopenable_file_names_the_database(tmp_path: Path) -> None:
    path = tmp_path / "not-a-db"
    await anyio.Path(path).write_bytes(b"this is not a SQLite file, it is long enough" * 4)
    with pytest.raises(StorageError, match=rf"^cannot open test database {path}: "):
        await _open(path)


async def test_closed_database(tmp_path: Path) -> None:
    path = tmp_path / "test.db"
    db = await _open(path)
    await db.close()
    await db.close()  # idempotent
    assert repr(db) == f"TestService({str(path)!r}, closed)"
    with pytest.raises(StorageError, match=r"^TestService\(.*, closed\) is closed$"):
        await db.run(lambda c: None)


async def test_both_backends_share_one_file(tmp_path: Path) -> None:
    """Directories (schema in user_version) and path infos (table ``path_infos_v1``) in one file."""
    path = tmp_path / "store.db"
    infos = await SqlitePathInfoService.open(path)
    directories = await SqliteDirectoryService.open(path)
    try:
        assert repr(infos) == f"SqlitePathInfoService({str(path)!r})"
        assert repr(directories) == f"SqliteDirectoryService({str(path)!r})"
        assert await infos.get(b"\0" * 20) is None
        assert await directories.get(b"\0" * 32) is None
    finally:
        await directories.close()
        await infos.close()
    assert repr(infos) == f"SqlitePathInfoService({str(path)!r}, closed)"
    tables = await _sql(path, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    assert tables == [("directories",), ("path_infos_v1",)]
    assert await _sql(path, "PRAGMA user_version") == [(1,)]
    with pytest.raises(StorageError, match=r"SqlitePathInfoService\(.*, closed\) is closed"):
        await infos.get(b"\0" * 20)


# -- SerialThread and group commit ----------------------------------------------------------


async def test_serial_thread_runs_calls_in_order_on_one_thread_in_batches() -> None:
    batches: list[int] = []

    def runner(calls: list[Any]) -> list[Any]:
        batches.append(len(calls))
        return run_each(calls)

    worker = SerialThread("test", runner)
    gate, started = threading.Event(), threading.Event()
    seen: list[tuple[int, int]] = []

    def call(i: int) -> int:
        if i == 0:
            started.set()
            gate.wait(10)
        seen.append((i, threading.get_ident()))
        return i * i

    try:
        futures = [worker.submit(partial(call, 0))]
        assert await anyio.to_thread.run_sync(started.wait, 10)
        futures += [worker.submit(partial(call, i)) for i in range(1, 11)]  # queued meanwhile
        gate.set()
        assert [await f for f in futures] == [i * i for i in range(11)]
    finally:
        await worker.stop()
    assert [i for i, _ in seen] == list(range(11))
    assert len({ident for _, ident in seen}) == 1
    assert seen[0][1] != threading.get_ident()
    assert batches[:2] == [1, 10]  # one hand-over for everything queued meanwhile


async def test_serial_thread_errors_reach_their_caller_only() -> None:
    worker = SerialThread("test")

    def boom() -> None:
        raise ValueError("boom")

    try:
        bad, good = worker.submit(boom), worker.submit(lambda: "fine")
        with pytest.raises(ValueError, match="boom"):
            await bad
        assert await good == "fine"
    finally:
        await worker.stop()


async def test_serial_thread_skips_calls_cancelled_before_they_start() -> None:
    worker = SerialThread("test")
    gate, started = threading.Event(), threading.Event()
    ran: list[str] = []
    try:

        def hold() -> bool:
            started.set()
            return gate.wait(10)

        first = worker.submit(hold)
        assert await anyio.to_thread.run_sync(started.wait, 10)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await worker.run(lambda: ran.append("cancelled"))
        assert scope.cancelled_caught
        last = worker.submit(lambda: ran.append("last"))
        gate.set()
        assert await first is True
        await last
    finally:
        await worker.stop()
    assert ran == ["last"]


async def test_serial_thread_stop_runs_what_is_queued_then_refuses() -> None:
    worker = SerialThread("test")
    ran: list[int] = []
    pending = [worker.submit(partial(ran.append, i)) for i in range(3)]
    await worker.stop()
    await worker.stop()  # idempotent
    assert all(f.done() for f in pending)
    assert ran == [0, 1, 2]
    with pytest.raises(ThreadStopped, match=r"SerialThread\('test'\) is stopped"):
        worker.submit(lambda: None)
    await SerialThread("never started").stop()


async def _hold(tg: anyio.abc.TaskGroup, db: Database, gate: threading.Event) -> None:
    """Keep ``db``'s thread busy until ``gate`` is set; returns once it is."""
    started = threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        started.set()
        gate.wait(10)

    tg.start_soon(db.run, hold)
    assert await anyio.to_thread.run_sync(started.wait, 10)


async def test_writes_queued_together_commit_together(tmp_path: Path) -> None:
    db = await _open(tmp_path / "test.db")
    statements: list[str] = []
    gate = threading.Event()
    try:
        await db.run(lambda c: c.set_trace_callback(statements.append))
        async with anyio.create_task_group() as tg:
            await _hold(tg, db, gate)
            for k in (1, 2, 3):
                tg.start_soon(
                    db.write, lambda c, k=k: c.execute("INSERT INTO t VALUES (?, 'v')", (k,))
                )
            await anyio.wait_all_tasks_blocked()  # every write waits in the queue
            gate.set()
        assert await _sql(tmp_path / "test.db", "SELECT k FROM t ORDER BY k") == [(1,), (2,), (3,)]
        commits = [s for s in statements if s.startswith(("BEGIN", "COMMIT"))]
        assert commits == ["BEGIN IMMEDIATE", "COMMIT"]  # three writes, one transaction
    finally:
        await db.close()


async def test_a_failing_write_does_not_take_its_group_down(tmp_path: Path) -> None:
    db = await _open(tmp_path / "test.db")
    gate = threading.Event()
    runs: dict[int, int] = {}

    def insert(k: int) -> Any:
        def fn(conn: sqlite3.Connection) -> int:
            runs[k] = runs.get(k, 0) + 1
            conn.execute("INSERT INTO t VALUES (?, 'v')", (k,))
            if k == 2:
                raise RuntimeError("write 2 fails after its insert")
            return k

        return fn

    results: dict[int, object] = {}

    async def write(k: int) -> None:
        try:
            results[k] = await db.write(insert(k))
        except RuntimeError as exc:
            results[k] = exc

    try:
        async with anyio.create_task_group() as tg:
            await _hold(tg, db, gate)
            for k in (1, 2, 3):
                tg.start_soon(write, k)
            await anyio.wait_all_tasks_blocked()
            gate.set()
        assert results[1] == 1
        assert results[3] == 3
        assert isinstance(results[2], RuntimeError)
        assert runs == {1: 2, 2: 2, 3: 1}  # the group up to the failure, then each on its own
        assert await _sql(tmp_path / "test.db", "SELECT k FROM t ORDER BY k") == [(1,), (3,)]
    finally:
        await db.close()


async def test_a_failing_runner_fails_its_batch_and_the_thread_goes_on() -> None:
    fail = [True]

    def runner(calls: list[Any]) -> list[Any]:
        if fail.pop() if fail else False:
            raise RuntimeError("runner bug")
        return run_each(calls)

    worker = SerialThread("test", runner)
    try:
        with pytest.raises(RuntimeError, match="runner bug"):
            await worker.run(lambda: 1)
        assert await worker.run(lambda: 2) == 2
    finally:
        await worker.stop()
