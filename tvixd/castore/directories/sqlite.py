"""``sqlite:///path/file.db``: directories in SQLite, keyed by digest.

Each row holds the canonical encoding of a validated directory.  The database
runs in WAL mode with ``synchronous=FULL``, so a committed put survives a
crash; a put stream is inserted in ONE transaction (all or nothing).  Reads
re-hash the stored bytes and raise ``StorageError`` when they no longer match
their key.

Threading: one connection, used only from worker threads and one call at a
time (a ``CapacityLimiter(1)``), so SQLite never blocks the event loop and
never sees concurrent use.  A started call is not cancellable: cancellation
waits for it, which keeps transactions whole.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from clients.castore import wire
from clients.castore.model import B3Digest, Directory
from clients.errors import InvalidRequest, StorageError
from tvixd.castore.directories.graph import ValidatingPutter, breadth_first
from tvixd.castore.urls import local_path

SCHEMA_VERSION = 1
_T = TypeVar("_T")


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version == 0:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS directories ("
                " digest BLOB PRIMARY KEY NOT NULL CHECK (length(digest) = 32),"
                " data BLOB NOT NULL"
                ") WITHOUT ROWID"
            )
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        elif version != SCHEMA_VERSION:
            raise StorageError(
                f"directory database {path} has schema version {version}, "
                f"this tvixd understands {SCHEMA_VERSION}"
            )
    except BaseException:
        conn.close()
        raise
    return conn


class SqliteDirectoryService:
    """``DirectoryService`` in a SQLite file."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, limiter: anyio.CapacityLimiter
    ) -> None:
        """Use ``open``."""
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._limiter = limiter

    @classmethod
    async def open(cls, path: Path) -> SqliteDirectoryService:
        """Open (creating if needed) the database at ``path`` and its parent directories."""
        try:
            conn = await anyio.to_thread.run_sync(_connect, path)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open directory database {path}: {exc}") from exc
        return cls(conn, path, anyio.CapacityLimiter(1))

    @classmethod
    async def from_url(cls, url: str) -> SqliteDirectoryService:
        return await cls.open(local_path(url, "sqlite", directory=False))

    def __repr__(self) -> str:
        state = "" if self._conn is not None else ", closed"
        return f"SqliteDirectoryService({str(self._path)!r}{state})"

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        def call() -> _T:
            if self._conn is None:
                raise StorageError(f"{self!r} is closed")
            return fn(self._conn)

        try:
            return await anyio.to_thread.run_sync(call, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise StorageError(f"directory database {self._path}: {exc}") from exc

    async def get(self, digest: bytes) -> Directory | None:
        d = B3Digest(digest)

        def query(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT data FROM directories WHERE digest = ?", (d,)).fetchone()
            return None if row is None else bytes(row[0])

        data = await self._run(query)
        if data is None:
            return None
        try:
            directory = wire.decode_directory(data)
        except InvalidRequest as exc:
            raise StorageError(f"directory {d} in {self._path} is corrupt: {exc}") from exc
        if directory.digest() != d:
            raise StorageError(
                f"directory {d} in {self._path} is corrupt: it hashes to {directory.digest()}"
            )
        return directory

    async def _stored_size(self, digest: B3Digest) -> int | None:
        directory = await self.get(digest)
        return None if directory is None else directory.size()

    async def _commit(self, directories: Sequence[Directory]) -> None:
        rows = [(d.digest(), d.encode()) for d in directories]

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR IGNORE INTO directories (digest, data) VALUES (?, ?)", rows
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self._run(insert)

    async def get_recursive(self, root: bytes) -> AsyncIterator[Directory]:
        async for directory in breadth_first(self.get, B3Digest(root)):
            yield directory

    async def put(self, directory: Directory) -> B3Digest:
        async with self.put_multiple() as putter:
            await putter.put(directory)
            return await putter.close()

    def put_multiple(self) -> ValidatingPutter:
        return ValidatingPutter(self._stored_size, self._commit, label=repr(self))

    async def close(self) -> None:
        """Close the connection once in-flight calls are done; idempotent."""

        def close() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close, limiter=self._limiter)
