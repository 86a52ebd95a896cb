"""The NAR bridge: castore trees to NAR bytes and back.

Rendering (:func:`render_nar`) walks a castore tree depth-first in NAR order
and streams the NAR: directories are fetched one at a time as the walk
reaches them, blob contents are passed through chunk by chunk, framing is
produced by nixcompat's :class:`~nixcompat.nar.NarWriter` (byte-exact with
``nix-store --dump``).  Memory holds one directory per level of the current
path plus one blob chunk.  The root node's name is ignored (a NAR has none).
:class:`CastoreNarCalculator` hashes that stream (large chunks on a worker
thread) and implements ``NarCalculator``.

Importing (:func:`import_nar`, :func:`import_nar_file`) turns a NAR into
castore contents.  nixcompat's reader is synchronous over a file-like object,
so a NAR stream is first *spooled to a temporary file* (written on worker
threads; memory stays bounded), then imported from that file in two passes:

1. scan (one worker thread): read the whole NAR with the strict reader,
   sha256 over every byte, blake3 of every regular file, and build the
   directory graph in memory; note where each distinct blob sits in the file;
2. upload: blobs absent from the blob service are read back from their byte
   ranges and put, several at a time; then the directories go in one
   ``put_multiple`` stream, leaves first.

Why spool instead of bridging the reader through a queue: a NAR that is not
canonical, is truncated, or (``expected_nar_sha256``) has the wrong hash is
rejected by pass 1 *before anything is stored* — no directory graph and not
even orphan blobs.  Blobs go in before the directories that name them, so a
crash during pass 2 leaves at most orphan blobs, never a directory pointing
at a missing blob.  The cost is disk space for the NAR and reading it twice
(the second time mostly from the page cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

import anyio
import anyio.to_thread
import blake3

from clients.castore.model import B3Digest, Directory, DirectoryNode, FileNode, Node, SymlinkNode
from clients.castore.protocols import BlobService, DirectoryService
from clients.errors import InvalidRequest, NotFound, StorageError
from clients.store.model import check_node
from nixcompat.nar import NarError, NarKind, NarWriter, read_nar

__all__ = [
    "AsyncReader",
    "CastoreNarCalculator",
    "NarCalculatorImpl",
    "NarImport",
    "NarMemo",
    "file_nar",
    "import_nar",
    "import_nar_file",
    "render_nar",
    "single_errors",
]

#: Framing bytes are coalesced up to this size before being yielded.
_FLUSH = 64 << 10
#: Chunks at least this large are hashed on a worker thread.
_THREAD_HASH = 64 << 10
#: Blob uploads in flight during an import.
_UPLOADS = 8
_READ = 1 << 20


@contextlib.contextmanager
def single_errors() -> Iterator[None]:
    """Re-raise the first error of a task group's ``ExceptionGroup`` on its own.

    The store APIs promise ``StoreError`` / ``NarError`` / ``OSError``, not
    groups; concurrent failures after the first are secondary.  Groups holding
    anything but ``Exception`` (cancellation, KeyboardInterrupt) pass through.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            if not all(isinstance(e, Exception) for e in first.exceptions):
                raise
            first = first.exceptions[0]
        raise first from group


def _show(path: list[bytes]) -> str:
    return "/" + "/".join(p.decode(errors="backslashreplace") for p in path) if path else "(root)"


async def _directory(directories: DirectoryService, node: DirectoryNode, at: str) -> Directory:
    directory = await directories.get(node.digest)
    if directory is None:
        raise NotFound(f"directory {B3Digest(node.digest)} at {at} is missing")
    if directory.size() != node.size:
        raise StorageError(
            f"directory {B3Digest(node.digest)} at {at} has size {directory.size()}, "
            f"but its parent says {node.size}"
        )
    return directory


