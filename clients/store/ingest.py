"""File-system trees into the castore (with their NAR hash) and back out.

:func:`ingest_path` turns a tree into blobs and directories and computes the
tree's NAR sha256 and size *in the same pass*.  How it stays correct and fast:

* One walker (a generator, advanced on worker threads in batches, reading
  up to :data:`_READ_AHEAD` bytes ahead of the uploads) visits the tree in NAR
  order — ``lstat``, entries sorted by raw name bytes, executable =
  owner-execute bit, exactly ``st_size`` bytes read, like Nix's ``dumpPath``
  — and drives nixcompat's ``NarWriter`` into a sha256 hasher, so the NAR
  bytes are hashed strictly in order.  The same thread blake3-hashes each
  file and builds the castore directory graph.
* Uploads run on the event loop, :data:`UPLOADS` at a time, while the walker
  goes on; every blob is looked up first (``has``) and only sent when the
  blob service lacks it, so re-ingesting a mostly unchanged tree sends
  little.  A small file (at most one chunk) travels as the buffer the walker
  read; a large one is read a second time, from the file the walker hashed
  (same inode; its blake3 must come out the same, else the file changed
  while being ingested and :class:`~nixcompat.nar.NarError` is raised).
* Directories are put last, in one ``put_multiple`` stream (leaves first),
  after every blob is stored; a crash or error therefore leaves at most
  orphan blobs, never a directory naming a missing blob.

Memory: the directory graph, plus the walker's read-ahead (about
``_READ_AHEAD`` bytes of small files queued or being uploaded); a large file
is never held whole.

:func:`export_node` writes a castore tree to disk the way
``nix-store --restore`` does; :func:`import_path_as_store_path` is
``nix-store --add``: ingest, compute the ``source`` store path from the NAR
hash, and put the path info.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import blake3

from clients.castore.model import B3Digest, Directory, DirectoryNode, FileNode, Node, SymlinkNode
from clients.castore.protocols import BlobService, DirectoryService
from clients.castore.streams import CHUNK_SIZE, chunks_of
from clients.errors import InvalidRequest, NotFound, StorageError
from clients.store.ingest_common import READ_FLAGS as _READ_FLAGS
from clients.store.ingest_common import IngestResult, open_regular, read_exactly, shrank
from clients.store.model import PathInfo, check_node, with_name
from clients.store.nar import single_errors
from clients.store.protocols import PathInfoService
from clients.store.sink import SinkProvider
from clients.store.sink_ingest import ingest_with_sink
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.nar import NarError, NarHasher, NarWriter
from nixcompat.narinfo import CaMethod, ContentAddress
from nixcompat.storepath import is_valid_name, make_fixed_output_path

__all__ = [
    "UPLOADS",
    "IngestResult",
    "export_node",
    "import_path_as_store_path",
    "ingest_path",
]

#: Blob uploads (lookups and puts) in flight at a time.
UPLOADS = 128
#: Bytes read ahead of the uploads at most (small files queued or in flight, roughly).
_READ_AHEAD = 32 * CHUNK_SIZE
_BATCH_BYTES = CHUNK_SIZE
_BATCH_EVENTS = 256


# Walker events: a whole small file, or a large file already hashed (read again to upload).
@dataclass(frozen=True)
class _Small:
    digest: B3Digest
    data: bytes


@dataclass(frozen=True)
class _Large:
    digest: B3Digest
    size: int
    path: bytes
    inode: tuple[int, int]  # (st_dev, st_ino) of the file the walker read


_Event = _Small | _Large


class _Walk:
    """The walker's state and results (filled in as the generator runs)."""

    def __init__(self, root: bytes) -> None:
        self.root = root
        self.hasher = NarHasher()
        self.writer = NarWriter(self.hasher.update)
        self.node: Node | None = None
        self.directories: dict[B3Digest, Directory] = {}  # insertion order = leaves first
        self.files = self.file_bytes = self.symlinks = self.dir_count = 0
        self._buffer = bytearray(CHUNK_SIZE)

    def run(self) -> Generator[_Event, None, None]:
        writer = self.writer
        # per open directory: (its name, children so far, remaining names, its path)
        open_dirs: list[tuple[bytes, list[Node], Iterator[bytes], bytes]] = []

        def attach(node: Node) -> None:
            if open_dirs:
                open_dirs[-1][1].append(node)
            else:
                self.node = node

        path, name = self.root, b""
        while True:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                yield self._file(path, name, attach)
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                writer.symlink(target)
                attach(SymlinkNode(name, target))
                self.symlinks += 1
            elif stat.S_ISDIR(st.st_mode):
                writer.begin_directory()
                open_dirs.append((name, [], iter(sorted(os.listdir(path))), path))
            else:
                raise NarError(
                    f"cannot ingest {os.fsdecode(path)!r}: unsupported file type "
                    f"{stat.filemode(st.st_mode)[0]!r} (only regular files, symlinks, directories)"
                )
            if open_dirs and not stat.S_ISDIR(st.st_mode):
                writer.end_entry()
            while open_dirs:  # find the next entry, closing finished directories
                dir_name, children, names, dir_path = open_dirs[-1]
                child = next(names, None)
                if child is not None:
                    writer.begin_entry(child)
                    path, name = dir_path + b"/" + child, child
                    break
                open_dirs.pop()
                writer.end_directory()
                directory = Directory.from_nodes(children)
                self.directories.setdefault(directory.digest(), directory)
                self.dir_count += 1
                attach(DirectoryNode(dir_name, directory.digest(), directory.size()))
                if open_dirs:
                    writer.end_entry()
            else:
                writer.finish()
                return

    def _file(self, path: bytes, name: bytes, attach: Callable[[Node], None]) -> _Event:
        fd, size, executable, inode = open_regular(path)
        try:
            self.writer.begin_regular(executable, size)
            if size <= CHUNK_SIZE:
                data = read_exactly(fd, size, path)
                self.writer.write_contents(data)
                event: _Event = _Small(B3Digest(blake3.blake3(data).digest()), data)
            else:
                event = _Large(self._hash_large(fd, size, path), size, path, inode)
            self.writer.end_regular()
        finally:
            os.close(fd)
        attach(FileNode(name, event.digest, size, executable))
        self.files += 1
        self.file_bytes += size
        return event

    def _hash_large(self, fd: int, size: int, path: bytes) -> B3Digest:
        hasher, view = blake3.blake3(), memoryview(self._buffer)
        remaining = size
        while remaining:
            n = os.readv(fd, [view[: min(remaining, CHUNK_SIZE)]])
            if not n:
                raise shrank(path, size, remaining)
            remaining -= n
            hasher.update(view[:n])
            self.writer.write_contents(view[:n])  # type: ignore[arg-type]
        return B3Digest(hasher.digest())


