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

Threading (``tvixd.sqlite.Database``, as ``tvixd.castore.directories.sqlite``):
one connection, used only from worker threads and one call at a time, so
SQLite never blocks the event loop.  A started call is not cancellable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from clients.errors import InvalidRequest, StorageError
from clients.store import wire
from clients.store.model import PathInfo, store_path_digest
from nixcompat import nixbase32
from tvixd.castore.urls import local_path
from tvixd.sqlite import Database

TABLE = "path_infos_v1"
LIST_PAGE_SIZE = 256


def _create(conn: sqlite3.Connection) -> None:
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} ("
        " digest BLOB PRIMARY KEY NOT NULL CHECK (length(digest) = 20),"
        " data BLOB NOT NULL"
        ") WITHOUT ROWID"
    )


class SqlitePathInfoService:
    """``PathInfoService`` in a SQLite file."""

    def __init__(self, db: Database) -> None:
        """Use ``open``."""
        self._db = db
        self._path = db.path

    @classmethod
    async def open(cls, path: Path) -> SqlitePathInfoService:
        """Open (creating if needed) the database at ``path`` and its parent directories."""
        return cls(
            await Database.open(path, _create, what="path info database", owner=cls.__name__)
        )

    @classmethod
    async def from_url(cls, url: str) -> SqlitePathInfoService:
        return await cls.open(local_path(url, "sqlite", directory=False))

    def __repr__(self) -> str:
        return repr(self._db)

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

        data = await self._db.run(query)
        return None if data is None else self._decode(d, data)

    async def put(self, info: PathInfo) -> PathInfo:
        info.validate()
        row = (info.digest, wire.encode_path_info(info))

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(f"INSERT OR REPLACE INTO {TABLE} (digest, data) VALUES (?, ?)", row)

        await self._db.write(insert)
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
            rows = await self._db.run(page(after))
            for digest, data in rows:
                yield self._decode(digest, data)
            if len(rows) < LIST_PAGE_SIZE:
                return
            after = rows[-1][0]

    async def close(self) -> None:
        """Close the connection once in-flight calls are done; idempotent."""
        await self._db.close()