async def render_nar(
    node: Node, blobs: BlobService, directories: DirectoryService
) -> AsyncIterator[bytes]:
    """The NAR of the tree ``node`` points to, as a stream of chunks (see the module docs).

    Raises ``InvalidRequest`` when ``node`` breaks a rule, ``NotFound`` (naming
    the path inside the tree) when a directory or blob is absent, and
    ``StorageError`` when stored data contradicts the tree (a blob of the
    wrong size, a directory whose size disagrees with its parent's entry).
    """
    check_node(node, "NAR root")
    pending: list[bytes] = []
    pending_size = 0

    def sink(data: bytes) -> None:
        nonlocal pending_size
        pending.append(data)
        pending_size += len(data)

    def take(force: bool) -> bytes | None:
        nonlocal pending_size
        if not pending or (not force and pending_size < _FLUSH):
            return None
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        pending_size = 0
        return data

    writer = NarWriter(sink)

    # One iterator over child nodes per open directory; ``names`` is the current path.
    stack: list[Iterator[Node]] = []
    names: list[bytes] = []
    current: Node | None = node
    while True:
        if current is not None:
            at = _show(names)
            if isinstance(current, SymlinkNode):
                writer.symlink(current.target)
            elif isinstance(current, FileNode):
                reader = await blobs.open_read(current.digest)
                if reader is None:
                    raise NotFound(f"blob {B3Digest(current.digest)} of file {at} is missing")
                writer.begin_regular(current.executable, current.size)
                async with reader:
                    try:
                        async for chunk in reader:
                            if len(chunk) >= _FLUSH:
                                if (data := take(True)) is not None:
                                    yield data
                                writer.write_contents(chunk)
                                if (data := take(True)) is not None:
                                    yield data
                            else:
                                writer.write_contents(chunk)
                                if (data := take(False)) is not None:
                                    yield data
                        writer.end_regular()
                    except NarError as exc:
                        raise StorageError(
                            f"blob {B3Digest(current.digest)} of file {at} does not have the "
                            f"{current.size} bytes the tree says: {exc}"
                        ) from exc
            else:
                directory = await _directory(directories, current, at)
                writer.begin_directory()
                stack.append(directory.nodes())
                names.append(b"")
            if not isinstance(current, DirectoryNode) and stack:
                writer.end_entry()
            current = None
        if not stack:
            break
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
            names.pop()
            writer.end_directory()
            if stack:
                writer.end_entry()
        else:
            names[-1] = child.name
            writer.begin_entry(child.name)
            current = child
        if (data := take(False)) is not None:
            yield data
    writer.finish()
    if (data := take(True)) is not None:
        yield data


def file_nar(contents: bytes, executable: bool = False) -> tuple[int, bytes]:
    """``(nar_size, nar_sha256)`` of a NAR holding one regular file with ``contents``."""
    hasher = hashlib.sha256()
    writer = NarWriter(hasher.update)
    writer.regular(executable, len(contents), (contents,))
    return writer.finish(), hasher.digest()


def _memo_key(node: Node) -> tuple[object, ...] | None:
    """What a node's NAR is a function of (its name aside); ``None``: not memoised."""
    if isinstance(node, FileNode):
        return (0, node.digest, node.size, node.executable)
    if isinstance(node, DirectoryNode):
        return (1, node.digest, node.size)
    return None  # a symlink's NAR is cheap to render: no lookups


class NarMemo:
    """A bounded LRU of ``(nar_size, nar_sha256)`` by castore node (names ignored).

    Sound because the NAR of a castore node is a function of the node: a
    file's digest, size and executable bit, a directory's digest (which
    covers its whole tree).  Whoever just rendered or ingested a tree fills
    it (an in-process builder's output ingestion, the calculator itself), so
    the push does not read back and re-hash what was just written.  It does
    not check that the contents are still present: an entry says what the
    NAR *is*, not that the castore still holds it.  Holds at most
    ``capacity`` entries (~200 bytes each); the least recently used go first.
    """

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError(f"NarMemo capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._entries: OrderedDict[tuple[object, ...], tuple[int, bytes]] = OrderedDict()

    def __repr__(self) -> str:
        return f"NarMemo({len(self._entries)}/{self._capacity})"

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, node: Node) -> tuple[int, bytes] | None:
        """The memoised ``(nar_size, nar_sha256)`` of ``node``, or ``None``."""
        key = _memo_key(node)
        if key is None:
            return None
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, node: Node, nar_size: int, nar_sha256: bytes) -> None:
        """Remember ``node``'s NAR (the caller computed it from the node's contents)."""
        key = _memo_key(node)
        if key is None:
            return
        self._entries[key] = (nar_size, nar_sha256)
        self._entries.move_to_end(key)
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def put_file(self, node: FileNode, contents: bytes) -> None:
        """Remember the NAR of file ``node`` whose contents are ``contents`` (small files)."""
        if len(contents) != node.size:
            raise ValueError(f"{node!r} has {node.size} bytes, the contents {len(contents)}")
        self.put(node, *file_nar(contents, node.executable))


