"""The fast ingest path: a tree into a blob service that offers a thread-side sink.

Used by :func:`clients.store.ingest.ingest_path` when the blob service is a
:class:`~clients.store.sink.SinkProvider` (the local objectstore).  Every
byte is read once and no per-file work touches the event loop:

* the **walker** (a generator advanced in steps on worker threads, so the
  ingest can be cancelled between steps) visits the tree in NAR order
  like the general path (the root's ``lstat``, ``scandir`` entries sorted
  by name bytes, their type from the listing, ``st_size`` bytes read), but
  opens every entry relative to its directory's descriptor (``openat``
  with ``O_NOFOLLOW``, directories too: no path walk per file, and a
  directory replaced by a symlink during the walk is never followed), and
  writes the NAR framing itself (the tokens ``NarWriter`` writes, with its
  checks of names and targets; the listing gives names sorted and unique);
  it hashes nothing.  NAR framing and small files go on in pieces of
  256 KiB, small files (at most one chunk) also in batches for the store; a
  large file goes on as its open descriptor;
* the **hasher thread** (:class:`~clients.store.sink_stages.Hash`) computes
  the NAR SHA-256 in order and passes the contents on; it reads the large
  files itself, as :data:`LARGE_CHUNK`-sized chunks into page-aligned
  buffers from a small pool (so the sink can write them with ``O_DIRECT``),
  so the walker goes on with the next files meanwhile (up to
  :data:`_QUEUE` items ahead: a few tens of MiB at most);
* the **store thread** (:class:`~clients.store.sink_stages.Store`) gives them
  to the sink, which blake3-hashes and writes each blob.  hashlib and blake3
  release the GIL on large buffers, so the three run in parallel.  A large
  file is written while it is hashed; after a large file that turned out to
  be present already, the next one is only hashed first, and read again
  from the same inode to be written when it is absent (so re-ingesting an
  unchanged tree writes next to nothing);
* the castore directories are built on the store thread as the walker
  closes them (leaves first): each batch of small files carries the
  directories closed since the last one, whose files' digests are all known
  once the batch is stored; they are put in one stream at the end, after
  ``sink.flush()`` made every blob durable and visible, so a crash leaves at
  most orphan blobs, never a directory naming a missing blob.

An error in any thread stops the walk (queues are bounded; the error is
raised on the event loop); the sink is closed in every case, dropping the
temp files not yet committed.
"""

from __future__ import annotations

import mmap
import os
import queue
import stat
from collections.abc import Generator, Iterator
from typing import Any

import anyio
import anyio.to_thread

from clients.castore.model import B3Digest, Directory, DirectoryNode, FileNode, Node, SymlinkNode
from clients.castore.protocols import DirectoryService
from clients.castore.streams import CHUNK_SIZE
from clients.errors import StorageError
from clients.store.ingest_common import READ_FLAGS, IngestResult, shrank
from clients.store.model import with_name
from clients.store.nar import single_errors
from clients.store.sink import SinkProvider
from clients.store.sink_stages import (
    LARGE,
    LARGE_CHUNK,
    SMALL,
    Hash,
    NarBytes,
    Stage,
    Store,
)
from nixcompat.nar import NarError
from nixcompat.nar.model import check_name, check_target, encode_str, padding, u64
from nixcompat.nar.writer import (
    CLOSE,
    CONTENTS,
    DIRECTORY,
    ENTRY,
    EXECUTABLE,
    MAGIC,
    NODE,
    REGULAR,
    SYMLINK,
)

__all__ = ["LARGE_CHUNK", "ingest_with_sink"]

