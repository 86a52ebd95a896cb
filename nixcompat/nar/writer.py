"""A push-style NAR writer: the caller sends events, bytes go to a sink.

:class:`NarWriter` knows nothing about where a tree comes from; the caller
drives it with events in NAR order and it writes canonical NAR bytes to
``sink`` (any ``write(bytes)`` callable: ``bytearray.extend``, a hasher's
``update``, a file's ``write``, ``list.append`` of a queue the caller
drains).  Because the contents of a regular file are pushed chunk by chunk
(:meth:`NarWriter.begin_regular` / :meth:`~NarWriter.write_contents` /
:meth:`~NarWriter.end_regular`), an async caller can interleave awaits
(castore reads) between events and pull the produced bytes as it goes.

Event grammar (anything else raises :class:`NarError`)::

    node  := regular(...) | begin_regular write_contents* end_regular
           | symlink(target)
           | begin_directory { begin_entry(name) node end_entry }* end_directory
    NAR   := node finish()

``directory()`` and ``entry(name)`` are context-manager spellings of the
begin/end pairs (the end is not written when the block raises).  Entry names
must be strictly increasing by bytes; the writer checks names and targets,
and that a file's pushed contents add up to its declared size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from nixcompat.nar.model import (
    MAX_SIZE,
    NarError,
    check_name,
    check_target,
    encode_str,
    padding,
    u64,
)

Sink = Callable[[bytes], object]

# The NAR's tokens, encoded (also for writers that frame a NAR themselves, such as the
# fast ingest's walker): a node opens with REGULAR [EXECUTABLE] CONTENTS, SYMLINK or
# DIRECTORY, a directory entry with ENTRY <name> NODE; CLOSE ends either.
MAGIC = encode_str(b"nix-archive-1")
OPEN = encode_str(b"(")
CLOSE = encode_str(b")")
_TYPE = encode_str(b"type")
REGULAR = OPEN + _TYPE + encode_str(b"regular")
EXECUTABLE = encode_str(b"executable") + encode_str(b"")
CONTENTS = encode_str(b"contents")
SYMLINK = OPEN + _TYPE + encode_str(b"symlink") + encode_str(b"target")
DIRECTORY = OPEN + _TYPE + encode_str(b"directory")
ENTRY = encode_str(b"entry") + OPEN + encode_str(b"name")
NODE = encode_str(b"node")


class _Frame:
    """One open directory: the last entry name, whether an entry is open and has its node."""

    __slots__ = ("has_node", "in_entry", "last")

    def __init__(self) -> None:
        self.last: bytes | None = None
        self.in_entry = False
        self.has_node = False


class NarWriter:
    """Writes one NAR to ``sink`` from a stream of events (see module docs).

    ``size`` is the number of bytes written so far; after :meth:`finish` it
    is the NAR size.  Not thread-safe; one writer per NAR.
    """

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.size = 0
        self._dirs: list[_Frame] = []
        self._root_started = False
        self._remaining: int | None = None  # bytes still owed by an open regular file
        self._file_size = 0

    def __repr__(self) -> str:
        return f"NarWriter(size={self.size}, depth={len(self._dirs)})"

    def _emit(self, data: bytes) -> None:
        self.size += len(data)
        self._sink(data)

    def _start_node(self, what: str) -> bytes:
        """Checks that a node may start here; returns the prefix to emit (magic for the root)."""
        if self._remaining is not None:
            raise NarError(f"cannot write {what}: a regular file is still open")
        if not self._dirs:
            if self._root_started:
                raise NarError(f"cannot write {what}: the root node is already written")
            self._root_started = True
            return MAGIC
        frame = self._dirs[-1]
        if not frame.in_entry:
            raise NarError(f"cannot write {what} directly in a directory: call begin_entry first")
        if frame.has_node:
            raise NarError(f"cannot write {what}: this entry already has its node")
        frame.has_node = True
        return b""

    def begin_regular(self, executable: bool, size: int) -> None:
        """Start a regular file of ``size`` bytes; push its contents next."""
        if not 0 <= size <= MAX_SIZE:
            raise NarError(f"regular file size {size} is out of range")
        prefix = self._start_node("a regular file")
        marker = EXECUTABLE if executable else b""
        self._emit(prefix + REGULAR + marker + CONTENTS + u64(size))
        self._remaining = size
        self._file_size = size

    def write_contents(self, data: bytes) -> None:
        """Push the next chunk of the open regular file's contents (passed to the sink as is)."""
        if self._remaining is None:
            raise NarError("write_contents without an open regular file")
        n = len(data)
        if n > self._remaining:
            raise NarError(
                f"regular file contents exceed the declared size {self._file_size} "
                f"(got {self._file_size - self._remaining + n} bytes)"
            )
        if n:
            self._remaining -= n
            self.size += n
            self._sink(data)

    def end_regular(self) -> None:
        """Finish the open regular file; its contents must be complete."""
        if self._remaining is None:
            raise NarError("end_regular without an open regular file")
        if self._remaining:
            raise NarError(
                f"regular file contents are {self._file_size - self._remaining} bytes, "
                f"short of the declared size {self._file_size}"
            )
        self._remaining = None
        self._emit(padding(self._file_size) + CLOSE)

    def regular(self, executable: bool, size: int, chunks: Iterable[bytes]) -> None:
        """A whole regular file whose contents ``chunks`` yields."""
        self.begin_regular(executable, size)
        for chunk in chunks:
            self.write_contents(chunk)
        self.end_regular()

    def symlink(self, target: bytes) -> None:
        """A symlink node."""
        check_target(target)
        prefix = self._start_node("a symlink")
        self._emit(prefix + SYMLINK + encode_str(target) + CLOSE)

    def begin_directory(self) -> None:
        """Open a directory node; entries follow, then :meth:`end_directory`."""
        prefix = self._start_node("a directory")
        self._emit(prefix + DIRECTORY)
        self._dirs.append(_Frame())

    def end_directory(self) -> None:
        """Close the innermost open directory."""
        if self._remaining is not None:
            raise NarError("end_directory while a regular file is still open")
        if not self._dirs or self._dirs[-1].in_entry:
            raise NarError("end_directory without an open directory (close the entry first)")
        self._dirs.pop()
        self._emit(CLOSE)

    def begin_entry(self, name: bytes) -> None:
        """Open an entry of the innermost directory; exactly one node follows."""
        if self._remaining is not None:
            raise NarError("begin_entry while a regular file is still open")
        if not self._dirs or self._dirs[-1].in_entry:
            raise NarError(f"begin_entry({name!r}) outside of an open directory")
        check_name(name)
        frame = self._dirs[-1]
        last = frame.last
        if last is not None and name <= last:
            what = "duplicate" if name == last else "unsorted"
            raise NarError(f"{what} directory entry name {name!r} after {last!r}")
        frame.last, frame.in_entry, frame.has_node = name, True, False
        self._emit(ENTRY + encode_str(name) + NODE)

    def end_entry(self) -> None:
        """Close the open entry; its node must be complete."""
        if self._remaining is not None:
            raise NarError("end_entry while a regular file is still open")
        if not self._dirs or not self._dirs[-1].in_entry:
            raise NarError("end_entry without an open entry")
        frame = self._dirs[-1]
        if not frame.has_node:
            raise NarError(f"entry {frame.last!r} has no node")
        frame.in_entry = False
        self._emit(CLOSE)

    @contextmanager
    def directory(self) -> Iterator[NarWriter]:
        """``with w.directory(): ...`` = begin_directory ... end_directory."""
        self.begin_directory()
        yield self
        self.end_directory()

    @contextmanager
    def entry(self, name: bytes) -> Iterator[NarWriter]:
        """``with w.entry(name): <one node>`` = begin_entry ... end_entry."""
        self.begin_entry(name)
        yield self
        self.end_entry()

    def finish(self) -> int:
        """Check that the NAR is complete; returns its size."""
        if not self._root_started or self._dirs or self._remaining is not None:
            raise NarError("NAR is incomplete: the root node is not finished")
        return self.size