class CastoreNarCalculator:
    """``NarCalculator`` over a castore: renders the NAR and hashes it, off the loop when large.

    With a :class:`NarMemo`, a node found there is answered from it, and
    every result computed is added to it.
    """

    def __init__(
        self, blobs: BlobService, directories: DirectoryService, memo: NarMemo | None = None
    ) -> None:
        self._blobs = blobs
        self._directories = directories
        self.memo = memo

    def __repr__(self) -> str:
        return f"CastoreNarCalculator({self._blobs!r}, {self._directories!r})"

    async def calculate_nar(self, node: Node) -> tuple[int, bytes]:
        """``(nar_size, nar_sha256)`` of the tree ``node`` points to (its name is ignored)."""
        memo = self.memo
        if memo is not None and (found := memo.get(node)) is not None:
            return found
        size, digest = await self._render_and_hash(node)
        if memo is not None:
            memo.put(node, size, digest)
        return size, digest

    async def _render_and_hash(self, node: Node) -> tuple[int, bytes]:
        hasher = hashlib.sha256()
        size = 0
        async for chunk in render_nar(node, self._blobs, self._directories):
            size += len(chunk)
            if len(chunk) >= _THREAD_HASH:
                await anyio.to_thread.run_sync(hasher.update, chunk)
            else:
                hasher.update(chunk)
        return size, hasher.digest()


#: The name the store interfaces use for the castore-backed calculator.
NarCalculatorImpl = CastoreNarCalculator


@dataclass(frozen=True)
class NarImport:
    """What importing a NAR produced: a *nameless* root node, the NAR's size and sha256.

    Rename the node (``clients.store.with_name``) before putting it into a
    path info.  ``blobs_uploaded`` / ``bytes_uploaded`` count the blobs that
    were absent and sent (deduplication statistics).
    """

    node: Node
    nar_size: int
    nar_sha256: bytes
    blobs_uploaded: int = 0
    bytes_uploaded: int = 0


@runtime_checkable
class AsyncReader(Protocol):
    """Anything with ``async read(n) -> bytes`` (``b''`` at the end)."""

    async def read(self, n: int, /) -> bytes: ...


@dataclass(frozen=True)
class _Scan:
    node: Node
    nar_size: int
    nar_sha256: bytes
    directories: list[Directory]  # leaves first, distinct
    blobs: dict[B3Digest, tuple[int, int]]  # digest -> (offset, size) of one copy in the file


