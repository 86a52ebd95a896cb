"""A streaming, strict NAR reader.

:func:`read_nar` reads a NAR from anything with ``read(n)`` and yields one
:class:`NarEntry` per node in NAR order (pre-order, each directory before its
entries; ``path`` is the tuple of names from the root, ``()`` for the root).

Contract for regular files: the entry carries a :class:`RegularContents`
handle; read the contents through it (``read(n)``, ``chunks()``) *before*
advancing the iterator.  Advancing skips whatever was not read (still
checking it arrives and is correctly padded) and closes the handle; using it
afterwards raises ``RuntimeError``.  Contents are never buffered by the
reader, so a NAR of any size is read in bounded memory.

Only canonical NARs are accepted (tvix's rules), everything else raises
:class:`NarError` naming the problem and the byte offset: wrong magic,
unknown tags or token order, non-zero padding, truncation, entry names that
are empty, ``.``, ``..``, contain ``/`` or NUL, are longer than
:data:`MAX_NAME_LEN` or are not strictly increasing by bytes, symlink targets
that are empty, contain NUL or are longer than :data:`MAX_TARGET_LEN`, and
directories nested deeper than ``max_depth``.  No allocation is driven by an
untrusted length beyond those limits; contents are read in bounded chunks.

The reader stops after the root node.  Bytes after it are left unread unless
``reject_trailing=True``, which makes them an error (``read_tree`` defaults
to rejecting).  Pass a buffered stream: the reader does many small reads.
"""

from __future__ import annotations

import enum
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from nixcompat.nar.model import (
    MAX_NAME_LEN,
    MAX_TARGET_LEN,
    BytesContents,
    NarDirectory,
    NarError,
    NarNode,
    NarRegular,
    NarSymlink,
    check_name,
    check_target,
    pad_len,
)

#: Default limit on directory nesting (the root directory is depth 1).
MAX_DEPTH = 1024
_TOKEN_LIMIT = 16
_READ_LIMIT = 1 << 20  # largest single read() asked of the stream
_MAGIC = b"nix-archive-1"


class Readable(Protocol):
    """Anything with ``read(n) -> bytes`` (short reads allowed, ``b''`` at EOF)."""

    def read(self, n: int, /) -> bytes: ...


class _Stream:
    """A byte source that counts its offset and reads exactly or fails."""

    def __init__(self, source: Readable) -> None:
        self._read = source.read
        self.offset = 0

    def read_exact(self, n: int, what: str) -> bytes:
        data = self._read(min(n, _READ_LIMIT)) if n else b""
        if len(data) != n:
            parts = [data] if data else []
            got = len(data)
            while got < n:
                more = self._read(min(n - got, _READ_LIMIT))
                if not more:
                    raise NarError(f"unexpected end of NAR while reading {what}", self.offset + got)
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        self.offset += n
        return data

    def read_u64(self, what: str) -> int:
        return int.from_bytes(self.read_exact(8, what), "little")

    def read_padding(self, n: int, what: str) -> None:
        pad = pad_len(n)
        if pad:
            start = self.offset
            if self.read_exact(pad, f"padding after {what}").count(0) != pad:
                raise NarError(f"non-zero padding after {what}", start)

    def read_str(self, limit: int, what: str) -> bytes:
        start = self.offset
        n = self.read_u64(f"length of {what}")
        if n > limit:
            raise NarError(f"{what} is {n} bytes long, more than {limit}", start)
        data = self.read_exact(n, what)
        self.read_padding(n, what)
        return data

    def expect(self, token: bytes, where: str) -> None:
        start = self.offset
        got = self.read_str(_TOKEN_LIMIT, f"token {token.decode()!r} ({where})")
        if got != token:
            raise NarError(f"expected {token.decode()!r} ({where}), got {got!r}", start)

    def at_eof(self) -> bool:
        return not self._read(1)


