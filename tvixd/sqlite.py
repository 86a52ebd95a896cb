"""One SQLite connection used off the event loop: what every SQLite backend shares.

* :func:`connect` opens (creating the file and its parent directories) a
  connection in autocommit mode (``isolation_level=None``: transactions are
  explicit), WAL journal, ``synchronous=FULL`` (a committed transaction
  survives a crash), then runs the backend's ``setup`` (its schema); the
  connection is closed again when anything fails.  Blocking: call it on a
  worker thread.
* :func:`transaction` wraps statements in ``BEGIN IMMEDIATE`` … ``COMMIT``,
  rolled back on any exception: all or nothing.
* :func:`check_schema` keeps a schema version in ``PRAGMA user_version``: a
  new file (version 0) gets its tables and the version in one transaction;
  any other version than the expected one is a ``StorageError``.
* :class:`Database` owns the connection and runs every call on a worker
  thread, one call at a time (a ``CapacityLimiter(1)``), so SQLite never
  blocks the event loop and never sees concurrent use.  A started call is not
  cancellable: cancellation waits for it, which keeps transactions whole.
  ``sqlite3.Error`` becomes ``StorageError`` naming the database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from clients.errors import StorageError

__all__ = ["Database", "check_schema", "connect", "transaction"]

_T = TypeVar("_T")

Setup = Callable[[sqlite3.Connection], None]
"""Prepares a fresh connection (creates or checks the schema); blocking, on a worker thread."""


def connect(path: Path, setup: Setup, *, busy_timeout: float = 10.0) -> sqlite3.Connection:
    """Open ``path`` (WAL, ``synchronous=FULL``, autocommit) and run ``setup`` on it (blocking).

    ``busy_timeout``: seconds a statement waits for another process's lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        setup(conn)
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; ``ROLLBACK`` when the block (or the commit) raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def check_schema(conn: sqlite3.Connection, version: int, create: Setup, *, what: str) -> None:
    """Create the schema of a new database, or check an existing one's ``user_version``.

    ``user_version`` 0 (a new file): ``create`` runs and the version is set, in
    one transaction.  ``version``: nothing to do.  Anything else:
    ``StorageError`` naming ``what`` (e.g. ``directory database /p``) and both
    versions.
    """
    (found,) = conn.execute("PRAGMA user_version").fetchone()
    if found == 0:
        with transaction(conn):
            create(conn)
            conn.execute(f"PRAGMA user_version = {int(version)}")
    elif found != version:
        raise StorageError(f"{what} has schema version {found}, this tvixd understands {version}")


class Database:
    """A SQLite connection whose every use runs on a worker thread, one at a time.

    ``what`` names the database in messages (``"path info database"``);
    ``owner`` is the class name of the service using it: ``repr`` is
    ``owner('/the/path')`` (``, closed`` once closed), which the service can
    use as its own.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, *, what: str, owner: str) -> None:
        """Use :meth:`open`."""
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._what = what
        self._owner = owner
        self._limiter = anyio.CapacityLimiter(1)

    @classmethod
    async def open(
        cls, path: Path, setup: Setup, *, what: str, owner: str, busy_timeout: float = 10.0
    ) -> Database:
        """:func:`connect` on a worker thread; ``StorageError`` when the file cannot be opened.

        A ``StorageError`` raised by ``setup`` (e.g. :func:`check_schema`)
        passes through unchanged.
        """
        try:
            conn = await anyio.to_thread.run_sync(
                lambda: connect(path, setup, busy_timeout=busy_timeout)
            )
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open {what} {path}: {exc}") from exc
        return cls(conn, path, what=what, owner=owner)

    @property
    def path(self) -> Path:
        return self._path

    def __repr__(self) -> str:
        state = "" if self._conn is not None else ", closed"
        return f"{self._owner}({str(self._path)!r}{state})"

    async def run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """``fn(conn)`` on a worker thread; ``StorageError`` when closed or SQLite fails."""

        def call() -> _T:
            if self._conn is None:
                raise StorageError(f"{self!r} is closed")
            return fn(self._conn)

        try:
            return await anyio.to_thread.run_sync(call, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise StorageError(f"{self._what} {self._path}: {exc}") from exc

    async def write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """:meth:`run` ``fn`` inside one :func:`transaction` (all or nothing)."""

        def in_transaction(conn: sqlite3.Connection) -> _T:
            with transaction(conn):
                return fn(conn)

        return await self.run(in_transaction)

    async def close(self) -> None:
        """Close the connection once in-flight calls are done; idempotent, shielded."""

        def close() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close, limiter=self._limiter)
