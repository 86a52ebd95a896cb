"""``sqlite:///path/file.db``: directories in SQLite, keyed by digest.

Each row holds the canonical encoding of a validated directory.  The database
runs in WAL mode with ``synchronous=FULL``, so a committed put survives a
crash; a put stream is inserted in ONE transaction (all or nothing).  Reads
re-hash the stored bytes and raise ``StorageError`` when they no longer match
their key.  The schema version is kept in ``PRAGMA user_version``.

Threading (``tvixd.sqlite.Database``): one connection, used only from worker
threads and one call at a time, so SQLite never blocks the event loop and
never sees concurrent use.  A started call is not cancellable: cancellation
waits for it, which keeps transactions whole.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from clients.castore import wire
from clients.castore.model import B3Digest, Directory
from clients.errors import InvalidRequest, StorageError
from tvixd.castore.directories.graph import LocalDirectoryService
from tvixd.castore.urls import local_path
from tvixd.sqlite import Database, check_schema

SCHEMA_VERSION = 1


def _create(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS directories ("
        " digest BLOB PRIMARY KEY NOT NULL CHECK (length(digest) = 32),"
        " data BLOB NOT NULL"
        ") WITHOUT ROWID"
    )


class SqliteDirectoryService(LocalDirectoryService):
    """``DirectoryService`` in a SQLite file."""

    def __init__(self, db: Database) -> None:
        """Use ``open``."""
        self._db = db
        self._path = db.path

    @classmethod
    async def open(cls, path: Path) -> SqliteDirectoryService:
        """Open (creating if needed) the database at ``path`` and its parent directories."""
        what = "directory database"

        def setup(conn: sqlite3.Connection) -> None:
            check_schema(conn, SCHEMA_VERSION, _create, what=f"{what} {path}")

        return cls(await Database.open(path, setup, what=what, owner=cls.__name__))

    @classmethod
    async def from_url(cls, url: str) -> SqliteDirectoryService:
        return await cls.open(local_path(url, "sqlite", directory=False))

    def __repr__(self) -> str:
        return repr(self._db)

    async def get(self, digest: bytes) -> Directory | None:
        d = B3Digest(digest)

        def query(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT data FROM directories WHERE digest = ?", (d,)).fetchone()
            return None if row is None else bytes(row[0])

        data = await self._db.run(query)
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
            conn.executemany("INSERT OR IGNORE INTO directories (digest, data) VALUES (?, ?)", rows)

        await self._db.write(insert)

    async def close(self) -> None:
        """Close the connection once in-flight calls are done; idempotent."""
        await self._db.close()