_POOL = 8  # large-chunk buffers (up to 3 of them in writes in flight)
# items between walker and hasher, and hasher and store (each at most ~1 MiB of small files
# plus their NAR piece, or a large file's descriptor): the walker runs ahead through small
# files while the hasher reads a large one
_QUEUE = 32
_BATCH_FILES, _BATCH_BYTES = 256, CHUNK_SIZE  # small files per item
_STEP_FILES, _STEP_BYTES = 1024, 64 * CHUNK_SIZE  # walker work per thread call
_WAIT = 0.2  # seconds between checks of the other thread's health
_FILE, _LINK, _DIR = range(3)  # child record kinds
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# NAR tokens (nixcompat.nar.writer's): a regular file's openings, an entry's end
_REGULAR = REGULAR + CONTENTS
_EXECUTABLE = REGULAR + EXECUTABLE + CONTENTS
_CLOSE_ENTRY = CLOSE + CLOSE  # the node's, then the entry's

# A child record: (_FILE, name, digest index, size, executable) | (_LINK, name, target)
# | (_DIR, name, directory index) — plain tuples: tens of thousands are made.
_Child = tuple[Any, ...]


def _kind(mode: int, path: bytes) -> int:
    if stat.S_ISREG(mode):
        return _FILE
    if stat.S_ISLNK(mode):
        return _LINK
    if stat.S_ISDIR(mode):
        return _DIR
    raise NarError(
        f"cannot ingest {os.fsdecode(path)!r}: unsupported file type "
        f"{stat.filemode(mode)[0]!r} (only regular files, symlinks, directories)"
    )


def _listing(dir_fd: int, path: bytes) -> list[tuple[bytes, int]]:
    """The entries of the directory open as ``dir_fd`` (at ``path``): ``(name, kind)`` sorted
    by raw name bytes (NAR order), each kind from the listing (``lstat`` when it does not say)."""
    listed: list[tuple[bytes, int]] = []
    fsencode = os.fsencode
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            name = fsencode(entry.name)
            if entry.is_symlink():
                listed.append((name, _LINK))
            elif entry.is_dir(follow_symlinks=False):
                listed.append((name, _DIR))
            elif entry.is_file(follow_symlinks=False):
                listed.append((name, _FILE))
            else:
                mode = entry.stat(follow_symlinks=False).st_mode
                listed.append((name, _kind(mode, path + b"/" + name)))
    listed.sort()
    return listed


class _Tree:
    """The castore directories, built on the store thread as the walker closes them.

    A closed directory's children are records (see ``_Child``); its files' digests
    are ``digests[index]`` — stored by the time the directory arrives.
    """

    def __init__(self, digests: list[B3Digest]) -> None:
        self.digests = digests
        self.built: list[DirectoryNode] = []  # per closed directory, in closing order
        self.directories: dict[B3Digest, Directory] = {}

    def node(self, child: _Child) -> Node:
        if child[0] == _FILE:
            return FileNode(child[1], self.digests[child[2]], child[3], child[4])
        if child[0] == _LINK:
            return SymlinkNode(child[1], child[2])
        sub = self.built[child[2]]
        return DirectoryNode(child[1], sub.digest, sub.size)

    def close(self, children: list[_Child]) -> None:
        """The next closed directory (leaves first)."""
        directory = Directory.from_nodes(map(self.node, children))
        digest = directory.digest()
        self.directories.setdefault(digest, directory)
        self.built.append(DirectoryNode(b"", digest, directory.size()))


