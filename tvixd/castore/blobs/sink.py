"""The objectstore's bulk writer (:class:`ObjectStoreSink`, a ``clients.store.sink.BlobSink``).

Used by the ingest from one worker thread (the caller): ``put`` hashes a
small blob, skips it when present, and hands new ones in batches of
:data:`CREATE_BATCH` to :data:`CREATORS` *creator* threads, which write each to its own
anonymous temp file (``O_TMPFILE`` in ``<dir>/tmp``; a named ``put-*`` file
there where that is unsupported) — file creation is the file system's most
expensive step here and runs beside the caller's hashing.  What differs from
``put`` is *when* blobs become durable.  Written temp files collect in a
group (at most :data:`GROUP_FILES` files or :data:`GROUP_BYTES` bytes); a
full group goes to a committer thread, which

1. makes the data of every file in the group durable — one ``syncfs(2)`` on
   the store's file system for a group of at least :data:`SYNCFS_MIN_FILES`
   files; one ``fsync`` per file for smaller groups, or everywhere when
   ``syncfs`` is unavailable or ``durability="fsync"`` was asked for;
2. only then gives each file its digest's name (``linkat`` / ``rename``),
3. and makes the names durable at once — a second ``syncfs`` (after
   per-file fsyncs: each touched fan-out directory is fsynced once), also
   when naming failed part-way — because another writer that finds a blob
   present skips it and relies on its name.

:meth:`ObjectStoreSink.flush` waits for every group — only then may
anything refer to the blobs.  So a name never refers to contents that are
not durable, a name is durable as soon as its group is committed, and a
crash or ``SIGKILL`` leaves at most unnamed temp files (named ones are swept
after a day).  The trade-off: ``syncfs`` also flushes whatever other dirty
data the file system holds; on a busy shared file system a group commit can
take longer than the group's own fsyncs would, on a quiet one it is far
cheaper (one device cache flush for a whole group).  Small ingests (a build
output of a few files) therefore stay with per-file fsyncs.

Large blobs are hashed while they are written, with ``O_DIRECT`` when the
chunks allow it (page-aligned; a short last chunk goes out padded to a page
and the file is truncated to the blob's size before it is synced): no copy
through the page cache, which costs more CPU than hashing on a 2-core
machine.  The writes run on helper threads, up to :data:`WRITES_IN_FLIGHT` chunks at a time
when the caller passes a ``release`` callback (the caller's buffer comes
back once its write and its hashing are done), so the caller hashes the
next chunks while earlier ones are still being written; ``finish`` does not
wait for the last writes — the creator thread that queues the file for its
group does, so a file only joins a group (and is synced and named) once all
its bytes are written.  A large blob found present at the end is dropped,
never synced.  At most
:data:`GROUPS_IN_FLIGHT` groups are committing at a time (open temp files
are bounded by that and the open-file limit).

Past :data:`~tvixd.castore.blobs.writer.START_AFTER` new small blobs, new small
blobs go to a writer *process* (once it is ready) instead of the creator threads (hashed here,
copied into a shared ring, created, written, grouped and named there by this
same class, with its own GIL); see :mod:`tvixd.castore.blobs.writer`.
:meth:`ObjectStoreSink.flush` waits for its groups as well.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import mmap
import os
import resource
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import blake3

from clients.castore.model import B3Digest
from clients.errors import StorageError
from clients.store.sink import Buffer, LargeBlobWriter
from tvixd.castore.blobs import writer as blob_writer
from tvixd.castore.blobs.objectstore import (
    DIR_FLAGS,
    ObjectStoreBlobService,
    Temp,
    present,
    write_all,
)

#: Files per durability group at most (lowered to fit the open-file limit), and bytes.
GROUP_FILES, GROUP_BYTES = 1024, 256 << 20
#: Groups being committed while the next one fills.
GROUPS_IN_FLIGHT = 2
#: Smaller groups are made durable file by file (``fsync``), not with a ``syncfs``:
#: a build output of a few files should not wait for the whole file system's dirty data.
SYNCFS_MIN_FILES = 64
#: Chunk writes of a large blob in flight at most (one writer thread each): one synchronous
#: ``O_DIRECT`` write at a time leaves the device's queue nearly empty.
WRITES_IN_FLIGHT = 3
#: Creator threads: creating an inode is mostly kernel CPU and lock waits; two keep pace.
CREATORS = 2
#: Small blobs per creator-thread call (count, bytes), and such calls queued at most.
CREATE_BATCH, CREATE_BATCH_BYTES, CREATES_QUEUED = 64, 1 << 20, 4
#: A fan-out directory up to this size (bytes, ``st_size``: ~850 names on ext4) is listed once
#: and looked up in memory; a larger one is asked blob by blob (``stat``).  Bounds the names
#: held to ~220000 (~35 MiB), reached with stores of ~220000 blobs.
LIST_MAX = 64 << 10
_ALIGN = 4096
log = logging.getLogger(__name__)
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def load_syncfs() -> Callable[[int], None] | None:
    """``syncfs(fd)`` through libc (``os`` has no wrapper), or None where unavailable."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int

    def syncfs(fd: int) -> None:
        if fn(fd) != 0:  # ctypes releases the GIL for the call
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs: {os.strerror(code)}")

    return syncfs