class RegularContents:
    """The contents of one regular file, read from the NAR stream on demand."""

    def __init__(self, stream: _Stream, size: int) -> None:
        self.size = size
        self._stream = stream
        self._remaining = size
        self._closed = False

    def __repr__(self) -> str:
        return f"RegularContents(size={self.size}, remaining={self._remaining})"

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return self._remaining

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` more bytes (all the rest when ``n < 0``); ``b''`` at the end."""
        if self._closed:
            raise RuntimeError("regular file contents read after the NAR reader advanced")
        if n < 0:
            return b"".join(self.chunks())
        n = min(n, self._remaining)
        data = self._stream.read_exact(n, "regular file contents")
        self._remaining -= n
        return data

    def chunks(self, chunk_size: int = _READ_LIMIT) -> Iterator[bytes]:
        """The rest of the contents in chunks of at most ``chunk_size`` bytes."""
        while self._remaining:
            yield self.read(chunk_size)

    def _finish(self) -> None:
        for _ in self.chunks():
            pass
        self._closed = True
        self._stream.read_padding(self.size, "regular file contents")


class NarKind(enum.Enum):
    """The type of a NAR node."""

    REGULAR = "regular"
    SYMLINK = "symlink"
    DIRECTORY = "directory"


@dataclass(frozen=True)
class NarEntry:
    """One node of a NAR, as :func:`read_nar` yields it.

    ``offset`` is where the node's ``(`` starts.  ``executable``, ``size`` and
    ``contents`` are for regular files, ``target`` for symlinks.
    """

    path: tuple[bytes, ...]
    kind: NarKind
    offset: int
    executable: bool = False
    size: int = 0
    target: bytes | None = None
    contents: RegularContents | None = field(default=None, compare=False, repr=False)


class _OpenDir:
    __slots__ = ("in_entry", "last", "path")

    def __init__(self, path: tuple[bytes, ...]) -> None:
        self.path = path
        self.last: bytes | None = None
        self.in_entry = False


def _as_readable(source: Readable | bytes | bytearray | memoryview) -> Readable:
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(source)
    return source


def _read_node(stream: _Stream, path: tuple[bytes, ...], depth: int, max_depth: int) -> NarEntry:
    """Reads a node's header; a regular file's contents and ``)`` are left to the caller."""
    start = stream.offset
    stream.expect(b"(", "start of node")
    stream.expect(b"type", "node type")
    tag_start = stream.offset
    tag = stream.read_str(_TOKEN_LIMIT, "node type")
    if tag == b"regular":
        executable = False
        token_start = stream.offset
        token = stream.read_str(_TOKEN_LIMIT, "token 'executable' or 'contents'")
        if token == b"executable":
            marker_start = stream.offset
            marker = stream.read_str(_TOKEN_LIMIT, "executable marker value")
            if marker:
                raise NarError(
                    f"executable marker must be followed by an empty string, got {marker!r}",
                    marker_start,
                )
            executable = True
            token_start = stream.offset
            token = stream.read_str(_TOKEN_LIMIT, "token 'contents'")
        if token != b"contents":
            raise NarError(f"expected 'contents' in regular file, got {token!r}", token_start)
        size = stream.read_u64("regular file size")
        contents = RegularContents(stream, size)
        return NarEntry(path, NarKind.REGULAR, start, executable, size, None, contents)
    if tag == b"symlink":
        stream.expect(b"target", "symlink")
        target_start = stream.offset
        target = stream.read_str(MAX_TARGET_LEN, "symlink target")
        check_target(target, target_start)
        stream.expect(b")", "end of symlink")
        return NarEntry(path, NarKind.SYMLINK, start, target=target)
    if tag == b"directory":
        if depth >= max_depth:
            raise NarError(f"directories nested deeper than {max_depth}", start)
        return NarEntry(path, NarKind.DIRECTORY, start)
    raise NarError(f"unknown node type {tag!r}", tag_start)


def read_nar(
    source: Readable | bytes | bytearray | memoryview,
    *,
    reject_trailing: bool = False,
    max_depth: int = MAX_DEPTH,
) -> Iterator[NarEntry]:
    """The nodes of the NAR read from ``source``, in NAR order (see module docs)."""
    stream = _Stream(_as_readable(source))
    magic = stream.read_str(_TOKEN_LIMIT, "magic")
    if magic != _MAGIC:
        raise NarError(f"not a NAR: expected magic {_MAGIC!r}, got {magic!r}", 0)
    dirs: list[_OpenDir] = []
    path: tuple[bytes, ...] = ()
    while True:
        entry = _read_node(stream, path, len(dirs), max_depth)
        yield entry
        if entry.contents is not None:
            entry.contents._finish()
            stream.expect(b")", "end of regular file")
        elif entry.kind is NarKind.DIRECTORY:
            dirs.append(_OpenDir(path))
        while dirs:  # close finished entries and directories, find the next node
            current = dirs[-1]
            if current.in_entry:
                stream.expect(b")", "end of directory entry")
                current.in_entry = False
            token_start = stream.offset
            token = stream.read_str(_TOKEN_LIMIT, "token 'entry' or ')'")
            if token == b")":
                dirs.pop()
                continue
            if token != b"entry":
                raise NarError(f"expected 'entry' or ')' in directory, got {token!r}", token_start)
            stream.expect(b"(", "start of directory entry")
            stream.expect(b"name", "directory entry")
            name_start = stream.offset
            name = stream.read_str(MAX_NAME_LEN, "directory entry name")
            check_name(name, name_start)
            if current.last is not None and name <= current.last:
                problem = (
                    "duplicate" if name == current.last else "unsorted (not strictly increasing)"
                )
                raise NarError(
                    f"{problem} directory entry name {name!r} after {current.last!r}", name_start
                )
            current.last = name
            stream.expect(b"node", "directory entry")
            current.in_entry = True
            path = (*current.path, name)
            break
        if not dirs:
            break
    if reject_trailing and not stream.at_eof():
        raise NarError("trailing data after the end of the NAR", stream.offset)


def read_tree(
    source: Readable | bytes | bytearray | memoryview,
    *,
    reject_trailing: bool = True,
    max_depth: int = MAX_DEPTH,
) -> NarNode:
    """The whole NAR as an abstract tree, contents held in memory (for small NARs)."""
    root: NarNode | None = None
    stack: list[list[tuple[bytes, NarNode]]] = []  # entries of each open directory

    def close_to(depth: int) -> None:
        nonlocal root
        while len(stack) > depth:
            node = NarDirectory(tuple(stack.pop()))
            if stack:
                name = stack[-1].pop()[0]
                stack[-1].append((name, node))
            else:
                root = node

    for entry in read_nar(source, reject_trailing=reject_trailing, max_depth=max_depth):
        close_to(len(entry.path))
        node: NarNode
        if entry.contents is not None:
            node = NarRegular(entry.executable, entry.size, BytesContents(entry.contents.read()))
        elif entry.target is not None:
            node = NarSymlink(entry.target)
        else:
            node = NarDirectory()
        if stack:
            stack[-1].append((entry.path[-1], node))
        else:
            root = node
        if entry.kind is NarKind.DIRECTORY:
            stack.append([])
    close_to(0)
    assert root is not None  # read_nar always yields the root or raises
    return root
