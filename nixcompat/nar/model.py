"""The abstract NAR tree, the NAR error, and the wire encoding of NAR tokens.

A NAR (Nix ARchive) is a canonical serialisation of one file-system object:
a regular file (with an executable bit), a symlink, or a directory of named
entries sorted by the raw bytes of their names.  Every token is a *string*:
a little-endian u64 length, the bytes, and zero padding to a multiple of 8::

    nar       := str("nix-archive-1") node
    node      := "(" "type" "regular" ["executable" ""] "contents" <u64 size> <data+pad> ")"
               | "(" "type" "symlink" "target" str(target) ")"
               | "(" "type" "directory" { "entry" "(" "name" str(name) "node" node ")" }* ")"

The tree model here is deliberately content-free: a :class:`NarRegular` holds
its size and a :class:`ChunkSource` that yields its contents on demand, so a
store can render a NAR from a content-addressed blob store without touching
disk or holding whole files in memory.  All node types are frozen and check
their invariants on construction (raising :class:`NarError`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from nixcompat.errors import NixCompatError

#: Longest entry name accepted (NAME_MAX on Linux; tvix's ``MAX_NAME_LEN``).
MAX_NAME_LEN = 255
#: Longest symlink target accepted (PATH_MAX - 1; tvix's ``MAX_TARGET_LEN``).
MAX_TARGET_LEN = 4095
#: Largest regular file size representable in a NAR.
MAX_SIZE = 2**64 - 1

_U64 = struct.Struct("<Q")
_ZEROS = bytes(8)


class NarError(NixCompatError):
    """A NAR that is malformed or non-canonical, or a tree that cannot be one.

    ``offset`` is the byte offset in the NAR stream where the problem starts
    (``None`` when the error is not about a position in a stream); it is also
    part of the message.
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        self.offset = offset
        if offset is not None:
            message = f"{message} (at byte offset {offset})"
        super().__init__(message)


def pad_len(n: int) -> int:
    """The number of zero bytes that follow ``n`` bytes of string data."""
    return -n & 7


def u64(n: int) -> bytes:
    """``n`` as a little-endian u64 (the length prefix of every NAR string)."""
    return _U64.pack(n)


def encode_str(data: bytes) -> bytes:
    """One NAR string token: length, bytes, zero padding."""
    return _U64.pack(len(data)) + data + _ZEROS[: pad_len(len(data))]


def padding(n: int) -> bytes:
    """The zero padding that follows ``n`` bytes of file contents."""
    return _ZEROS[: pad_len(n)]


def check_name(name: bytes, offset: int | None = None) -> None:
    """Raise :class:`NarError` unless ``name`` is a valid directory entry name."""
    if not name:
        raise NarError("empty directory entry name", offset)
    if len(name) > MAX_NAME_LEN:
        raise NarError(
            f"directory entry name {name[:32]!r}... is {len(name)} bytes long, "
            f"more than {MAX_NAME_LEN}",
            offset,
        )
    if name in (b".", b".."):
        raise NarError(f"directory entry name {name!r} is not allowed", offset)
    if b"/" in name:
        raise NarError(f"directory entry name {name!r} contains '/'", offset)
    if b"\0" in name:
        raise NarError(f"directory entry name {name!r} contains NUL", offset)


def check_target(target: bytes, offset: int | None = None) -> None:
    """Raise :class:`NarError` unless ``target`` is a valid symlink target."""
    if not target:
        raise NarError("symlink target is empty", offset)
    if len(target) > MAX_TARGET_LEN:
        raise NarError(
            f"symlink target {target[:32]!r}... is {len(target)} bytes long, "
            f"more than {MAX_TARGET_LEN}",
            offset,
        )
    if b"\0" in target:
        raise NarError(f"symlink target {target!r} contains NUL", offset)


@runtime_checkable
class ChunkSource(Protocol):
    """The contents of a regular file, produced on demand.

    ``chunks()`` yields the contents as consecutive byte chunks (of any sizes)
    and may be called more than once, each time yielding the contents anew.
    The writer checks that the chunks add up to the node's ``size``.
    """

    def chunks(self) -> Iterable[bytes]: ...


@dataclass(frozen=True)
class BytesContents:
    """A :class:`ChunkSource` over bytes held in memory."""

    data: bytes
    chunk_size: int = 1 << 20

    def chunks(self) -> Iterator[bytes]:
        data = self.data
        if len(data) <= self.chunk_size:
            yield data
            return
        view = memoryview(data)
        for start in range(0, len(data), self.chunk_size):
            yield bytes(view[start : start + self.chunk_size])

    def __repr__(self) -> str:
        shown = self.data if len(self.data) <= 40 else self.data[:40] + b"..."
        return f"BytesContents({shown!r}, {len(self.data)} bytes)"


@dataclass(frozen=True)
class NarRegular:
    """A regular file: executable bit, size, and a source of its contents."""

    executable: bool
    size: int
    contents: ChunkSource

    def __post_init__(self) -> None:
        if not 0 <= self.size <= MAX_SIZE:
            raise NarError(f"regular file size {self.size} is out of range")
        if isinstance(self.contents, BytesContents) and len(self.contents.data) != self.size:
            raise NarError(
                f"regular file size {self.size} does not match its "
                f"{len(self.contents.data)} bytes of contents"
            )

    @classmethod
    def from_bytes(cls, data: bytes, *, executable: bool = False) -> NarRegular:
        """A regular file whose contents are ``data``."""
        return cls(executable, len(data), BytesContents(bytes(data)))


@dataclass(frozen=True)
class NarSymlink:
    """A symlink; the target is opaque bytes (never resolved)."""

    target: bytes

    def __post_init__(self) -> None:
        check_target(self.target)


@dataclass(frozen=True)
class NarDirectory:
    """A directory: entries strictly sorted by the raw bytes of their names."""

    entries: tuple[tuple[bytes, NarNode], ...] = ()

    def __post_init__(self) -> None:
        previous: bytes | None = None
        for name, _node in self.entries:
            check_name(name)
            if previous is not None and name <= previous:
                what = "duplicate" if name == previous else "unsorted"
                raise NarError(
                    f"{what} directory entry name {name!r} after {previous!r}: "
                    "entries must be strictly sorted by bytes"
                )
            previous = name

    @classmethod
    def of(cls, entries: Mapping[Any, NarNode]) -> NarDirectory:
        """A directory from a mapping of ``bytes`` or ``str`` (UTF-8 encoded) names, sorted."""
        named: list[tuple[bytes, NarNode]] = []
        for name, node in entries.items():
            if isinstance(name, str):
                name = name.encode()
            elif not isinstance(name, bytes):
                raise TypeError(f"directory entry name {name!r} is neither bytes nor str")
            named.append((name, node))
        return cls(tuple(sorted(named, key=lambda item: item[0])))


NarNode = NarRegular | NarSymlink | NarDirectory