def _next_batch(events: Iterator[_Event]) -> list[_Event]:
    """Advance the walker (on a worker thread) until a batch is full; [] at the end."""
    batch: list[_Event] = []
    size = 0
    for event in events:
        batch.append(event)
        if isinstance(event, _Small):
            size += len(event.data)
        if size >= _BATCH_BYTES or len(batch) >= _BATCH_EVENTS:
            break
    return batch


def _reopen(large: _Large) -> int:
    """The large file the walker hashed, open again (the same inode, or NarError)."""
    fd = os.open(large.path, _READ_FLAGS)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != large.inode or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NarError(f"{os.fsdecode(large.path)!r} was replaced while being ingested")
    return fd


async def _put_large(blobs: BlobService, large: _Large) -> None:
    """Upload a large file by reading it again; its blake3 must not have changed."""
    with anyio.CancelScope(shield=True):  # a cancelled open must not leak the fd
        fd = await anyio.to_thread.run_sync(_reopen, large)

    async def chunks() -> AsyncIterator[bytes]:
        remaining = large.size
        while remaining:
            data = await anyio.to_thread.run_sync(os.read, fd, min(remaining, CHUNK_SIZE))
            if not data:
                raise shrank(large.path, large.size, remaining)
            remaining -= len(data)
            yield data

    try:
        got = await blobs.put(chunks())
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(os.close, fd)
    if got != large.digest:
        raise NarError(
            f"{os.fsdecode(large.path)!r} changed while being ingested "
            f"(blake3 {large.digest} when hashed, {got} when uploaded)"
        )


def _held(job: _Event) -> int:
    """Roughly the memory an upload job holds until it is finished."""
    return len(job.data) + 256 if isinstance(job, _Small) else 2 * CHUNK_SIZE


