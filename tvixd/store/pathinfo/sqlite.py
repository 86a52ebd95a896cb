"""``sqlite:///path/file.db``: path infos in SQLite, keyed by store path digest.

Each row holds the canonical protobuf encoding of a validated path info
(``clients.store.wire.encode_path_info``) under its 20-byte store path digest.
The database runs in WAL mode with ``synchronous=FULL``, so a committed put
survives a crash; each put is one transaction.  Reads decode and validate the
stored bytes and raise ``StorageError`` when they are corrupt or stored under
the wrong key.

The table is called ``path_infos_v1`` (the schema version is in its name), so
the file may be shared with other tables, e.g. the castore's directories.

``list`` pages through the table in digest order, a bounded number of rows
per worker-thread call, so it never loads the whole table and never holds a
cursor across an ``await``; rows put while a listing runs may or may not
appear in it, rows present throughout appear exactly once.

Threading, as ``tvixd.castore.directories.sqlite``: one connection, used only
from worker threads and one call at a time (a ``CapacityLimiter(1)``), so
SQLite never blocks the event loop.  A started call is not cancellable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from clients.errors import InvalidRequest, StorageError
from clients.store import wire
from clients.store.model import PathInfo, store_path_digest
from nixcompat import nixbase32
from tvixd.castore.urls import local_path

TABLE = "path_infos_v1"
LIST_PAGE_SIZE = 256
_T = TypeVar("_T")


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} ("
            " digest BLOB PRIMARY KEY NOT NULL CHECK (length(digest) = 20),"
            " data BLOB NOT NULL"
            ") WITHOUT ROWID"
        )
    except BaseException:
        conn.close()
        raise
    return conn


class SqlitePathInfoService:
    """``PathInfoService`` in a SQLite file."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, limiter: anyio.CapacityLimiter
    ) -> None:
        """Use ``open``."""
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._limiter = limiter

    @classmethod
    async def open(cls, path: Path) -> SqlitePathInfoService:
        """Open (creating if needed) the database at ``path`` and its parent directories."""
        try:
            conn = await anyio.to_thread.run_sync(_connect, path)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open path info database {path}: {exc}") from exc
        return cls(conn, path, anyio.CapacityLimiter(1))

    @classmethod
    async def from_url(cls, url: str) -> SqlitePathInfoService:
        return await cls.open(local_path(url, "sqlite", directory=False))

    def __repr__(self) -> str:
        state = "" if self._conn is not None else ", closed"
        return f"SqlitePathInfoService({str(self._path)!r}{state})"

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        def call() -> _T:
            if self._conn is None:
                raise StorageError(f"{self!r} is closed")
            return fn(self._conn)

        try:
            return await anyio.to_thread.run_sync(call, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise StorageError(f"path info database {self._path}: {exc}") from exc

    def _decode(self, digest: bytes, data: bytes) -> PathInfo:
        where = f"path info {nixbase32.encode(digest)} in {self._path}"
        try:
            info = wire.decode_path_info(data)
        except InvalidRequest as exc:
            raise StorageError(f"{where} is corrupt: {exc}") from exc
        if info.digest != digest:
            raise StorageError(f"{where} is corrupt: it is for {info.store_path.basename}")
        return info

    async def get(self, digest: bytes) -> PathInfo | None:
        d = store_path_digest(digest, "digest")

        def query(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(f"SELECT data FROM {TABLE} WHERE digest = ?", (d,)).fetchone()
            return None if row is None else bytes(row[0])

        data = await self._run(query)
        return None if data is None else self._decode(d, data)

    async def put(self, info: PathInfo) -> PathInfo:
        info.validate()
        row = (info.digest, wire.encode_path_info(info))

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(f"INSERT OR REPLACE INTO {TABLE} (digest, data) VALUES (?, ?)", row)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self._run(insert)
        return info

    async def list(self) -> AsyncIterator[PathInfo]:
        def page(after: bytes) -> Callable[[sqlite3.Connection], list[tuple[bytes, bytes]]]:
            def query(conn: sqlite3.Connection) -> list[tuple[bytes, bytes]]:
                rows = conn.execute(
                    f"SELECT digest, data FROM {TABLE} WHERE digest > ? ORDER BY digest LIMIT ?",
                    (after, LIST_PAGE_SIZE),
                ).fetchall()
                return [(bytes(digest), bytes(data)) for digest, data in rows]

            return query

        after = b""
        while True:
            rows = await self._run(page(after))
            for digest, data in rows:
                yield self._decode(digest, data)
            if len(rows) < LIST_PAGE_SIZE:
                return
            after = rows[-1][0]

    async def close(self) -> None:
        """Close the connection once in-flight calls are done; idempotent."""

        def close() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close, limiter=self._limiter)
