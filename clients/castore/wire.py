"""The one place converting tvix.castore.v1 betterproto messages to and from domain types.

Decoding is defensive: betterproto does not check wire types (a varint where
a message belongs decodes as an ``int``), so every field's Python type is
checked here and anything malformed raises :class:`InvalidRequest` naming the
field.  Decoding does *not* apply the protocol rules; call
``Directory.validate()`` for that.

:func:`expect_message` and :func:`expect_type` are those checks, and
:func:`parse_message` parses bytes with the same care; the store's and the
builder's wire modules use them too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import betterproto

from clients.castore.model import Directory, DirectoryNode, FileNode, Node, SymlinkNode
from clients.errors import InvalidRequest
from proto.gen.tvix.castore import v1 as castore_pb


def expect_type(value: object, kind: type, where: str, *, field: str | None = None) -> Any:
    """``value`` when its type is exactly ``kind``, else InvalidRequest.

    betterproto does not check wire types: a varint where bytes belong decodes
    as an ``int``.  The message is ``malformed {where}: has wire type of int,
    expected bytes`` (``field 'name' has …`` when ``field`` is given).
    """
    if type(value) is not kind:
        subject = "has" if field is None else f"field {field!r} has"
        raise InvalidRequest(
            f"malformed {where}: {subject} wire type of {type(value).__name__}, "
            f"expected {kind.__name__}"
        )
    return value


def expect_message(value: object, kind: type, where: str) -> Any:
    """``value`` when it is a ``kind`` message, else InvalidRequest naming ``where`` and its type."""
    if not isinstance(value, kind):
        raise InvalidRequest(
            f"malformed {where}: expected a {kind.__name__} message, got {type(value).__name__}"
        )
    return value


def _field(message: Any, name: str, kind: type, where: str) -> Any:
    return expect_type(getattr(message, name), kind, where, field=name)


def directory_node_from_proto(message: castore_pb.DirectoryNode) -> DirectoryNode:
    m = expect_message(message, castore_pb.DirectoryNode, "DirectoryNode")
    return DirectoryNode(
        name=_field(m, "name", bytes, "DirectoryNode"),
        digest=_field(m, "digest", bytes, "DirectoryNode"),
        size=_field(m, "size", int, "DirectoryNode"),
    )


def file_node_from_proto(message: castore_pb.FileNode) -> FileNode:
    m = expect_message(message, castore_pb.FileNode, "FileNode")
    return FileNode(
        name=_field(m, "name", bytes, "FileNode"),
        digest=_field(m, "digest", bytes, "FileNode"),
        size=_field(m, "size", int, "FileNode"),
        executable=_field(m, "executable", bool, "FileNode"),
    )


def symlink_node_from_proto(message: castore_pb.SymlinkNode) -> SymlinkNode:
    m = expect_message(message, castore_pb.SymlinkNode, "SymlinkNode")
    return SymlinkNode(
        name=_field(m, "name", bytes, "SymlinkNode"),
        target=_field(m, "target", bytes, "SymlinkNode"),
    )


def directory_from_proto(message: castore_pb.Directory) -> Directory:
    """The domain Directory of a message (not validated; unknown fields are dropped)."""
    m = expect_message(message, castore_pb.Directory, "Directory")
    return Directory(
        directories=tuple(directory_node_from_proto(n) for n in m.directories),
        files=tuple(file_node_from_proto(n) for n in m.files),
        symlinks=tuple(symlink_node_from_proto(n) for n in m.symlinks),
    )


def directory_to_proto(directory: Directory) -> castore_pb.Directory:
    return castore_pb.Directory(
        directories=[
            castore_pb.DirectoryNode(name=n.name, digest=n.digest, size=n.size)
            for n in directory.directories
        ],
        files=[
            castore_pb.FileNode(name=n.name, digest=n.digest, size=n.size, executable=n.executable)
            for n in directory.files
        ],
        symlinks=[castore_pb.SymlinkNode(name=n.name, target=n.target) for n in directory.symlinks],
    )


def node_from_proto(message: castore_pb.Node) -> Node:
    """The node in a ``Node`` oneof; InvalidRequest when none is set."""
    m = expect_message(message, castore_pb.Node, "Node")
    which, value = betterproto.which_one_of(m, "node")
    match which:
        case "directory":
            return directory_node_from_proto(value)
        case "file":
            return file_node_from_proto(value)
        case "symlink":
            return symlink_node_from_proto(value)
    raise InvalidRequest("malformed Node: none of directory, file, symlink is set")


def node_to_proto(node: Node) -> castore_pb.Node:
    match node:
        case DirectoryNode(name, digest, size):
            return castore_pb.Node(
                directory=castore_pb.DirectoryNode(name=name, digest=digest, size=size)
            )
        case FileNode(name, digest, size, executable):
            return castore_pb.Node(
                file=castore_pb.FileNode(name=name, digest=digest, size=size, executable=executable)
            )
        case SymlinkNode(name, target):
            return castore_pb.Node(symlink=castore_pb.SymlinkNode(name=name, target=target))


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it, read as betterproto reads it: up to
    10 bytes, not cut to 64 bits; ValueError naming the byte when it runs past the end of
    ``data`` or past 10 bytes."""
    if pos < len(data) and data[pos] < 0x80:  # most tags, lengths and values: one byte
        return data[pos], pos + 1
    value = shift = 0
    for at in range(pos, min(pos + 10, len(data))):
        byte = data[at]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at + 1
        shift += 7
    problem = "runs past the end" if pos + 10 > len(data) else "is longer than 10 bytes"
    raise ValueError(f"a varint at byte {pos} {problem}")


