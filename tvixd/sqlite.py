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
* :class:`SerialThread` is one dedicated thread running submitted calls in
  order.  Handing a call over costs ~20 µs of CPU (a queue put, one loop
  wake-up) instead of ~45 µs for ``anyio.to_thread.run_sync`` with a
  limiter, and every call queued while the thread was busy is run before
  the loop is woken once for all of their results.
* :class:`Database` owns the connection and runs every call on its own
  :class:`SerialThread`, one call at a time, so SQLite never blocks the event
  loop and never sees concurrent use.  A started call always finishes (a
  transaction is never cut short); a caller cancelled while its call waits in
  the queue or runs gets the cancellation at once, and its call then runs
  whole or not at all.  **Group commit**: writes queued together run in one
  ``BEGIN IMMEDIATE`` … ``COMMIT`` (one fsync for all of them with
  ``synchronous=FULL``), and no caller is answered before that commit; when
  any of them fails the group is rolled back and its writes run again one
  transaction each, so each write is all or nothing on its own.
  ``sqlite3.Error`` becomes ``StorageError`` naming the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio

from clients.errors import StorageError

__all__ = ["Database", "SerialThread", "ThreadStopped", "check_schema", "connect", "transaction"]

_T = TypeVar("_T")

Setup = Callable[[sqlite3.Connection], None]
"""Prepares a fresh connection (creates or checks the schema); blocking, on a worker thread."""


