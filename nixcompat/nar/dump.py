"""Serialising trees to NAR: abstract :data:`NarNode` trees and file-system paths.

Each source has a *driver*, a generator that pushes the tree's events into a
:class:`NarWriter` and yields (``None``) after every node and every contents
chunk, so the same walk serves a pull-style byte iterator (``nar_chunks``,
``nar_from_path``) and push-style sinks (``write_node``, ``write_path``,
hashing).  Walks are iterative: depth is not limited by Python's recursion.

File-system semantics follow Nix 2.8's ``dumpPath``: ``lstat`` (symlinks are
never followed), entries sorted by the raw bytes of their names, a regular
file is executable when its owner-execute bit (``S_IXUSR``) is set, exactly
``st_size`` bytes are read (a file that shrinks while being read is an
error, extra bytes of a file that grew are ignored), and any other file type
(socket, fifo, device) is rejected with :class:`NarError`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator

from nixcompat.nar.model import NarDirectory, NarError, NarNode, NarRegular, NarSymlink
from nixcompat.nar.writer import NarWriter

#: Size of the reads of file contents.
CHUNK_SIZE = 1 << 20

_Driver = Callable[[NarWriter], Iterator[None]]


def _pull(drive: _Driver) -> Iterator[bytes]:
    """Run ``drive`` against a writer, yielding the produced bytes as they come."""
    pending: list[bytes] = []
    writer = NarWriter(pending.append)
    for _ in drive(writer):
        if pending:
            yield from pending
            pending.clear()
    writer.finish()
    yield from pending


def _drive_node(root: NarNode, writer: NarWriter) -> Iterator[None]:
    stack: list[Iterator[tuple[bytes, NarNode]]] = []

    def visit(node: NarNode) -> Iterator[None]:
        if isinstance(node, NarRegular):
            writer.begin_regular(node.executable, node.size)
            for chunk in node.contents.chunks():
                writer.write_contents(chunk)
                yield
            writer.end_regular()
        elif isinstance(node, NarSymlink):
            writer.symlink(node.target)
        elif isinstance(node, NarDirectory):
            writer.begin_directory()
            stack.append(iter(node.entries))
        else:
            raise NarError(f"not a NAR node: {node!r}")
        yield

    yield from visit(root)
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            writer.end_directory()
            if stack:
                writer.end_entry()
            yield
            continue
        name, child = item
        writer.begin_entry(name)
        yield from visit(child)
        if not isinstance(child, NarDirectory):
            writer.end_entry()


def write_node(node: NarNode, writer: NarWriter) -> None:
    """Push the events of the abstract tree ``node`` into ``writer`` (not finished)."""
    for _ in _drive_node(node, writer):
        pass


def nar_chunks(node: NarNode) -> Iterator[bytes]:
    """The NAR of an abstract tree, as chunks; file contents come from their sources."""
    return _pull(lambda writer: _drive_node(node, writer))


def nar_bytes(node: NarNode) -> bytes:
    """The whole NAR of an abstract tree (held in memory: for small trees)."""
    return b"".join(nar_chunks(node))


def _drive_file(
    path: bytes, writer: NarWriter, buffer: bytearray | None, chunk_size: int
) -> Iterator[None]:
    # O_NONBLOCK: a file swapped for a fifo after lstat must not hang the open
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    with open(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NarError(f"{os.fsdecode(path)!r} changed type while being dumped")
        size = st.st_size
        writer.begin_regular(bool(st.st_mode & stat.S_IXUSR), size)
        remaining = size
        view = memoryview(buffer) if buffer is not None else None
        while remaining:
            want = min(remaining, chunk_size)
            if view is not None:
                n = f.readinto(view[:want])
                data: bytes = view[:n]  # type: ignore[assignment]  # a memoryview, used at once
            else:
                data = f.read(want)
                n = len(data)
            if not n:
                raise NarError(
                    f"{os.fsdecode(path)!r} shrank while being dumped: "
                    f"got {size - remaining} of {size} bytes"
                )
            writer.write_contents(data)
            remaining -= n
            yield
        writer.end_regular()


def _drive_path(
    root: bytes, writer: NarWriter, buffer: bytearray | None, chunk_size: int
) -> Iterator[None]:
    stack: list[tuple[bytes, Iterator[bytes]]] = []

    def visit(path: bytes) -> Iterator[None]:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            yield from _drive_file(path, writer, buffer, chunk_size)
        elif stat.S_ISLNK(st.st_mode):
            writer.symlink(os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            writer.begin_directory()
            stack.append((path, iter(sorted(os.listdir(path)))))
        else:
            raise NarError(
                f"cannot put {os.fsdecode(path)!r} into a NAR: unsupported file type "
                f"{stat.filemode(st.st_mode)[0]!r} (only regular files, symlinks and directories)"
            )
        yield

    yield from visit(root)
    while stack:
        parent, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            writer.end_directory()
            if stack:
                writer.end_entry()
            yield
            continue
        depth = len(stack)
        writer.begin_entry(name)
        yield from visit(parent + b"/" + name)
        if len(stack) == depth:  # not a directory: its node is complete
            writer.end_entry()


def write_path(
    path: str | os.PathLike[str] | bytes,
    writer: NarWriter,
    *,
    buffer: bytearray | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> None:
    """Push the events of the file-system object at ``path`` into ``writer``.

    With ``buffer`` (at least ``chunk_size`` bytes), file contents are read
    into it and passed to the sink as ``memoryview`` slices that are only
    valid during the sink call: for sinks that consume at once (hashers).
    """
    if buffer is not None and len(buffer) < chunk_size:
        raise ValueError(f"buffer of {len(buffer)} bytes is smaller than chunk_size {chunk_size}")
    for _ in _drive_path(os.fsencode(path), writer, buffer, chunk_size):
        pass


def nar_from_path(
    path: str | os.PathLike[str] | bytes, *, chunk_size: int = CHUNK_SIZE
) -> Iterator[bytes]:
    """The NAR of the file-system object at ``path`` (like ``nix-store --dump``), streamed."""
    root = os.fsencode(path)
    return _pull(lambda writer: _drive_path(root, writer, None, chunk_size))


def dump_path(path: str | os.PathLike[str] | bytes) -> bytes:
    """The whole NAR of ``path`` in memory (for small trees)."""
    out = bytearray()
    writer = NarWriter(out.extend)
    write_path(path, writer)
    writer.finish()
    return bytes(out)
