"""``objectstore+file:///dir``: one read-only file per blob, ``<dir>/<hex[:2]>/<hex digest>``.

Crash safety: a blob's bytes go into a file that has no name yet (Linux
``O_TMPFILE``; where that is unsupported, a named temp file
``<dir>/tmp/put-*``), which is fsynced, then given its digest's name
(``linkat``, or ``rename``), then the fan-out directory is fsynced (``<dir>``
too when the fan-out directory is new) — all before ``put`` returns.  A
blob's name therefore only ever refers to its complete contents; a crash
leaves at most a named temp file, and those older than a day are swept when
the store opens.  Reads hash what they read and raise ``StorageError`` at the
end of a blob whose contents no longer match its name (bit rot, tampering).

Throughput with many small blobs (ingesting a tree: tens of thousands of
files, most a few KiB):

* a put of at most one chunk (:data:`CHUNK_SIZE`) is stored without a
  thread hop of its own: concurrent small puts are grouped (:class:`_Grouped`)
  and each group is one call on a worker thread that hashes every blob, skips
  the ones already present (nothing is written for them), writes the others,
  then fsyncs them, names them, and fsyncs each fan-out directory once for
  the group; :data:`PUT_CALLS` groups run at a time (the fsync parallelism),
  each on one of as many dedicated threads (a cheaper hand-over than
  ``anyio.to_thread``);
* ``stat``/``has`` and the opening of a blob run on one dedicated reader
  thread; a blob of at most :data:`SMALL_READ` bytes is read whole (and
  hashed) in that same call, so reading it back costs one hand-over;
* a larger blob streams into its temp file while being hashed; when it turns
  out to be present already, the temp file is dropped without an fsync;
  a larger blob is read one chunk per ``anyio.to_thread`` call.

All file I/O and hashing run on worker threads; a thread call is not
cancellable once started, so cancellation never tears a write (a put
cancelled while its group is being stored may still store its blob, whole),
and a failed or cancelled streaming put removes its temp file (shielded).
:meth:`ObjectStoreBlobService.close` ends the dedicated threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

import anyio
import anyio.to_thread
import blake3

from clients.castore.model import B3Digest
from clients.castore.streams import CHUNK_SIZE, BlobReader, chunks_of, rechunk
from clients.errors import StorageError
from clients.store.sink import BlobSink
from tvixd.castore.urls import local_path
from tvixd.sqlite import SerialThread, ThreadStopped

STALE_TEMP_SECONDS = 24 * 3600
#: Grouped small puts: thread calls at a time (= file fsyncs in parallel), blobs per call at most.
PUT_CALLS, PUT_GROUP = 8, 16
#: Blobs at most this large are read whole when opened (one call on the reader thread).
SMALL_READ = 64 * 1024

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_In = TypeVar("_In")
_Out = TypeVar("_Out")
_QUEUED, _PROMOTED, _TAKEN, _DONE = range(4)  # _Request.state


class _Request(Generic[_In, _Out]):
    __slots__ = ("event", "item", "outcome", "state")

    def __init__(self, item: _In) -> None:
        self.item = item
        self.state = _QUEUED
        self.event: anyio.Event | None = None
        self.outcome: _Out | Exception | None = None

    def result(self) -> _Out:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome  # type: ignore[return-value]


class _Grouped(Generic[_In, _Out]):
    """``await grouped(item)``: ``fn(items) -> outcomes`` on a worker thread, callers grouped.

    At most ``calls`` thread calls run at a time.  A caller that finds one
    free runs its own item plus up to ``size - 1`` queued ones; the others
    queue and wait.  When a call ends, its slot goes to the first queued
    caller (which then runs a group of its own), so the queue drains in
    groups however many callers there are, with one thread hop per group.
    ``fn`` returns one outcome per item: the result, or an ``Exception``
    instance raised to that item's caller alone.  ``threads``: one dedicated
    thread per concurrent call (at least ``calls``; cheaper hand-overs than
    ``anyio.to_thread``, which is used without them).
    """

    def __init__(
        self,
        fn: Callable[[list[_In]], list[_Out | Exception]],
        calls: int,
        size: int,
        threads: list[SerialThread] | None = None,
    ) -> None:
        if threads is not None and len(threads) < calls:
            raise ValueError(f"{calls} calls at a time need as many threads, not {len(threads)}")
        self._fn = fn
        self._threads = threads
        self._free = calls
        self._size = size
        self._queue: deque[_Request[_In, _Out]] = deque()

    async def __call__(self, item: _In) -> _Out:
        request: _Request[_In, _Out] = _Request(item)
        if self._free:
            self._free -= 1
        else:
            request.event = event = anyio.Event()
            self._queue.append(request)
            try:
                await event.wait()
            except BaseException:
                if request.state == _QUEUED:
                    self._queue.remove(request)
                elif request.state == _PROMOTED:
                    self._hand_over()
                raise
            if request.state == _DONE:
                return request.result()
        await self._run(request)
        return request.result()

    async def _run(self, own: _Request[_In, _Out]) -> None:
        batch = [own]
        while self._queue and len(batch) < self._size:
            batch.append(self._queue.popleft())
        for request in batch:
            request.state = _TAKEN
        outcomes: list[_Out | Exception] | None = None
        failure: BaseException | None = None
        try:
            with anyio.CancelScope(shield=True):  # the grouped callers wait for these outcomes
                outcomes = await self._call([r.item for r in batch])
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._hand_over()
            for i, request in enumerate(batch):
                request.state = _DONE
                request.outcome = (
                    outcomes[i]
                    if outcomes is not None
                    else StorageError(f"blob store failure: {failure!r}")
                )
                if request.event is not None:
                    request.event.set()

    async def _call(self, items: list[_In]) -> list[_Out | Exception]:
        if self._threads is None:
            return await anyio.to_thread.run_sync(self._fn, items)
        thread = self._threads.pop()  # one is free: calls at a time <= threads
        try:
            return await thread.run(partial(self._fn, items))
        except ThreadStopped as exc:
            raise StorageError(f"the blob store is closed: {exc}") from exc
        finally:
            self._threads.append(thread)

    def _hand_over(self) -> None:
        if self._queue:
            successor = self._queue.popleft()
            successor.state = _PROMOTED
            assert successor.event is not None
            successor.event.set()
        else:
            self._free += 1


class Temp:
    """An open temp file: anonymous (``path`` None: named by linking its fd) or named."""

    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: str | None) -> None:
        self.fd = fd
        self.path = path

    def close(self) -> None:
        """Close it; a named one that was not renamed is deleted."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def present(name: str, dir_fd: int | None = None) -> bool:
    """Whether ``name`` (relative to ``dir_fd`` when given) exists."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _sweep(tmp: Path, now: float) -> None:
    for entry in tmp.iterdir():
        if entry.name.startswith("put-") and entry.stat().st_mtime < now - STALE_TEMP_SECONDS:
            entry.unlink(missing_ok=True)


class ObjectStoreBlobService:
    """``BlobService`` keeping each blob in its own file under ``root``."""

    def __init__(self, root: Path) -> None:
        """Use ``open`` (it creates the directories); this does no I/O."""
        self._root = root
        self._tmp = root / "tmp"
        self._anonymous = False  # O_TMPFILE + linkat work here (probed by open)
        # small puts, each group on one of these (started when first needed, most recent first)
        self._putters = [SerialThread(f"blob-put-{i} {root}") for i in range(PUT_CALLS)]
        self._put_small = _Grouped(self._store_small, PUT_CALLS, PUT_GROUP, list(self._putters))
        self._reader = SerialThread(f"blob-read {root}")  # stat/has, small reads

    @classmethod
    async def open(cls, root: Path) -> ObjectStoreBlobService:
        service = cls(root)
        try:
            await anyio.to_thread.run_sync(service.prepare)
        except OSError as exc:
            raise StorageError(f"cannot open blob store at {root}: {exc}") from exc
        return service

    @classmethod
    async def from_url(cls, url: str) -> ObjectStoreBlobService:
        return await cls.open(local_path(url, "objectstore+file", directory=True))

    def prepare(self) -> None:
        """Create the directories, sweep stale temp files, probe ``O_TMPFILE`` (blocking I/O)."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        _sweep(self._tmp, time.time())
        self._anonymous = self._probe_anonymous()

    def _probe_anonymous(self) -> bool:
        """Whether an ``O_TMPFILE`` file can be made and linked here (Linux with /proc)."""
        if not hasattr(os, "O_TMPFILE"):
            return False
        probe = f"put-probe-{os.getpid()}"
        dir_fd = os.open(self._tmp, DIR_FLAGS)
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o444, dir_fd=dir_fd)
            try:
                link_fd(fd, probe, dir_fd)
            finally:
                os.close(fd)
            os.unlink(probe, dir_fd=dir_fd)
        except OSError:
            return False
        finally:
            os.close(dir_fd)
        return True

    @property
    def root(self) -> Path:
        """The store's directory."""
        return self._root

    @property
    def tmp(self) -> Path:
        """Where temp files are made (``<root>/tmp``)."""
        return self._tmp

    def open_sink(self, durability: str = "syncfs") -> BlobSink:
        """A thread-side bulk writer (``clients.store.sink``); call on a worker thread.

        Blobs it accepts are durable and named once its ``flush`` returns;
        see :mod:`tvixd.castore.blobs.sink`.
        """
        from tvixd.castore.blobs.sink import ObjectStoreSink  # the sink builds on this module

        return ObjectStoreSink(self, durability)

    def __repr__(self) -> str:
        return f"ObjectStoreBlobService({str(self._root)!r})"

    def path(self, digest: bytes) -> Path:
        """Where the blob ``digest`` lives (whether or not it is present)."""
        name = B3Digest(digest).hex()
        return self._root / name[:2] / name

    def _name(self, digest: B3Digest) -> str:
        """:meth:`path` as a string (cheaper)."""
        name = digest.hex()
        return f"{self._root}/{name[:2]}/{name}"

    async def stat(self, digest: bytes) -> int | None:
        path = self._name(B3Digest(digest))
        try:
            return await self._reader.run(partial(_size, path))
        except (OSError, ThreadStopped) as exc:
            raise StorageError(f"cannot stat blob {path}: {exc}") from exc

    async def has(self, digest: bytes) -> bool:
        return await self.stat(digest) is not None

    async def open_read(self, digest: bytes) -> BlobReader | None:
        d = B3Digest(digest)
        path = self._name(d)
        try:
            small = await self._reader.run(partial(_read_small, path))
        except FileNotFoundError:
            return None
        except (OSError, ThreadStopped) as exc:
            raise StorageError(f"cannot read blob {path}: {exc}") from exc
        if small is None:  # larger than SMALL_READ: streamed
            return await self._open_stream(d, path)
        data, actual = small

        async def whole() -> AsyncIterator[bytes]:
            if data:
                yield data
            if actual != d:
                raise StorageError(
                    f"blob file {path} is corrupt: its contents hash to {actual.hex()}"
                )

        return BlobReader(whole(), description=path)

    async def _open_stream(self, d: B3Digest, path: str) -> BlobReader | None:
        try:
            with anyio.CancelScope(shield=True):  # a cancelled open must not leak the file
                file: BinaryIO = await anyio.to_thread.run_sync(open, path, "rb")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot open blob {path}: {exc}") from exc

        hasher = blake3.blake3()

        def read() -> bytes:
            data = file.read(CHUNK_SIZE)
            hasher.update(data)
            return data

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                try:
                    data = await anyio.to_thread.run_sync(read)
                except OSError as exc:
                    raise StorageError(f"cannot read blob {path}: {exc}") from exc
                if not data:
                    break
                yield data
            if hasher.digest() != d:
                raise StorageError(
                    f"blob file {path} is corrupt: its contents hash to {hasher.hexdigest()}"
                )

        async def close() -> None:
            await anyio.to_thread.run_sync(file.close)

        return BlobReader(chunks(), close, description=path)

    async def put_bytes(self, data: bytes) -> B3Digest:
        """:meth:`put` of bytes held in memory (``put(chunks_of(data))``), without the streams."""
        if len(data) <= CHUNK_SIZE:
            return await self._put_small(bytes(data))
        return await self.put(chunks_of(data))

    async def put(self, chunks: AsyncIterable[bytes]) -> B3Digest:
        pieces = rechunk(chunks)
        try:
            first = await anext(pieces, None)
            if first is None:
                return await self._put_small(b"")
            second = await anext(pieces, None)
            if second is None:  # at most one chunk: stored with others in one thread call
                return await self._put_small(first)
            return await self._put_stream(first, second, pieces)
        finally:
            await pieces.aclose()

    # -- worker-thread helpers (every path below is relative to a directory fd)

    def fan_out(self, name: str) -> int:
        """An fd of the fan-out directory for blob ``name``, created (durably) if new."""
        path = f"{self._root}/{name[:2]}"
        try:
            return os.open(path, DIR_FLAGS)
        except FileNotFoundError:
            pass
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
            root = os.open(self._root, DIR_FLAGS)
            try:
                os.fsync(root)
            finally:
                os.close(root)
        return os.open(path, DIR_FLAGS)

    def temp(self, dir_fd: int) -> Temp:
        """An empty temp file: anonymous in ``dir_fd``'s directory, or named in ``tmp``."""
        if self._anonymous:
            flags = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
            return Temp(os.open(".", flags, 0o444, dir_fd=dir_fd), None)
        fd, path = tempfile.mkstemp(prefix="put-", dir=self._tmp)
        temp = Temp(fd, path)
        try:
            os.fchmod(fd, 0o444)
        except OSError:
            temp.close()
            raise
        return temp

    @staticmethod
    def give_name(temp: Temp, name: str, dir_fd: int) -> None:
        """Give the synced ``temp`` its final name (already present: fine, same bytes)."""
        if temp.path is None:
            with contextlib.suppress(FileExistsError):
                link_fd(temp.fd, name, dir_fd)
        else:
            os.replace(temp.path, name, dst_dir_fd=dir_fd)
            temp.path = None

    def _store_small(self, blobs: list[bytes]) -> list[B3Digest | Exception]:
        """Store a group: write each new blob, then fsync them, then name them.

        Writing all before syncing any lets the file system write shared
        metadata (inode table, bitmaps) once for several blobs; each fan-out
        directory is fsynced once for the group.
        """
        digests = [B3Digest(blake3.blake3(blob).digest()) for blob in blobs]
        outcomes: list[B3Digest | Exception] = list(digests)
        dirs: dict[str, int] = {}  # fan-out directory fds, by name
        temps: list[tuple[int, Temp, str]] = []  # (index, temp file, fan-out name)

        def fail(i: int, what: str, exc: OSError) -> None:
            outcomes[i] = StorageError(f"cannot store blob {self.path(digests[i])}: {what}: {exc}")

        try:
            for i, (digest, data) in enumerate(zip(digests, blobs, strict=True)):
                name = digest.hex()
                try:
                    if name[:2] not in dirs:
                        dirs[name[:2]] = self.fan_out(name)
                    if present(name, dirs[name[:2]]):
                        continue
                    temp = self.temp(dirs[name[:2]])
                    temps.append((i, temp, name[:2]))
                    write_all(temp.fd, data)
                except OSError as exc:
                    fail(i, "write", exc)
            for i, temp, _ in temps:
                if not isinstance(outcomes[i], Exception):
                    try:
                        os.fsync(temp.fd)
                    except OSError as exc:
                        fail(i, "fsync", exc)
            linked: set[str] = set()
            for i, temp, fan_out in temps:
                if not isinstance(outcomes[i], Exception):
                    try:
                        self.give_name(temp, digests[i].hex(), dirs[fan_out])
                        linked.add(fan_out)
                    except OSError as exc:
                        fail(i, "link", exc)
            for fan_out in linked:
                try:
                    os.fsync(dirs[fan_out])
                except OSError as exc:
                    for i, _, where in temps:
                        if where == fan_out:
                            fail(i, "directory fsync", exc)
        finally:
            for _, temp, _ in temps:
                temp.close()
            for dir_fd in dirs.values():
                os.close(dir_fd)
        return outcomes

    # -- large blobs: streamed into a temp file

    async def _put_stream(
        self, first: bytes, second: bytes, rest: AsyncIterator[bytes]
    ) -> B3Digest:
        try:
            with anyio.CancelScope(shield=True):  # a cancelled create must not leak the file
                temp = await anyio.to_thread.run_sync(self._temp_in_tmp)
        except OSError as exc:
            raise StorageError(f"cannot create a temp file in {self._tmp}: {exc}") from exc
        hasher = blake3.blake3()

        def write(data: bytes) -> None:
            write_all(temp.fd, data)
            hasher.update(data)

        try:
            await anyio.to_thread.run_sync(write, first)
            await anyio.to_thread.run_sync(write, second)
            async for piece in rest:
                await anyio.to_thread.run_sync(write, piece)
            digest = B3Digest(hasher.digest())
            await anyio.to_thread.run_sync(self._commit, temp, digest.hex())
            return digest
        except OSError as exc:
            raise StorageError(f"cannot store blob via {self._tmp}: {exc}") from exc
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                await anyio.to_thread.run_sync(temp.close)

    def _temp_in_tmp(self) -> Temp:
        dir_fd = os.open(self._tmp, DIR_FLAGS)
        try:
            return self.temp(dir_fd)
        finally:
            os.close(dir_fd)

    def _commit(self, temp: Temp, name: str) -> None:
        dir_fd = self.fan_out(name)
        try:
            if present(name, dir_fd):
                return  # the temp file is dropped, never synced
            os.fsync(temp.fd)
            self.give_name(temp, name, dir_fd)
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def close(self) -> None:
        """End the reader thread (after the calls queued); later reads and stats raise ``StorageError``.

        No file is held open between calls.
        """
        for thread in (self._reader, *self._putters):
            await thread.stop()