def iter_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)`` of each top-level field of ``data``, in order,
    read as betterproto reads them.

    The value is the varint of a varint field, the bytes of a length-delimited
    one, and 0 for a fixed-size field (skipped) and for a group or invalid wire
    type (3, 4, 6, 7: betterproto reads the tag alone).  ValueError naming the
    byte where a field starts when it runs past the end of ``data`` (a field
    is only read when the iteration reaches it).
    """
    at, end = 0, len(data)
    while at < end:
        field = at
        key, at = read_varint(data, at)
        wire_type = key & 7
        value: int | bytes = 0
        if wire_type == 0:
            value, at = read_varint(data, at)
        elif wire_type == 2:
            length, at = read_varint(data, at)
            value, at = data[at : at + length], at + length
        elif wire_type in (1, 5):
            at += 8 if wire_type == 1 else 4
        if at > end:
            raise ValueError(f"the field at byte {field} runs past the end")
        yield key >> 3, wire_type, value


def check_framing(data: bytes) -> None:
    """ValueError unless ``data``'s top-level fields are whole: every tag and varint ends,
    every length-delimited and fixed-size field fits in ``data``.

    betterproto reads a cut-short last field short instead of failing, so a
    truncated message could otherwise still decode (and even validate).  Only
    the top level is walked, up to the first group or invalid wire type: which
    length-delimited fields are sub-messages is the schema's business, and
    betterproto parses those itself.
    """
    for _, wire_type, _ in iter_fields(data):
        if wire_type not in (0, 1, 2, 5):  # groups, invalid types: no length; betterproto decides
            return


def parse_message(data: bytes, kind: type) -> Any:
    """``kind().parse(data)``; InvalidRequest naming ``kind`` and the size when it fails,
    or when a top-level field is cut short (:func:`check_framing`)."""
    try:
        check_framing(data)
        return kind().parse(data)
    except Exception as exc:  # betterproto raises assorted types for truncated input
        raise InvalidRequest(
            f"malformed {kind.__name__} protobuf ({len(data)} bytes): {type(exc).__name__}: {exc}"
        ) from exc


def decode_directory(data: bytes) -> Directory:
    """Parse a protobuf-encoded Directory (not validated); InvalidRequest when malformed."""
    return directory_from_proto(parse_message(data, castore_pb.Directory))