def _aligned(data: Buffer, *, whole: bool = True) -> bool:
    """Whether ``data`` starts on a page (and, with ``whole``, is a multiple of 4096 long)."""
    if not isinstance(data, memoryview) or data.readonly or (whole and len(data) % _ALIGN):
        return False
    return bool(data) and ctypes.addressof(ctypes.c_char.from_buffer(data)) % _ALIGN == 0


def _pwrite_all(fd: int, data: Buffer, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


_pages = threading.local()


def _zero_page(tail: memoryview) -> memoryview:
    """This thread's page-aligned page: ``tail`` (shorter than a page), then zeros.

    One page per thread, never closed: an ``mmap`` cannot be closed while any view
    of it lives, and a traceback of a failed write keeps the writer's views alive
    (closing it then would replace the write's own error with a ``BufferError``).
    """
    page: mmap.mmap | None = getattr(_pages, "page", None)
    if page is None:
        page = _pages.page = mmap.mmap(-1, _ALIGN)
    padded = memoryview(page)
    padded[: len(tail)] = tail
    padded[len(tail) :] = bytes(_ALIGN - len(tail))
    return padded


class _Pending:
    __slots__ = ("name", "size", "temp")

    def __init__(self, temp: Temp, name: str, size: int) -> None:
        self.temp, self.name, self.size = temp, name, size


class _Both:
    """Calls ``release`` on its second call (whichever of two threads finishes last)."""

    __slots__ = ("_lock", "_pending", "_release")

    def __init__(self, release: Callable[[], None]) -> None:
        self._release, self._pending, self._lock = release, 2, threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self._pending -= 1
            last = self._pending == 0
        if last:
            self._release()


class _Large:
    """A streamed blob: hashed here while helper threads write its chunks (several in flight)."""

    def __init__(self, sink: ObjectStoreSink, temp: Temp) -> None:
        self._sink, self._temp = sink, temp
        self._hasher = blake3.blake3()
        self._size = 0
        self._direct = False
        self._padded = False  # a tail went out padded to a page: truncate to the size at the end
        self._handed = False
        self._writing: deque[Future[None]] = deque()
        if _O_DIRECT:
            with contextlib.suppress(OSError):  # e.g. tmpfs: buffered writes then
                flags = fcntl.fcntl(temp.fd, fcntl.F_GETFL)
                fcntl.fcntl(temp.fd, fcntl.F_SETFL, flags | _O_DIRECT)
                self._direct = True

    def _buffered(self) -> None:
        flags = fcntl.fcntl(self._temp.fd, fcntl.F_GETFL)
        fcntl.fcntl(self._temp.fd, fcntl.F_SETFL, flags & ~_O_DIRECT)
        self._direct = False

    def _write(
        self, data: Buffer, offset: int, release: Callable[[], None] | None, pad: bool = False
    ) -> None:
        """Write ``data`` at ``offset`` (helper thread); direct I/O when it can.

        With ``pad`` (a chunk whose length is not a multiple of 4096, at an aligned
        offset), the whole pages go out directly and the rest through a page of
        zeros, also directly: the file is truncated to its size before it is synced.
        """
        try:
            if pad and self._direct and _aligned(data, whole=False):
                view = memoryview(data)
                head = len(view) - len(view) % _ALIGN
                padded = _zero_page(view[head:])
                try:
                    if head:
                        _pwrite_all(self._temp.fd, view[:head], offset)
                    _pwrite_all(self._temp.fd, padded, offset + head)
                    return
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self._buffered()  # the device wants another alignment: buffered below
            if self._direct and not _aligned(data):
                self._buffered()  # later writes in flight may go buffered too: still correct
            try:
                _pwrite_all(self._temp.fd, data, offset)
            except OSError as exc:
                if not (self._direct and exc.errno == errno.EINVAL):
                    raise
                self._buffered()  # the device wants another alignment: rewrite it buffered
                _pwrite_all(self._temp.fd, data, offset)
        finally:
            if release is not None:
                release()

    def _wait(self, keep: int) -> None:
        """Wait until at most ``keep`` writes are in flight; a failed one discards the blob."""
        while len(self._writing) > keep:
            try:
                self._writing.popleft().result()
            except OSError as exc:
                self.discard()
                raise StorageError(f"cannot write a blob into {self._sink.tmp}: {exc}") from exc

    def write(self, data: Buffer, release: Callable[[], None] | None = None) -> None:
        if self._temp.fd < 0 or self._handed:
            if release is not None:
                release()
            raise StorageError("write to a finished or discarded blob")
        if self._padded:  # the padding overlaps what follows: it must be on disk first
            self._wait(0)
        pad = self._direct and len(data) % _ALIGN != 0 and self._size % _ALIGN == 0
        self._padded = self._padded or pad
        done = None if release is None else _Both(release)  # the write and the hashing
        try:
            writing = self._sink.writer.submit(self._write, data, self._size, done, pad)
        except BaseException:
            if release is not None:
                release()
            raise
        self._writing.append(writing)
        self._size += len(data)
        try:
            self._hasher.update(data)
        finally:
            if done is not None:
                done()
            # without ``release`` the caller may reuse ``data`` at once: wait for this write
            self._wait(0 if release is None else WRITES_IN_FLIGHT - 1)

    def finish(self) -> B3Digest:
        """The digest; the writes still in flight are awaited by a creator thread, not here."""
        digest = B3Digest(self._hasher.digest())
        if self._sink.has(digest):
            self.discard()
            return digest
        sink = self._sink
        sink.accept(digest, self._size)
        try:
            sink.to_creator(self._add, tuple(self._writing), digest.hex())
        except BaseException:
            self.discard()
            raise
        self._writing.clear()
        self._handed = True  # the temp file belongs to the sink now
        return digest

    def _add(self, writes: tuple[Future[None], ...], name: str) -> None:
        """Creator thread: once its writes are done, the temp file joins the group."""
        try:
            for writing in writes:
                writing.result()
        except OSError as exc:
            for writing in writes:
                with contextlib.suppress(OSError):
                    writing.result()
            self._temp.close()
            raise StorageError(f"cannot write blob {name} into {self._sink.tmp}: {exc}") from exc
        if self._padded:
            try:
                os.ftruncate(self._temp.fd, self._size)
            except OSError as exc:
                self._temp.close()
                raise StorageError(
                    f"cannot truncate blob {name} in {self._sink.tmp}: {exc}"
                ) from exc
        self._sink.add(self._temp, name, self._size)

    def discard(self) -> None:
        while self._writing:  # never close the descriptor under a write in flight
            with contextlib.suppress(OSError):
                self._writing.popleft().result()
        if not self._handed and (self._temp.fd >= 0 or self._temp.path is not None):
            self._temp.close()


class ObjectStoreSink:
    """Bulk writer into an :class:`ObjectStoreBlobService` (see the module docs)."""

    def __init__(
        self,
        store: ObjectStoreBlobService,
        durability: str = "syncfs",
        *,
        writer_process: bool = True,
        drop_cache: bool = False,
    ) -> None:
        """Open it on a worker thread (this does I/O); ``durability``: ``syncfs`` or ``fsync``.

        ``writer_process``: start a :mod:`~tvixd.castore.blobs.writer` process for the small
        blobs once this sink has stored :data:`~tvixd.castore.blobs.writer.START_AFTER` itself
        (it writes them itself until the writer is ready, and for good when none can run).
        ``drop_cache``: drop the pages of every committed group from the page cache (the
        writer process asks for it: it only runs for large ingests).
        """
        if durability not in ("syncfs", "fsync"):
            raise ValueError(f"durability must be 'syncfs' or 'fsync', not {durability!r}")
        self._store = store
        self.tmp = store.tmp
        self._root = str(store.root)
        self._syncfs = load_syncfs() if durability == "syncfs" else None
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = soft if soft != resource.RLIM_INFINITY else 1 << 20
        # temp files open at most: the group filling and those committing, plus 256 fan-outs
        self._group_files = max(8, min(GROUP_FILES, (limit - 512) // (GROUPS_IN_FLIGHT + 2)))
        self._known: set[bytes] = set()
        self._listed: dict[str, frozenset[str] | None] = {}  # fan-out name -> names, or stat
        self._group: list[_Pending] = []
        self._group_bytes = 0
        self._committing: deque[Future[None]] = deque()
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="blob-commit")
        self._creator = ThreadPoolExecutor(CREATORS, thread_name_prefix="blob-create")
        self._group_lock = threading.Lock()  # the group filling is shared by the creators
        self._creating: deque[Future[None]] = deque()
        self._batch: list[tuple[bytes, str]] = []  # small blobs not yet handed to the creator
        self._batch_bytes = 0
        self.writer = ThreadPoolExecutor(WRITES_IN_FLIGHT, thread_name_prefix="blob-write")
        self._root_fd = os.open(store.root, DIR_FLAGS)
        self._tmp_fd = -1
        try:
            self._tmp_fd = os.open(self.tmp, DIR_FLAGS)
        except OSError:
            os.close(self._root_fd)
            raise
        self._blobs = self._bytes = 0
        self._durability = durability
        self._small = 0  # small blobs this sink wrote itself
        self._writer: blob_writer.WriterProcess | None = None  # said hello: takes small blobs
        self._starting: blob_writer.WriterProcess | None = None  # started, no hello yet
        self._writer_wanted = writer_process
        self._drop_cache = drop_cache

    @property
    def blobs_written(self) -> int:
        return self._blobs

    @property
    def bytes_written(self) -> int:
        return self._bytes

    @property
    def writer_pid(self) -> int | None:
        """The pid of this sink's writer process (also while it starts), if it has one."""
        process = self._writer or self._starting
        return None if process is None else process.pid

    @property
    def writer_ready(self) -> bool:
        """Whether new small blobs go to the writer process now."""
        return self._writer is not None

    def has(self, digest: bytes) -> bool:
        if digest in self._known:
            return True
        return self._present(B3Digest(digest).hex(), digest)

    def _present(self, name: str, digest: bytes) -> bool:
        """Whether blob ``name`` is stored: from the fan-out directory's listing, taken once
        per sink (a blob another writer adds later is written again and finds its name taken:
        harmless, the same bytes)."""
        fan_out = name[:2]
        try:
            names = self._listed[fan_out] if fan_out in self._listed else self._list(fan_out)
            found = (
                name in names if names is not None else present(f"{self._root}/{fan_out}/{name}")
            )
        except OSError as exc:
            raise StorageError(f"cannot look up blob {name} in {self._root}: {exc}") from exc
        if found:
            self._known.add(digest)
        return found

    def _list(self, fan_out: str) -> frozenset[str] | None:
        path = f"{self._root}/{fan_out}"
        try:
            small = os.stat(path).st_size <= LIST_MAX
            names = frozenset(os.listdir(path)) if small else None
        except FileNotFoundError:
            names = frozenset()
        self._listed[fan_out] = names
        return names

    def _temp(self) -> Temp:
        try:
            return self._store.temp(self._tmp_fd)
        except OSError as exc:
            raise StorageError(f"cannot create a temp file in {self.tmp}: {exc}") from exc

    def put(self, data: Buffer) -> B3Digest:
        digest = blake3.blake3(data).digest()
        if digest in self._known:
            return B3Digest(digest)
        name = digest.hex()
        if self._present(name, digest):
            return B3Digest(digest)
        self.accept(digest, len(data))
        if self._writer is not None or self._writer_now():
            assert self._writer is not None
            if len(data) <= self._writer.max_blob:
                self._writer.put(data, digest)
                return B3Digest(digest)
        self._small += 1
        self._batch.append((data if isinstance(data, bytes) else bytes(data), name))
        self._batch_bytes += len(data)
        if len(self._batch) >= CREATE_BATCH or self._batch_bytes >= CREATE_BATCH_BYTES:
            self._hand_over()
        return B3Digest(digest)

    def _writer_now(self) -> bool:
        """Whether a writer takes small blobs from now on: one is started once this sink
        wrote ``START_AFTER`` itself, and used once it said hello; one that cannot start
        or never says hello is given up (logged), and this sink goes on writing itself."""
        if self._starting is None:
            if self._writer_wanted and self._small >= blob_writer.START_AFTER:
                self._writer_wanted = False  # one try
                try:
                    self._starting = blob_writer.WriterProcess(self._root, self._durability)
                except Exception as exc:  # no memfd, no fds, no interpreter, enough writers
                    log.warning("blob writer process not started (%s); writing here", exc)
            return False
        try:
            if not self._starting.ready():
                return False
        except StorageError as exc:
            log.warning("blob writer process failed to start (%s); writing here", exc)
            self._starting.close()
            self._starting = None
            return False
        self._writer, self._starting = self._starting, None
        return True

    def put_named(self, data: Buffer, name: str) -> None:
        """Write a new blob named by the caller, on this thread (a creator, the writer process)."""
        temp = self._temp()
        try:
            write_all(temp.fd, data)
        except OSError as exc:
            temp.close()
            raise StorageError(f"cannot write blob {name} into {self.tmp}: {exc}") from exc
        self.add(temp, name, len(data))

    def begin(self) -> LargeBlobWriter:
        return _Large(self, self._temp())

    def accept(self, digest: bytes, size: int) -> None:
        """A new blob: known (``has``) and counted from now on."""
        self._known.add(digest)
        self._blobs += 1
        self._bytes += size

    def _hand_over(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        self.to_creator(self._create, batch)

    def to_creator(self, fn: Callable[..., None], *args: object) -> None:
        """Run ``fn`` on a creator thread; raises a failure of an earlier call."""
        while len(self._creating) >= CREATES_QUEUED:
            self._creating.popleft().result()
        self._creating.append(self._creator.submit(fn, *args))

    def _create(self, batch: list[tuple[bytes, str]]) -> None:
        """Creator thread: a temp file per blob, written, queued for its group."""
        for data, name in batch:
            self.put_named(data, name)

    def add(self, temp: Temp, name: str, size: int) -> None:
        """Creator thread: queue a written temp file for naming (committed when the group is full)."""
        with self._group_lock:
            self._group.append(_Pending(temp, name, size))
            self._group_bytes += size
            if len(self._group) >= self._group_files or self._group_bytes >= GROUP_BYTES:
                self._submit()

    def _submit_rest(self) -> None:
        if self._group:
            self._submit()

    def _submit(self) -> None:
        group, self._group, self._group_bytes = self._group, [], 0
        while len(self._committing) >= GROUPS_IN_FLIGHT:
            self._committing.popleft().result()
        self._committing.append(self._committer.submit(self._commit, group))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()
        if self._batch:
            self._hand_over()
        while self._creating:
            self._creating.popleft().result()
        with self._group_lock:
            self._submit_rest()
        while self._committing:
            self._committing.popleft().result()

    def _commit(self, group: list[_Pending]) -> None:
        """Committer thread: data durable, then names; raises StorageError (nothing named then)."""
        by_syncfs = self._syncfs is not None and len(group) >= SYNCFS_MIN_FILES
        fan_outs: dict[str, int] = {}  # fan-out directory fds, by name
        try:
            try:
                if by_syncfs:
                    assert self._syncfs is not None
                    self._syncfs(self._tmp_fd)
                else:
                    for pending in group:
                        os.fsync(pending.temp.fd)
                try:
                    for pending in group:
                        dir_fd = fan_outs.get(pending.name[:2])
                        if dir_fd is None:
                            dir_fd = fan_outs[pending.name[:2]] = self._store.fan_out(pending.name)
                        self._store.give_name(pending.temp, pending.name, dir_fd)
                finally:  # the names given (all, or those before a failure) made durable at once:
                    # another writer that finds one present relies on it
                    if by_syncfs:
                        assert self._syncfs is not None
                        self._syncfs(self._root_fd)
                    else:
                        for dir_fd in fan_outs.values():
                            os.fsync(dir_fd)
            except OSError as exc:
                raise StorageError(f"cannot store blobs in {self._store.root}: {exc}") from exc
            if self._drop_cache:  # durable and clean: the next group's writes reuse the pages
                for pending in group:
                    with contextlib.suppress(OSError):  # only a hint
                        os.posix_fadvise(pending.temp.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            for pending in group:
                pending.temp.close()
            for dir_fd in fan_outs.values():  # not kept: a low open-file limit is shared
                os.close(dir_fd)

    def close(self) -> None:
        """Wait for the committing groups; drop the unsubmitted one; release everything."""
        if self._root_fd < 0:
            return
        for process in (self._writer, self._starting):
            if process is not None:
                process.close()
        self._writer = self._starting = None
        while self._creating:  # every temp file handed over ends in the group (closed below)
            with contextlib.suppress(Exception):
                self._creating.popleft().result()
        self._creator.shutdown()
        self._batch = []
        for pending in self._group:
            pending.temp.close()
        self._group = []
        self.writer.shutdown()
        self._committer.shutdown()  # waits: a group being committed is finished, whole
        self._committing.clear()
        for fd in (self._root_fd, self._tmp_fd):
            os.close(fd)
        self._root_fd = self._tmp_fd = -1


def open_sink(store: ObjectStoreBlobService, durability: str = "syncfs") -> ObjectStoreSink:
    """An :class:`ObjectStoreSink` for ``store`` (call on a worker thread)."""
    return ObjectStoreSink(store, durability)


__all__ = ["GROUPS_IN_FLIGHT", "GROUP_BYTES", "GROUP_FILES", "ObjectStoreSink", "open_sink"]