class _Jobs:
    """Upload jobs from the walker to the upload tasks, bounded in bytes (event loop only).

    ``add`` queues a walker batch, then waits until the jobs not yet finished
    hold less than ``budget`` bytes (so the walker reads ahead at most that
    much); ``take`` returns the next job, or None once closed and empty;
    ``finish`` releases a taken job.  Waiting takers are woken once per batch.
    """

    def __init__(self, budget: int) -> None:
        self._queue: deque[_Event] = deque()
        self._budget = budget
        self._held = 0
        self._closed = False
        self._arrived: anyio.Event | None = None
        self._drained: anyio.Event | None = None

    async def add(self, batch: list[_Event]) -> None:
        self._queue.extend(batch)
        self._held += sum(map(_held, batch))
        self._wake_takers()
        while self._held >= self._budget:
            self._drained = anyio.Event()
            await self._drained.wait()

    def close(self) -> None:
        self._closed = True
        self._wake_takers()

    async def take(self) -> _Event | None:
        while not self._queue:
            if self._closed:
                return None
            if self._arrived is None:
                self._arrived = anyio.Event()
            await self._arrived.wait()
        return self._queue.popleft()

    def finish(self, job: _Event) -> None:
        self._held -= _held(job)
        if self._drained is not None and self._held < self._budget:
            self._drained.set()
            self._drained = None

    def _wake_takers(self) -> None:
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None


async def ingest_path(
    path: str | os.PathLike[str],
    blobs: BlobService,
    directories: DirectoryService,
    *,
    name: bytes = b"",
) -> IngestResult:
    """Ingest the file-system object at ``path``; its root node is called ``name``.

    Raises :class:`~nixcompat.nar.NarError` for what a NAR cannot hold
    (sockets, fifos, devices; a file that shrinks or changes while read),
    ``OSError`` for unreadable files, and the blob/directory services' errors.
    """
    if isinstance(blobs, SinkProvider):
        return await ingest_with_sink(path, blobs, directories, name=name)
    walk = _Walk(os.fsencode(path))
    events = walk.run()
    jobs = _Jobs(_READ_AHEAD)
    sent = [0, 0]

    async def produce() -> None:
        seen: set[B3Digest] = set()
        try:
            while batch := await anyio.to_thread.run_sync(_next_batch, events):
                fresh = []
                for event in batch:
                    if event.digest not in seen:
                        seen.add(event.digest)
                        fresh.append(event)
                await jobs.add(fresh)
        finally:
            jobs.close()

    async def upload() -> None:
        while (job := await jobs.take()) is not None:
            try:
                if await blobs.has(job.digest):
                    continue
                if isinstance(job, _Small):
                    got = await blobs.put(chunks_of(job.data))
                    if got != job.digest:
                        raise StorageError(f"the blob service stored blob {job.digest} under {got}")
                else:
                    await _put_large(blobs, job)
                sent[0] += 1
                sent[1] += len(job.data) if isinstance(job, _Small) else job.size
            finally:
                jobs.finish(job)

    try:
        with single_errors():
            async with anyio.create_task_group() as tg:
                for _ in range(UPLOADS):
                    tg.start_soon(upload)
                await produce()
    finally:
        events.close()
    assert walk.node is not None
    if walk.directories:
        async with directories.put_multiple() as putter:
            for directory in walk.directories.values():
                await putter.put(directory)
            root = await putter.close()
        if not isinstance(walk.node, DirectoryNode) or root != walk.node.digest:
            raise StorageError(f"the directory service stored the root of {path} under {root}")
    return IngestResult(
        node=with_name(walk.node, name),
        nar_size=walk.hasher.size,
        nar_sha256=walk.hasher.digest(),
        files=walk.files,
        file_bytes=walk.file_bytes,
        directories=walk.dir_count,
        symlinks=walk.symlinks,
        blobs_uploaded=sent[0],
        bytes_uploaded=sent[1],
    )


def _check_entry_name(name: bytes, where: str) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise StorageError(f"refusing to export the entry name {name!r} (in {where})")


def _create_file(dir_fd: int, name: bytes, executable: bool, data: bytes | None) -> int:
    """Create ``name`` (never following or replacing anything); write ``data``; its fd if open."""
    fd = os.open(
        name,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o666,
        dir_fd=dir_fd,
    )
    try:
        if executable:  # as nix-store --restore does
            os.fchmod(fd, os.fstat(fd).st_mode | 0o111)
        if data is None:
            return fd
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _symlink(target: bytes, dir_fd: int, name: bytes) -> None:
    os.symlink(target, name, dir_fd=dir_fd)


def _mkdir(dir_fd: int, name: bytes) -> int:
    os.mkdir(name, 0o777, dir_fd=dir_fd)
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


