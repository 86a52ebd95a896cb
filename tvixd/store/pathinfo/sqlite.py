"""``sqlite:///path/file.db``: path infos in SQLite, keyed by store path digest.

Each row holds the canonical protobuf encoding of a validated path info
(``clients.store.wire.encode_path_info``) under its 20-byte store path digest.
:func:`encode` writes the same bytes directly (betterproto took ~0.5 ms a path
info, most of a push's CPU); path infos with a content address still go
through betterproto.
The database runs in WAL mode with ``synchronous=FULL``, so a committed put
survives a crash; each put is one transaction.  Reads decode and validate the
stored bytes and raise ``StorageError`` when they are corrupt or stored under
the wrong key.  They decode with ``clients.store.wire_fast`` (the result of
``wire.decode_path_info``, without betterproto's parse: ~0.45 ms → ~16 µs a
path info).

``get_encoded`` answers the stored bytes themselves, after that same check:
the gRPC ``Get`` (``tvixd.store.server``) sends them as they are instead of
re-encoding the decoded path info (``bench/lookup.py``: ~1.8 → ~1.1-1.2 ms of
daemon CPU per Get).  The check (parse + validation) is kept on this path too,
and costs as much as for ``get``: it is what keeps a corrupt row from being
served.

The table is called ``path_infos_v1`` (the schema version is in its name), so
the file may be shared with other tables, e.g. the castore's directories.

``get_many`` answers many digests in one query (and one hand-over to the
database thread): the coordinator looks up every derivation's outputs that
way (:func:`tvixd.store.pathinfo.many.get_many`); ``put_many`` puts a
derivation's outputs in one transaction.  Puts queued together (from
concurrent pushes) share a transaction too (``tvixd.sqlite.Database``'s
group commit); none is answered before its commit.

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
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from clients.castore.model import DirectoryNode, FileNode, Node, SymlinkNode
from clients.errors import InvalidRequest, StorageError
from clients.store import wire
from clients.store.model import PathInfo, store_path_digest
from clients.store.wire_fast import decode_path_info_fast
from nixcompat import nixbase32
from tvixd.castore.urls import local_path
from tvixd.protowire import varint
from tvixd.sqlite import Database

TABLE = "path_infos_v1"
LIST_PAGE_SIZE = 256
GET_MANY_CHUNK = 256
"""Digests per ``SELECT … WHERE digest IN (…)`` of :meth:`SqlitePathInfoService.get_many`."""


def _create(conn: sqlite3.Connection) -> None:
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} ("
        " digest BLOB PRIMARY KEY NOT NULL CHECK (length(digest) = 20),"
        " data BLOB NOT NULL"
        ") WITHOUT ROWID"
    )


def _field(key: int, value: bytes) -> bytes:
    """A length-delimited field, written even when empty (messages, repeated items)."""
    return bytes((key,)) + varint(len(value)) + bytes(value)


def _scalar(key: int, value: bytes) -> bytes:
    """A singular ``bytes``/``string`` field: left out when empty (proto3)."""
    return _field(key, value) if value else b""


def _number(key: int, value: int) -> bytes:
    return bytes((key,)) + varint(value) if value else b""


def _node(node: Node) -> bytes:
    """The encoded ``tvix.castore.v1.Node``."""
    if isinstance(node, FileNode):
        inner = (
            _scalar(0x0A, node.name) + _scalar(0x12, node.digest)
            + _number(0x18, node.size) + _number(0x20, int(node.executable))
        )  # fmt: skip
        return _field(0x12, inner)
    if isinstance(node, DirectoryNode):
        inner = _scalar(0x0A, node.name) + _scalar(0x12, node.digest) + _number(0x18, node.size)
        return _field(0x0A, inner)
    assert isinstance(node, SymlinkNode)
    return _field(0x1A, _scalar(0x0A, node.name) + _scalar(0x12, node.target))


def encode(info: PathInfo) -> bytes:
    """``wire.encode_path_info(info)``: the same bytes, written directly."""
    if info.ca is not None:
        return wire.encode_path_info(info)
    narinfo = [_number(0x08, info.nar_size), _scalar(0x12, info.nar_sha256)]
    narinfo += (
        _field(0x1A, _scalar(0x0A, s.name.encode()) + _scalar(0x12, s.data))
        for s in info.signatures
    )
    narinfo += (_field(0x22, r.basename.encode()) for r in info.references)
    if info.deriver is not None:
        deriver = info.deriver
        narinfo.append(
            _field(0x2A, _scalar(0x0A, deriver.name.encode()) + _scalar(0x12, deriver.digest))
        )
    parts = [_field(0x0A, _node(info.node))]
    parts += (_field(0x12, r.digest) for r in info.references)
    parts.append(_field(0x1A, b"".join(narinfo)))
    return b"".join(parts)


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
            info = decode_path_info_fast(data)
        except InvalidRequest as exc:
            raise StorageError(f"{where} is corrupt: {exc}") from exc
        if info.digest != digest:
            raise StorageError(f"{where} is corrupt: it is for {info.store_path.basename}")
        return info

    async def _row(self, digest: bytes) -> tuple[bytes, bytes | None]:
        """The checked digest and the bytes stored under it (None when absent), unchecked."""
        d = store_path_digest(digest, "digest")

        def query(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(f"SELECT data FROM {TABLE} WHERE digest = ?", (d,)).fetchone()
            return None if row is None else bytes(row[0])

        return d, await self._db.run(query)

    async def get(self, digest: bytes) -> PathInfo | None:
        d, data = await self._row(digest)
        return None if data is None else self._decode(d, data)

    async def get_encoded(self, digest: bytes) -> bytes | None:
        """The stored encoding of :meth:`get`'s path info (``wire.encode_path_info`` of it).

        None when absent.  The bytes are decoded and validated first, as by
        :meth:`get`: ``StorageError`` (naming the path) when they are corrupt
        or are a path info for another digest, so they are safe to send as
        a ``tvix.store.v1.PathInfo`` as they are.
        """
        d, data = await self._row(digest)
        if data is not None:
            self._decode(d, data)
        return data

    async def get_many(self, digests: Sequence[bytes]) -> list[PathInfo | None]:
        """:meth:`get` of each digest, in order, in one call on the database thread.

        ``InvalidRequest`` when any digest is malformed; ``StorageError`` when
        the query fails or any stored path info among them is corrupt.
        """
        wanted = [store_path_digest(digest, "digest") for digest in digests]
        distinct = list(dict.fromkeys(wanted))

        def query(conn: sqlite3.Connection) -> dict[bytes, bytes]:
            found: dict[bytes, bytes] = {}
            for start in range(0, len(distinct), GET_MANY_CHUNK):
                chunk = distinct[start : start + GET_MANY_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT digest, data FROM {TABLE} WHERE digest IN ({marks})", chunk
                ).fetchall()
                found.update((bytes(digest), bytes(data)) for digest, data in rows)
            return found

        rows = await self._db.run(query) if distinct else {}
        infos = {digest: self._decode(digest, data) for digest, data in rows.items()}
        return [infos.get(digest) for digest in wanted]

    async def put(self, info: PathInfo) -> PathInfo:
        info.validate()
        row = (info.digest, encode(info))

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(f"INSERT OR REPLACE INTO {TABLE} (digest, data) VALUES (?, ?)", row)

        await self._db.write(insert)
        return info

    async def put_many(self, infos: Sequence[PathInfo]) -> list[PathInfo]:
        """:meth:`put` of each, in one transaction (all or nothing, one fsync); validated first."""
        for info in infos:
            info.validate()
        rows = [(info.digest, encode(info)) for info in infos]

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(f"INSERT OR REPLACE INTO {TABLE} (digest, data) VALUES (?, ?)", rows)

        if rows:
            await self._db.write(insert)
        return list(infos)

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
