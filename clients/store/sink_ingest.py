"""The fast ingest path: a tree into a blob service that offers a thread-side sink.

Used by :func:`clients.store.ingest.ingest_path` when the blob service is a
:class:`~clients.store.sink.SinkProvider` (the local objectstore).  Every
byte is read once and no per-file work touches the event loop:

* the **walker** (a generator advanced in steps on worker threads, so the
  ingest can be cancelled between steps) visits the tree in NAR order
  exactly like the general path (the root's ``lstat``, ``scandir`` entries
  sorted by name bytes, their type from the listing, ``st_size`` bytes
  read) and drives ``NarWriter``; it hashes nothing.  NAR framing and small
  files go on in pieces of 256 KiB, small files (at most one chunk) also in
  batches for the store, large files as :data:`LARGE_CHUNK`-sized chunks in
  page-aligned buffers from a small pool (so the sink can write them with
  ``O_DIRECT``);
* the **hasher thread** (:class:`~clients.store.sink_stages.Hash`) computes
  the NAR SHA-256 in order and passes the contents on;
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
from clients.store.ingest_common import IngestResult, open_regular, read_exactly
from clients.store.model import with_name
from clients.store.nar import single_errors
from clients.store.sink import SinkProvider
from clients.store.sink_stages import (
    BEGIN,
    CHUNK,
    END,
    LARGE_CHUNK,
    SMALL,
    Hash,
    NarBytes,
    Stage,
    Store,
    fill,
)
from nixcompat.nar import NarError, NarWriter

__all__ = ["LARGE_CHUNK", "ingest_with_sink"]

_POOL = 8  # large-chunk buffers (up to 3 of them in writes in flight)
_QUEUE = 8  # items between walker and store thread
_BATCH_FILES, _BATCH_BYTES = 256, CHUNK_SIZE  # small files per item
_STEP_FILES, _STEP_BYTES = 1024, 64 * CHUNK_SIZE  # walker work per thread call
_WAIT = 0.2  # seconds between checks of the other thread's health
_FILE, _LINK, _DIR = range(3)  # child record kinds

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


def _entry_kind(entry: os.DirEntry[bytes]) -> int:
    """An entry's type from the directory listing (``lstat`` only when it does not say)."""
    if entry.is_symlink():
        return _LINK
    if entry.is_dir(follow_symlinks=False):
        return _DIR
    if entry.is_file(follow_symlinks=False):
        return _FILE
    return _kind(entry.stat(follow_symlinks=False).st_mode, entry.path)


def _listing(path: bytes) -> Iterator[os.DirEntry[bytes]]:
    """A directory's entries, sorted by raw name bytes (NAR order)."""
    with os.scandir(path) as entries:
        return iter(sorted(entries, key=_entry_name))