class _Walk:
    """The walker's state: NAR, queue to the hasher (then the store), the directories closed.

    It writes the NAR framing itself (the tokens of ``nixcompat.nar``; entry names
    come sorted and unique from the listing and are still checked like
    ``NarWriter`` does) and opens everything relative to its directory's descriptor
    (``O_NOFOLLOW``): no path walk per file, and no symlink swapped in for a
    directory is followed.
    """

    def __init__(
        self,
        root: bytes,
        stages: list[Stage],
        items: queue.Queue[Any],
    ) -> None:
        self.root = root
        self.nar = NarBytes(self.send)
        self._stages, self._items = stages, items
        self.closed = 0  # directories closed so far (leaves first)
        self._closing: list[list[_Child]] = []  # their children, not yet sent
        self.root_child: _Child | None = None
        self.files = self.file_bytes = self.symlinks = 0
        self._batch: list[bytes] = []
        self._batch_bytes = self._step_files = self._step_bytes = 0
        self._fds: list[int] = []  # the open directories' descriptors (closed at the end)

    @property
    def nar_size(self) -> int:
        return self.nar.size

    def _check(self) -> None:
        for stage in self._stages:
            if stage.error is not None:
                raise stage.error

    def send(self, item: tuple[Any, ...] | None) -> None:
        """Queue ``item`` for the hasher (waiting while it is busy; raising a stage's error)."""
        while True:
            if item is not None:
                self._check()
            try:
                self._items.put(item, timeout=_WAIT)
                return
            except queue.Full:
                continue

    def _send_batch(self) -> None:
        """Send the small files gathered and the directories closed since the last batch."""
        if self._batch or self._closing:
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            closing, self._closing = self._closing, []
            self.send((SMALL, batch, closing))

    def run(self) -> Generator[None, None, None]:
        try:
            yield from self._run()
        finally:
            while self._fds:
                os.close(self._fds.pop())

    def _run(self) -> Generator[None, None, None]:
        root, nar = self.root, self.nar
        nar.write(MAGIC)
        kind = _kind(os.lstat(root).st_mode, root)
        if kind != _DIR:
            if kind == _FILE:
                self.root_child = self._file(None, root, root, b"")
            else:
                self.root_child = self._symlink(None, root, root, b"")
            nar.flush()
            return
        nar.write(DIRECTORY)
        fds = self._fds
        fds.append(os.open(root, _DIR_FLAGS))
        # per open directory: its name, path, children so far, remaining entries (reversed)
        open_dirs: list[tuple[bytes, bytes, list[_Child], list[tuple[bytes, int]]]] = []
        open_dirs.append((b"", root, [], _listing(fds[-1], root)[::-1]))
        while open_dirs:
            dir_name, path, children, entries = open_dirs[-1]
            dir_fd = fds[-1]
            while entries:
                name, kind = entries.pop()
                if kind == _FILE:
                    children.append(self._file(dir_fd, name, path, _entry(name)))
                elif kind == _LINK:
                    children.append(self._symlink(dir_fd, name, path, _entry(name)))
                else:
                    sub = path + b"/" + name
                    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                    fds.append(fd)
                    open_dirs.append((name, sub, [], _listing(fd, sub)[::-1]))
                    nar.write(_entry(name) + DIRECTORY)
                    break
                if self._step_files >= _STEP_FILES or self._step_bytes >= _STEP_BYTES:
                    self._step_files = self._step_bytes = 0
                    yield
            else:  # the directory is finished
                open_dirs.pop()
                os.close(fds.pop())
                closed = (_DIR, dir_name, self.closed)
                self.closed += 1
                self._closing.append(children)
                if open_dirs:
                    open_dirs[-1][2].append(closed)
                    nar.write(_CLOSE_ENTRY)
                else:
                    nar.write(CLOSE)
                    self.root_child = closed
        self._send_batch()
        nar.flush()

    def _symlink(self, dir_fd: int | None, name: bytes, path: bytes, head: bytes) -> _Child:
        target = os.readlink(name, dir_fd=dir_fd)
        check_target(target)
        self.nar.write(head + SYMLINK + encode_str(target) + (_CLOSE_ENTRY if head else CLOSE))
        self.symlinks += 1
        return (_LINK, name, target)

    def _file(self, dir_fd: int | None, name: bytes, path: bytes, head: bytes) -> _Child:
        """A regular file (``name`` in ``dir_fd``, or the root when ``dir_fd`` is None)."""
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                where = path if dir_fd is None else path + b"/" + name
                raise NarError(f"{os.fsdecode(where)!r} changed type while being ingested")
            size = st.st_size
            executable = bool(st.st_mode & stat.S_IXUSR)
            nar = self.nar
            nar.write(head + (_EXECUTABLE if executable else _REGULAR) + u64(size))
            tail = padding(size) + (_CLOSE_ENTRY if head else CLOSE)
            if size <= CHUNK_SIZE:
                data = os.read(fd, size) if size else b""
                if len(data) < size:  # short reads are rare (regular files), but possible
                    where = path if dir_fd is None else path + b"/" + name
                    data = _read_rest(fd, data, size, where)
                nar.write(data)
                nar.write(tail)
                self._batch.append(data)
                self._batch_bytes += size
                if len(self._batch) >= _BATCH_FILES or self._batch_bytes >= _BATCH_BYTES:
                    self._send_batch()
            else:  # read (and hashed) by the hasher thread, which closes ``fd``
                where = path if dir_fd is None else path + b"/" + name
                self._send_batch()
                nar.flush()  # the NAR before the contents
                self.send((LARGE, fd, where, (st.st_dev, st.st_ino), size))
                fd = -1
                nar.size += size
                nar.write(tail)
        finally:
            if fd >= 0:
                os.close(fd)
        index = self.files
        self.files += 1
        self.file_bytes += size
        self._step_files += 1
        self._step_bytes += size
        return (_FILE, name, index, size, executable)