def connect(
    path: Path,
    setup: Setup,
    *,
    busy_timeout: float = 10.0,
    synchronous: Literal["FULL", "NORMAL"] = "FULL",
) -> sqlite3.Connection:
    """Open ``path`` (WAL, autocommit) and run ``setup`` on it (blocking).

    ``busy_timeout``: seconds a statement waits for another process's lock;
    ``synchronous``: ``FULL`` (a commit is durable when it returns) unless
    the caller can lose its last commits on power loss (``NORMAL``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
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


class ThreadStopped(RuntimeError):
    """A call was submitted to a :class:`SerialThread` after :meth:`SerialThread.stop`."""


class _Call:
    """One submitted call: the function, its future and loop, and its groupable part.

    ``grouped``, when set, does the same work as ``fn`` inside a transaction
    someone else opened (a runner may run several of them in one).
    """

    __slots__ = ("fn", "future", "grouped", "loop")

    def __init__(
        self,
        fn: Callable[[], Any],
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
        grouped: Callable[[], Any] | None,
    ) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop
        self.grouped = grouped


_Outcome = tuple[_Call, Any, BaseException | None]
Runner = Callable[[list[_Call]], list[_Outcome]]
"""Runs a drained batch of calls on the thread; one ``(call, result, exception)`` each."""


def run_each(calls: list[_Call]) -> list[_Outcome]:
    """The default runner: each call on its own, in order (skipping those already cancelled)."""
    out: list[_Outcome] = []
    for call in calls:
        if call.future.cancelled():  # its caller went away before it started
            continue
        try:
            out.append((call, call.fn(), None))
        except BaseException as exc:  # handed to the caller
            out.append((call, None, exc))
    return out


def _settle(outcomes: list[_Outcome]) -> None:
    """On the loop: resolve the futures of a batch (those whose callers went away are skipped)."""
    for call, result, exc in outcomes:
        if call.future.done():
            continue
        if exc is None:
            call.future.set_result(result)
        else:
            call.future.set_exception(exc)


class SerialThread:
    """A dedicated thread running submitted calls one at a time, in submission order.

    The thread starts on the first call and ends at :meth:`stop` (after the
    calls queued before it).  It takes every call queued so far, runs them
    (through ``runner``: by default one after the other), and wakes each
    caller's event loop once for the whole batch.  A call whose caller was
    cancelled before the call started is not run (a runner checks
    ``future.cancelled()`` right before each call).  ``name`` names the thread.
    """

    def __init__(self, name: str, runner: Runner = run_each) -> None:
        self._name = name
        self._runner = runner
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def __repr__(self) -> str:
        return f"SerialThread({self._name!r})"

    def submit(
        self, fn: Callable[[], _T], *, grouped: Callable[[], _T] | None = None
    ) -> asyncio.Future[_T]:
        """Queue ``fn``; a future of its result on the running loop (``ThreadStopped`` once stopped).

        ``grouped``: the same work, for a runner that batches calls (see :class:`Database`).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        with self._lock:
            if self._stopped:
                raise ThreadStopped(f"{self!r} is stopped")
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
                self._thread.start()
            self._queue.put(_Call(fn, future, loop, grouped))
        return future

    async def run(self, fn: Callable[[], _T]) -> _T:
        """``fn()`` on the thread (see the class docstring for cancellation)."""
        return await self.submit(fn)

    async def stop(self) -> None:
        """Run what is queued, then end the thread; idempotent.  Waits (shielded) for the end."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            thread = self._thread
            if thread is None:
                return
            done = asyncio.get_running_loop().create_future()
            self._queue.put(_Call(lambda: None, done, asyncio.get_running_loop(), None))
            self._queue.put(None)
        with anyio.CancelScope(shield=True):
            await done

    def _main(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            first = get()
            batch = [first] if first is not None else []
            end = first is None
            while not end:
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    end = True
                else:
                    batch.append(item)
            try:
                outcomes = self._runner(batch) if batch else []
            except BaseException as exc:  # a runner's bug: no caller may wait forever
                outcomes = [(call, None, exc) for call in batch]
            by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
            for outcome in outcomes:
                by_loop.setdefault(outcome[0].loop, []).append(outcome)
            for loop, some in by_loop.items():
                # A closed loop (RuntimeError): nobody waits for these any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, some)
            if end:
                return


class Database:
    """A SQLite connection whose every use runs on its own :class:`SerialThread`.

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
        self._thread = SerialThread(f"sqlite {path.name}", self._run_batch)

    @classmethod
    async def open(
        cls, path: Path, setup: Setup, *, what: str, owner: str, busy_timeout: float = 10.0
    ) -> Database:
        """:func:`connect` on a worker thread; ``StorageError`` when the file cannot be opened.

        A ``StorageError`` raised by ``setup`` (e.g. :func:`check_schema`)
        passes through unchanged.
        """
        opener = SerialThread(f"sqlite open {path.name}")
        try:
            conn = await opener.run(lambda: connect(path, setup, busy_timeout=busy_timeout))
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open {what} {path}: {exc}") from exc
        finally:
            await opener.stop()
        return cls(conn, path, what=what, owner=owner)

    @property
    def path(self) -> Path:
        return self._path

    def __repr__(self) -> str:
        state = "" if self._conn is not None else ", closed"
        return f"{self._owner}({str(self._path)!r}{state})"

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError(f"{self!r} is closed")
        return self._conn

    def _run_batch(self, calls: list[_Call]) -> list[_Outcome]:
        """On the thread: reads one by one; consecutive writes as one group (see the module)."""
        out: list[_Outcome] = []
        i = 0
        while i < len(calls):
            j = i
            while j < len(calls) and calls[j].grouped is not None:
                j += 1
            if j - i > 1:
                out += self._write_group(calls[i:j])
                i = j
            else:
                out += run_each(calls[i : i + 1])
                i += 1
        return out

    def _write_group(self, calls: list[_Call]) -> list[_Outcome]:
        calls = [call for call in calls if not call.future.cancelled()]
        try:
            conn = self._connection()
            results = []
            with transaction(conn):
                for call in calls:
                    assert call.grouped is not None
                    results.append(call.grouped())
        except BaseException:  # each write again, on its own
            return run_each(calls)
        return [(call, result, None) for call, result in zip(calls, results, strict=True)]

    async def _submit(self, fn: Callable[[sqlite3.Connection], _T], *, write: bool) -> _T:
        def call() -> _T:
            conn = self._connection()
            if not write:
                return fn(conn)
            with transaction(conn):
                return fn(conn)

        def in_group() -> _T:  # a write whose transaction the group opened
            return fn(self._connection())

        try:
            return await self._thread.submit(call, grouped=in_group if write else None)
        except sqlite3.Error as exc:
            raise StorageError(f"{self._what} {self._path}: {exc}") from exc
        except ThreadStopped as exc:
            raise StorageError(f"{self!r} is closed") from exc

    async def run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """``fn(conn)`` on the database's thread; ``StorageError`` when closed or SQLite fails."""
        return await self._submit(fn, write=False)

    async def write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """``fn(conn)`` inside a transaction (all or nothing), committed before this returns.

        ``fn`` may run twice (a failed group is rolled back and run again one
        write at a time), so it must act on nothing but the connection.
        """
        return await self._submit(fn, write=True)

    async def close(self) -> None:
        """Close the connection once in-flight calls are done; idempotent, shielded."""

        def close() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        with anyio.CancelScope(shield=True):
            try:
                await self._thread.run(close)
            except ThreadStopped:
                return
            await self._thread.stop()