async def _export_file(
    blobs: BlobService, node: FileNode, dir_fd: int, name: bytes, at: str
) -> None:
    reader = await blobs.open_read(node.digest)
    if reader is None:
        raise NotFound(f"blob {B3Digest(node.digest)} of file {at} is missing")
    async with reader:
        if node.size <= CHUNK_SIZE:  # one thread hop for the whole file
            data = await reader.read_all()
            if len(data) != node.size:
                raise StorageError(f"blob of {at} has {len(data)} bytes, expected {node.size}")
            await anyio.to_thread.run_sync(_create_file, dir_fd, name, node.executable, data)
            return
        fd = await anyio.to_thread.run_sync(_create_file, dir_fd, name, node.executable, None)
        try:
            written = 0
            async for chunk in reader:
                written += len(chunk)
                if written > node.size:
                    break
                await anyio.to_thread.run_sync(_write_all, fd, chunk)
            if written != node.size:
                raise StorageError(f"blob of {at} has {written}+ bytes, expected {node.size}")
        finally:
            await anyio.to_thread.run_sync(os.close, fd)


async def export_node(
    node: Node, blobs: BlobService, directories: DirectoryService, dest: str | os.PathLike[str]
) -> None:
    """Write the tree ``node`` points to at ``dest``, as ``nix-store --restore`` would.

    Regular files are created ``0666`` (minus the umask), plus ``+x`` for all
    when executable; directories ``0777`` (minus the umask); symlinks as
    stored.  ``dest`` must not exist (``FileExistsError``); nothing is ever
    overwritten or followed (every entry is created relative to its parent's
    descriptor with ``O_EXCL`` / ``O_NOFOLLOW``).  The root's name is ignored.
    On error the partial tree is left in place.
    """
    check_node(node, "export root")
    target = Path(dest)
    if await anyio.to_thread.run_sync(os.path.lexists, target):
        raise FileExistsError(f"export destination {target} already exists; refusing to overwrite")
    parent_fd = await anyio.to_thread.run_sync(
        os.open, target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    )
    # per open directory: its fd, remaining children, path for messages
    stack: list[tuple[int, Iterator[Node], str]] = []
    try:
        fd, name, current, at = parent_fd, os.fsencode(target.name), node, str(target)
        while True:
            if isinstance(current, SymlinkNode):
                await anyio.to_thread.run_sync(_symlink, current.target, fd, name)
            elif isinstance(current, FileNode):
                await _export_file(blobs, current, fd, name, at)
            else:
                directory = await directories.get(current.digest)
                if directory is None:
                    raise NotFound(f"directory {B3Digest(current.digest)} at {at} is missing")
                child_fd = await anyio.to_thread.run_sync(_mkdir, fd, name)
                stack.append((child_fd, directory.nodes(), at))
            while stack:
                fd, children, parent_at = stack[-1]
                child = next(children, None)
                if child is not None:
                    name, current = child.name, child
                    at = f"{parent_at}/{os.fsdecode(name)}"
                    _check_entry_name(name, parent_at)
                    break
                stack.pop()
                await anyio.to_thread.run_sync(os.close, fd)
            else:
                return
    finally:
        with anyio.CancelScope(shield=True):
            for fd, _, _ in stack:
                await anyio.to_thread.run_sync(os.close, fd)
            await anyio.to_thread.run_sync(os.close, parent_fd)


async def import_path_as_store_path(
    path: str | os.PathLike[str],
    name: str | None,
    blobs: BlobService,
    directories: DirectoryService,
    pathinfos: PathInfoService,
) -> tuple[PathInfo, IngestResult]:
    """``nix-store --add path``: ingest, derive the ``source`` store path, put the path info.

    The store path is ``make_fixed_output_path(name, sha256(NAR), recursive)``
    with no references, exactly what ``nix-store --add`` gives; the path info
    carries ``CA: fixed:r:sha256:…`` like Nix's.  ``name`` defaults to the
    path's base name.  Returns what the path-info service stored, and the
    ingestion statistics.
    """
    if name is None:
        name = Path(path).name
    if not is_valid_name(name):
        raise InvalidRequest(
            f"{name!r} is not a valid store path name (1-211 characters of A-Za-z0-9+-._?=); "
            "choose another name"
        )
    result = await ingest_path(path, blobs, directories)
    nar_hash = NixHash(HashAlgo.sha256, result.nar_sha256)
    store_path = make_fixed_output_path(name, nar_hash, recursive=True)
    info = PathInfo(
        store_path=store_path,
        node=with_name(result.node, store_path.basename.encode()),
        nar_size=result.nar_size,
        nar_sha256=result.nar_sha256,
        ca=ContentAddress(CaMethod.recursive, nar_hash),
    )
    return await pathinfos.put(info), result