class _Counting:
    """A readable that hashes and counts what the NAR reader reads."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.sha256 = hashlib.sha256()
        self.offset = 0

    def read(self, n: int, /) -> bytes:
        data = self._file.read(n)
        self.sha256.update(data)
        self.offset += len(data)
        return data


def _scan(path: Path) -> _Scan:
    """Pass 1 (sync, for a worker thread): validate the NAR, hash it, build the graph."""
    with path.open("rb", buffering=_READ) as file:
        source = _Counting(file)
        blobs: dict[B3Digest, tuple[int, int]] = {}
        emitted: dict[B3Digest, Directory] = {}
        open_dirs: list[tuple[bytes, list[Node]]] = []  # (name, children) per open directory
        root: list[Node] = []

        def attach(node: Node) -> None:
            (open_dirs[-1][1] if open_dirs else root).append(node)

        def close_to(depth: int) -> None:
            while len(open_dirs) > depth:
                name, children = open_dirs.pop()
                directory = Directory.from_nodes(children)
                emitted.setdefault(directory.digest(), directory)
                attach(DirectoryNode(name, directory.digest(), directory.size()))

        for entry in read_nar(source, reject_trailing=True):
            close_to(len(entry.path))
            name = entry.path[-1] if entry.path else b""
            if entry.kind is NarKind.REGULAR:
                assert entry.contents is not None
                start = source.offset
                hasher = blake3.blake3()
                for chunk in entry.contents.chunks():
                    hasher.update(chunk)
                if source.offset - start != entry.size:  # the reader must not read ahead
                    raise AssertionError("the NAR reader read past a file's contents")
                digest = B3Digest(hasher.digest())
                blobs.setdefault(digest, (start, entry.size))
                attach(FileNode(name, digest, entry.size, entry.executable))
            elif entry.kind is NarKind.SYMLINK:
                assert entry.target is not None
                attach(SymlinkNode(name, entry.target))
            else:
                open_dirs.append((name, []))
        close_to(0)
        return _Scan(root[0], source.offset, source.sha256.digest(), list(emitted.values()), blobs)


async def _upload(blobs: BlobService, path: Path, digest: B3Digest, offset: int, size: int) -> bool:
    """Put one blob from its byte range of the spooled NAR unless present; whether it was sent."""
    if await blobs.has(digest):
        return False
    fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
    try:

        async def chunks() -> AsyncIterator[bytes]:
            done = 0
            while done < size:
                n = min(_READ, size - done)
                data = await anyio.to_thread.run_sync(os.pread, fd, n, offset + done)
                if len(data) != n:
                    raise StorageError(f"spooled NAR {path} shrank while importing")
                done += n
                yield data

        got = await blobs.put(chunks())
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(os.close, fd)
    if got != digest:
        raise StorageError(f"the blob service stored blob {digest} under {got}")
    return True


async def import_nar_file(
    path: str | os.PathLike[str],
    blobs: BlobService,
    directories: DirectoryService,
    *,
    expected_nar_sha256: bytes | None = None,
    expected_nar_size: int | None = None,
) -> NarImport:
    """Import the NAR in the file ``path`` (two passes, see the module docs).

    Raises :class:`~nixcompat.nar.NarError` (with the byte offset) for a
    malformed or non-canonical NAR (trailing bytes included), and
    ``InvalidRequest`` when the NAR's size or sha256 differ from the expected
    ones — in both cases before anything is stored.  A failure during the
    upload pass may leave orphan blobs, never directories.
    """
    file = Path(path)
    scan = await anyio.to_thread.run_sync(_scan, file)
    if expected_nar_size is not None and scan.nar_size != expected_nar_size:
        raise InvalidRequest(f"NAR {file} has {scan.nar_size} bytes, expected {expected_nar_size}")
    if expected_nar_sha256 is not None and scan.nar_sha256 != expected_nar_sha256:
        raise InvalidRequest(
            f"NAR {file} has sha256 {scan.nar_sha256.hex()}, expected {expected_nar_sha256.hex()}"
        )
    sent = [0, 0]
    slots = anyio.Semaphore(_UPLOADS)

    async def one(digest: B3Digest, offset: int, size: int) -> None:
        try:
            if await _upload(blobs, file, digest, offset, size):
                sent[0] += 1
                sent[1] += size
        finally:
            slots.release()

    with single_errors():
        async with anyio.create_task_group() as tg:
            for digest, (offset, size) in scan.blobs.items():
                await slots.acquire()  # at most _UPLOADS tasks exist at a time
                tg.start_soon(one, digest, offset, size)
    if scan.directories:
        async with directories.put_multiple() as putter:
            for directory in scan.directories:
                await putter.put(directory)
            root = await putter.close()
        if not isinstance(scan.node, DirectoryNode) or root != scan.node.digest:
            raise StorageError(f"the directory service stored the NAR's root under {root}")
    return NarImport(scan.node, scan.nar_size, scan.nar_sha256, sent[0], sent[1])


async def spool(
    stream: AsyncIterable[bytes] | AsyncReader, directory: str | os.PathLike[str] | None = None
) -> Path:
    """Write ``stream`` to a new temporary file (the caller deletes it); its path."""
    fd, name = await anyio.to_thread.run_sync(
        lambda: tempfile.mkstemp(prefix="tvix-nar-", suffix=".nar", dir=directory)
    )
    file = os.fdopen(fd, "wb")
    ok = False
    try:
        buffer = bytearray()
        if isinstance(stream, AsyncReader):
            while chunk := await stream.read(_READ):
                await anyio.to_thread.run_sync(file.write, chunk)
        else:
            async for chunk in stream:
                buffer += chunk
                if len(buffer) >= _READ:
                    await anyio.to_thread.run_sync(file.write, bytes(buffer))
                    buffer.clear()
        if buffer:
            await anyio.to_thread.run_sync(file.write, bytes(buffer))
        await anyio.to_thread.run_sync(file.close)
        ok = True
        return Path(name)
    finally:
        if not ok:  # synchronous cleanup: nothing to cancel
            file.close()
            with contextlib.suppress(OSError):
                os.unlink(name)


async def import_nar(
    stream: AsyncIterable[bytes] | AsyncReader,
    blobs: BlobService,
    directories: DirectoryService,
    *,
    expected_nar_sha256: bytes | None = None,
    expected_nar_size: int | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
) -> NarImport:
    """Import a NAR read from ``stream`` (chunks, or an object with ``async read(n)``).

    The NAR is spooled to a temporary file in ``tmp_dir`` (default: the
    system's), imported with :func:`import_nar_file`, and the file removed.
    """
    spooled = await spool(stream, tmp_dir)
    try:
        return await import_nar_file(
            spooled,
            blobs,
            directories,
            expected_nar_sha256=expected_nar_sha256,
            expected_nar_size=expected_nar_size,
        )
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: spooled.unlink(missing_ok=True))
