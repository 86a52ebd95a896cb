"""castore domain types: digests, nodes and directories (PROTOCOL.md, tvix.castore.v1).

Invariants:

* Nodes and directories are immutable.  Construction checks Python types and
  that every ``size`` fits a protobuf ``uint64``, so :meth:`Directory.encode`
  is total; every *protocol* rule (names, ordering, digest lengths, symlink
  targets, the size sum) is checked by :meth:`Directory.validate`, because an
  invalid directory must still be representable to be rejected with a precise
  message.  Services only ever store validated directories.
* A directory's identity is ``blake3(encode())``, where ``encode()`` is the
  canonical proto3 encoding of ``tvix.castore.v1.Directory`` (fields in number
  order, default values omitted).  The encoder lives here, not in ``wire.py``:
  it *defines* the identity, and the tests cross-check it against betterproto,
  Google's protobuf and the vectors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import blake3

from clients.errors import InvalidRequest

DIGEST_LENGTH = 32
MAX_NAME_LENGTH = 255
UINT64_MAX = (1 << 64) - 1


class B3Digest(bytes):
    """A 32-byte BLAKE3 digest: ``bytes`` that checks its length and prints as hex."""

    def __new__(cls, value: bytes) -> B3Digest:
        if isinstance(value, B3Digest):
            return value
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"a digest is bytes, got {type(value).__name__}")
        raw = bytes(value)
        if len(raw) != DIGEST_LENGTH:
            raise InvalidRequest(
                f"a blake3 digest has {DIGEST_LENGTH} bytes, got {len(raw)} bytes ({raw[:40].hex()!r})"
            )
        return super().__new__(cls, raw)

    @classmethod
    def from_hex(cls, text: str) -> B3Digest:
        """Parse 64 lowercase or uppercase hex digits."""
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise InvalidRequest(f"blake3 digest {text[:80]!r} is not hex") from exc
        return cls(raw)

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> B3Digest:
        """The digest of ``data``, hashed on the calling thread (use for small data only)."""
        return cls(blake3.blake3(data).digest())

    def short(self) -> str:
        """The first 12 hex digits and an ellipsis, for messages."""
        return self.hex()[:12] + "…"

    def __repr__(self) -> str:
        return f"B3Digest({self.hex()})"

    def __str__(self) -> str:
        return self.hex()


def _show(value: bytes, limit: int = 40) -> str:
    """``repr`` of a byte string, shortened for messages."""
    return repr(value) if len(value) <= limit else repr(value[:limit])[:-1] + "…'"


def _check_bytes(owner: str, field: str, value: object) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{owner}.{field} must be bytes, got {type(value).__name__}")


def _check_size(owner: str, name: bytes, size: object) -> None:
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"{owner}.size must be int, got {type(size).__name__}")
    if not 0 <= size <= UINT64_MAX:
        raise InvalidRequest(f"{owner} {_show(name)} has size {size}, outside the uint64 range")


@dataclass(frozen=True, repr=False)
class DirectoryNode:
    """A child directory: its name, the digest of its Directory, and how many elements it holds."""

    name: bytes
    digest: bytes
    size: int

    def __post_init__(self) -> None:
        _check_bytes("DirectoryNode", "name", self.name)
        _check_bytes("DirectoryNode", "digest", self.digest)
        _check_size("DirectoryNode", self.name, self.size)

    def __repr__(self) -> str:
        return f"DirectoryNode({self.name!r}, {self.digest.hex()[:12]}…, size={self.size})"


@dataclass(frozen=True, repr=False)
class FileNode:
    """A regular file: its name, the blake3 digest of its contents, its length in bytes."""

    name: bytes
    digest: bytes
    size: int
    executable: bool = False

    def __post_init__(self) -> None:
        _check_bytes("FileNode", "name", self.name)
        _check_bytes("FileNode", "digest", self.digest)
        _check_size("FileNode", self.name, self.size)
        if not isinstance(self.executable, bool):
            raise TypeError(f"FileNode.executable must be bool, got {type(self.executable)}")

    def __repr__(self) -> str:
        x = ", executable" if self.executable else ""
        return f"FileNode({self.name!r}, {self.digest.hex()[:12]}…, size={self.size}{x})"


@dataclass(frozen=True)
class SymlinkNode:
    """A symbolic link: its name and its target (non-empty, no NUL once validated)."""

    name: bytes
    target: bytes

    def __post_init__(self) -> None:
        _check_bytes("SymlinkNode", "name", self.name)
        _check_bytes("SymlinkNode", "target", self.target)


Node = DirectoryNode | FileNode | SymlinkNode


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _bytes_field(tag: int, value: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(value)) + value if value else b""


def _uint_field(tag: int, value: int) -> bytes:
    return bytes((tag,)) + _varint(value) if value else b""


def encode_node(node: Node) -> bytes:
    """The canonical proto3 encoding of the node message (without the Node oneof wrapper)."""
    match node:
        case DirectoryNode(name, digest, size):
            return _bytes_field(0x0A, name) + _bytes_field(0x12, digest) + _uint_field(0x18, size)
        case FileNode(name, digest, size, executable):
            return (
                _bytes_field(0x0A, name)
                + _bytes_field(0x12, digest)
                + _uint_field(0x18, size)
                + _uint_field(0x20, int(executable))
            )
        case SymlinkNode(name, target):
            return _bytes_field(0x0A, name) + _bytes_field(0x12, target)


def _check_name(name: bytes) -> str | None:
    """Why ``name`` is not a valid directory entry name, or None."""
    if not name:
        return "is empty"
    if name in (b".", b".."):
        return "is not allowed"
    if b"/" in name:
        return "contains '/'"
    if b"\0" in name:
        return "contains NUL"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} bytes long, more than {MAX_NAME_LENGTH}"
    return None


@dataclass(frozen=True)
class Directory:
    """One directory level: child directories, files and symlinks, each list sorted by name.

    Lists given as any iterable are stored as tuples.  See the module docstring
    for what construction guarantees and what :meth:`validate` checks.
    """

    directories: tuple[DirectoryNode, ...] = ()
    files: tuple[FileNode, ...] = ()
    symlinks: tuple[SymlinkNode, ...] = ()

    def __post_init__(self) -> None:
        for field, kind in (
            ("directories", DirectoryNode),
            ("files", FileNode),
            ("symlinks", SymlinkNode),
        ):
            items = tuple(getattr(self, field))
            for item in items:
                if type(item) is not kind:
                    raise TypeError(f"Directory.{field} holds {kind.__name__}, got {item!r}")
            object.__setattr__(self, field, items)

    @classmethod
    def from_nodes(cls, nodes: Iterable[Node]) -> Directory:
        """A directory holding ``nodes``, each list sorted by name (duplicates are kept)."""
        items = sorted(nodes, key=lambda n: n.name)
        return cls(
            tuple(n for n in items if isinstance(n, DirectoryNode)),
            tuple(n for n in items if isinstance(n, FileNode)),
            tuple(n for n in items if isinstance(n, SymlinkNode)),
        )

    def nodes(self) -> Iterator[Node]:
        """Every child, all three lists merged in name order."""
        everything: list[Node] = [*self.directories, *self.files, *self.symlinks]
        yield from sorted(everything, key=lambda n: n.name)

    @cached_property
    def _encoded(self) -> bytes:
        out = bytearray()
        for tag, nodes in ((0x0A, self.directories), (0x12, self.files), (0x1A, self.symlinks)):
            for node in nodes:
                body = encode_node(node)
                out += bytes((tag,)) + _varint(len(body)) + body
        return bytes(out)

    @cached_property
    def _digest(self) -> B3Digest:
        return B3Digest.of(self._encoded)

    def encode(self) -> bytes:
        """The canonical protobuf encoding (cached)."""
        return self._encoded

    def digest(self) -> B3Digest:
        """blake3 of :meth:`encode` (cached): the directory's identity."""
        return self._digest

    def size(self) -> int:
        """Elements below this directory: one per child plus each child directory's size.

        This is the value a parent's ``DirectoryNode.size`` must carry.  It is an
        unbounded ``int``; :meth:`validate` rejects values beyond uint64.
        """
        children = len(self.directories) + len(self.files) + len(self.symlinks)
        return children + sum(d.size for d in self.directories)

    def validate(self) -> None:
        """Check every PROTOCOL.md rule that concerns this directory alone.

        Raises :class:`InvalidRequest` naming the rule, the value and this
        directory's digest.  Rules about other directories (a child is known,
        its size matches) need a store and are checked by the services.
        """
        where = f"(in directory {self.digest().short()})"
        seen: dict[bytes, str] = {}
        for kind, nodes in (
            ("directories", self.directories),
            ("files", self.files),
            ("symlinks", self.symlinks),
        ):
            previous: bytes | None = None
            for node in nodes:
                name = node.name
                problem = _check_name(name)
                if problem is not None:
                    raise InvalidRequest(f"directory entry name {_show(name)} {problem} {where}")
                if previous is not None and name <= previous:
                    if name == previous:
                        raise InvalidRequest(f"duplicate name {_show(name)} in {kind} {where}")
                    raise InvalidRequest(
                        f"{kind} are not sorted by name: {_show(name)} comes after "
                        f"{_show(previous)} {where}"
                    )
                previous = name
                if name in seen:
                    raise InvalidRequest(
                        f"duplicate name {_show(name)} in {seen[name]} and {kind} {where}"
                    )
                seen[name] = kind
                if isinstance(node, SymlinkNode):
                    if not node.target:
                        raise InvalidRequest(f"symlink {_show(name)} has an empty target {where}")
                    if b"\0" in node.target:
                        raise InvalidRequest(
                            f"symlink {_show(name)} target {_show(node.target)} contains NUL {where}"
                        )
                elif len(node.digest) != DIGEST_LENGTH:
                    raise InvalidRequest(
                        f"directory entry {_show(name)} has a digest of {len(node.digest)} bytes, "
                        f"expected {DIGEST_LENGTH} {where}"
                    )
        total = self.size()
        if total > UINT64_MAX:
            raise InvalidRequest(f"directory size {total} overflows uint64 {where}")

    def __repr__(self) -> str:
        nodes = list(self.nodes())
        names = ", ".join(_show(n.name) for n in nodes[:8]) + (", …" if len(nodes) > 8 else "")
        return f"Directory({self.digest().short()} [{names}])"