def _entry_name(entry: os.DirEntry[bytes]) -> bytes:
    return entry.name


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
    """The walker's state: NAR, queue to the hasher (then the store), the directories closed."""

    def __init__(
        self,
        root: bytes,
        stages: list[Stage],
        items: queue.Queue[Any],
        pool: queue.Queue[mmap.mmap],
    ) -> None:
        self.root = root
        self.nar = NarBytes(self.send)
        self.writer = NarWriter(self.nar.write)
        self._stages, self._items, self.pool = stages, items, pool
        self.closed = 0  # directories closed so far (leaves first)
        self._closing: list[list[_Child]] = []  # their children, not yet sent
        self.root_child: _Child | None = None
        self.files = self.file_bytes = self.symlinks = 0
        self._batch: list[bytes] = []
        self._batch_bytes = self._step_files = self._step_bytes = 0

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

    def _buffer(self) -> mmap.mmap:
        while True:
            self._check()
            try:
                return self.pool.get(timeout=_WAIT)
            except queue.Empty:
                continue

    def _send_batch(self) -> None:
        """Send the small files gathered and the directories closed since the last batch."""
        if self._batch or self._closing:
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            closing, self._closing = self._closing, []
            self.send((SMALL, batch, closing))

    def run(self) -> Generator[None, None, None]:
        writer = self.writer
        # per open directory: (its name, children so far, remaining entries)
        open_dirs: list[tuple[bytes, list[_Child], Iterator[os.DirEntry[bytes]]]] = []
        path, name = self.root, b""
        kind = _kind(os.lstat(path).st_mode, path)
        while True:
            child: _Child | None = None
            if kind == _FILE:
                child = self._file(path, name)
            elif kind == _LINK:
                target = os.readlink(path)
                writer.symlink(target)
                child = (_LINK, name, target)
                self.symlinks += 1
            else:
                writer.begin_directory()
                open_dirs.append((name, [], _listing(path)))
            if child is not None:
                if open_dirs:
                    open_dirs[-1][1].append(child)
                    writer.end_entry()
                else:
                    self.root_child = child
            while open_dirs:  # find the next entry, closing finished directories
                dir_name, children, entries = open_dirs[-1]
                entry = next(entries, None)
                if entry is not None:
                    name = entry.name
                    writer.begin_entry(name)
                    path, kind = entry.path, _entry_kind(entry)
                    break
                open_dirs.pop()
                writer.end_directory()
                closed = (_DIR, dir_name, self.closed)
                self.closed += 1
                self._closing.append(children)
                if open_dirs:
                    open_dirs[-1][1].append(closed)
                    writer.end_entry()
                else:
                    self.root_child = closed
            else:
                writer.finish()
                self._send_batch()
                self.nar.flush()
                return
            if self._step_files >= _STEP_FILES or self._step_bytes >= _STEP_BYTES:
                self._step_files = self._step_bytes = 0
                yield

    def _file(self, path: bytes, name: bytes) -> _Child:
        fd, size, executable, inode = open_regular(path)
        try:
            self.writer.begin_regular(executable, size)
            if size <= CHUNK_SIZE:
                data = read_exactly(fd, size, path)
                self.writer.write_contents(data)
                self._batch.append(data)
                self._batch_bytes += size
                if len(self._batch) >= _BATCH_FILES or self._batch_bytes >= _BATCH_BYTES:
                    self._send_batch()
            else:
                self._large(fd, path, size, inode)
            self.writer.end_regular()
        finally:
            os.close(fd)
        index = self.files
        self.files += 1
        self.file_bytes += size
        self._step_files += 1
        self._step_bytes += size
        return (_FILE, name, index, size, executable)

    def _large(self, fd: int, path: bytes, size: int, inode: tuple[int, int]) -> None:
        self._send_batch()
        self.send((BEGIN, path, inode, size))
        remaining = size
        while remaining:
            buffer = self._buffer()
            try:
                with memoryview(buffer) as whole, whole[: min(remaining, LARGE_CHUNK)] as view:
                    n = fill(fd, view, path, size, remaining)
                    self.nar.external = True  # hashed from the chunk item
                    try:
                        self.writer.write_contents(view)  # type: ignore[arg-type]
                    finally:
                        self.nar.external = False
            except BaseException:
                self.pool.put(buffer)
                raise
            self.send((CHUNK, buffer, n))
            remaining -= n
        self.send((END,))


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
        walk = _Walk(os.fsencode(path), [hasher, store], items, pool)
        steps = walk.run()
        try:
            with single_errors():
                async with anyio.create_task_group() as tg:
                    tg.start_soon(anyio.to_thread.run_sync, hasher.run)
                    tg.start_soon(anyio.to_thread.run_sync, store.run)
                    try:
                        while await anyio.to_thread.run_sync(_step, steps):
                            pass
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
        nar_size=walk.writer.size,
        nar_sha256=hasher.sha.digest(),
        files=walk.files,
        file_bytes=walk.file_bytes,
        directories=walk.closed,
        symlinks=walk.symlinks,
        blobs_uploaded=sink.blobs_written,
        bytes_uploaded=sink.bytes_written,
    )
