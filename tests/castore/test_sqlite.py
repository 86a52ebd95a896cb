"""``tvixd.sqlite``: the connection helper both SQLite backends (directories, path infos) use.

Real SQLite files; the autouse blockbuster fixture fails any SQLite call made
on the event loop.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from clients.errors import StorageError
from tvixd.castore.directories.sqlite import SqliteDirectoryService
from tvixd.sqlite import Database, check_schema, connect, transaction
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