def _size(path: str) -> int | None:
    """The size of the file at ``path``; None when absent (reader thread)."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _read_small(path: str) -> tuple[bytes, bytes] | None:
    """(contents, their blake3 digest) of the file at ``path`` when at most :data:`SMALL_READ` bytes.

    None when it is larger (then it is streamed); ``FileNotFoundError`` when
    absent.  Reads to the end (at most ``SMALL_READ + 1`` bytes are held), so
    a file that grew since ``fstat`` is streamed too.  Runs on the reader thread.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size > SMALL_READ:
            return None
        parts: list[bytes] = []
        total = 0
        while piece := os.read(fd, SMALL_READ + 1 - total):
            parts.append(piece)
            total += len(piece)
            if total > SMALL_READ:
                return None
    finally:
        os.close(fd)
    data = parts[0] if len(parts) == 1 else b"".join(parts)  # b"" when empty
    return data, blake3.blake3(data).digest()


class _EmptyPathLink:
    """``linkat(fd, "", dir_fd, name, AT_EMPTY_PATH)`` through libc, while it works.

    It names an open file without resolving ``/proc/self/fd/N`` first (~0.2 s of
    system CPU less for 55,000 blobs).  Linux allows it only with
    ``CAP_DAC_READ_SEARCH`` (tvixd as root has it); once it failed where the
    ``/proc`` link then worked, it is not tried again.
    """

    AT_EMPTY_PATH = 0x1000

    def __init__(self) -> None:
        self.usable = False
        try:
            fn = ctypes.CDLL(None, use_errno=True).linkat
        except (OSError, AttributeError):
            return
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        fn.restype = ctypes.c_int
        self._fn = fn
        self.usable = True

    def __call__(self, fd: int, name: str, dir_fd: int) -> int:
        """0 when linked, else the errno (ctypes releases the GIL for the call)."""
        if self._fn(fd, b"", dir_fd, os.fsencode(name), self.AT_EMPTY_PATH) == 0:
            return 0
        return ctypes.get_errno()


_empty_path_link = _EmptyPathLink()


def link_fd(fd: int, name: str, dir_fd: int) -> None:
    """Name the anonymous file ``fd``: ``linkat`` with ``AT_EMPTY_PATH`` where allowed,
    else through /proc (no privilege needed).  An existing name raises FileExistsError."""
    code = _empty_path_link(fd, name, dir_fd) if _empty_path_link.usable else -1
    if code == 0:
        return
    if code == errno.EEXIST:
        raise FileExistsError(code, os.strerror(code), name)
    # a dst_dir_fd makes CPython call linkat(), with AT_SYMLINK_FOLLOW for follow_symlinks
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
    if code > 0:  # refused (no capability, a seccomp filter) where the /proc link works
        _empty_path_link.usable = False