def _read_rest(fd: int, data: bytes, size: int, path: bytes) -> bytes:
    while len(data) < size:
        more = os.read(fd, size - len(data))
        if not more:
            raise shrank(path, size, size - len(data))
        data += more
    return data


def _entry(name: bytes) -> bytes:
    """An entry's opening, up to its node (``name`` checked as ``NarWriter`` does)."""
    check_name(name)
    return ENTRY + encode_str(name) + NODE


def _step(steps: Iterator[None]) -> bool:
    """Advance the walker by one step (on a worker thread); False when it is done."""
    return next(steps, False) is None


async def ingest_with_sink(
    path: str | os.PathLike[str],
    blobs: SinkProvider,
    directories: DirectoryService,
    *,
    name: bytes = b"",
) -> IngestResult:
    """:func:`clients.store.ingest.ingest_path` through ``blobs.open_sink()`` (same contract)."""
    sink = await anyio.to_thread.run_sync(blobs.open_sink)
    items: queue.Queue[Any] = queue.Queue(_QUEUE)
    to_store: queue.Queue[Any] = queue.Queue(_QUEUE)
    pool: queue.Queue[mmap.mmap] = queue.Queue()
    for _ in range(_POOL):
        pool.put(mmap.mmap(-1, LARGE_CHUNK))
    try:
        hasher = Hash(items, to_store, pool)
        digests: list[B3Digest] = []
        tree = _Tree(digests)
        store = Store(sink, to_store, pool, digests=digests, on_directory=tree.close)
        walk = _Walk(os.fsencode(path), [hasher, store], items)
        steps = walk.run()
        try:
            with single_errors():
                async with anyio.create_task_group() as tg:
                    tg.start_soon(anyio.to_thread.run_sync, hasher.run)
                    tg.start_soon(anyio.to_thread.run_sync, store.run)
                    try:
                        while await anyio.to_thread.run_sync(_step, steps):
                            pass
                    except BaseException:
                        hasher.stopped = True  # large files still queued: only closed
                        raise
                    finally:
                        with anyio.CancelScope(shield=True):
                            await anyio.to_thread.run_sync(walk.send, None)
        finally:
            steps.close()
        for stage in (hasher, store):
            if stage.error is not None:
                raise stage.error
        await anyio.to_thread.run_sync(sink.flush)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(sink.close)
    assert walk.root_child is not None
    root, dirs = tree.node(walk.root_child), tree.directories
    if dirs:
        async with directories.put_multiple() as putter:
            for directory in dirs.values():
                await putter.put(directory)
            stored = await putter.close()
        if not isinstance(root, DirectoryNode) or stored != root.digest:
            raise StorageError(f"the directory service stored the root of {path} under {stored}")
    return IngestResult(
        node=with_name(root, name),
        nar_size=walk.nar_size,
        nar_sha256=hasher.sha.digest(),
        files=walk.files,
        file_bytes=walk.file_bytes,
        directories=walk.closed,
        symlinks=walk.symlinks,
        blobs_uploaded=sink.blobs_written,
        bytes_uploaded=sink.bytes_written,
    )
