"""The shared defensive checks of the wire modules (``clients.castore.wire.expect_*``).

betterproto checks no wire types, so each decoder (castore, store, build)
checks every field's Python type through the same two functions, with the
same messages.
"""

from __future__ import annotations

import pytest

from clients.build import wire as build_wire
from clients.castore import wire as castore_wire
from clients.castore.wire import expect_message, expect_type
from clients.errors import InvalidRequest
from clients.store import wire as store_wire
from proto.gen.tvix.build import v1 as build_pb
from proto.gen.tvix.castore import v1 as castore_pb
from proto.gen.tvix.store import v1 as store_pb
from tests.store.pathinfo_helpers import make_info


def test_expect_type_is_exact() -> None:
    assert expect_type(b"x", bytes, "F") == b"x"
    with pytest.raises(InvalidRequest, match=r"^malformed F: has wire type of bool, expected int$"):
        expect_type(True, int, "F")  # a bool is an int subclass, and still the wrong wire type
    with pytest.raises(
        InvalidRequest, match=r"^malformed M: field 'name' has wire type of int, expected bytes$"
    ):
        expect_type(1, bytes, "M", field="name")


def test_expect_message() -> None:
    node = castore_pb.Node()
    assert expect_message(node, castore_pb.Node, "N") is node
    with pytest.raises(
        InvalidRequest, match=r"^malformed N: expected a Node message, got NoneType$"
    ):
        expect_message(None, castore_pb.Node, "N")


def test_every_decoder_uses_them() -> None:
    with pytest.raises(
        InvalidRequest,
        match=r"^malformed DirectoryNode: field 'name' has wire type of int, expected bytes$",
    ):
        castore_wire.directory_node_from_proto(castore_pb.DirectoryNode(name=1))
    with pytest.raises(
        InvalidRequest, match=r"^malformed BuildRequest: expected a BuildRequest message, got str$"
    ):
        build_wire.request_from_proto("not a message")
    request = build_pb.BuildRequest()
    request.working_dir = b"build"
    with pytest.raises(
        InvalidRequest,
        match=r"^malformed BuildRequest.working_dir: has wire type of bytes, expected str$",
    ):
        build_wire.request_from_proto(request)
    info = store_pb.PathInfo(
        node=castore_pb.Node(symlink=castore_pb.SymlinkNode(name=b"x", target=b"/")),
        narinfo=store_pb.NarInfo(nar_size=1),
    )
    info.references = "not a list"
    with pytest.raises(
        InvalidRequest,
        match=r"^malformed PathInfo.references: has wire type of str, expected list$",
    ):
        store_wire.path_info_from_proto(info)


_CUT_SHORT = {
    "tag": b"\x80",  # a tag's varint that never ends
    "length": b"\x22\x05ab",  # field 4, 5 bytes announced, 2 present
    "fixed64": b"\x21ab",  # field 4, 8 bytes expected
    "fixed32": b"\x2dab",  # field 5, 4 bytes expected
}


@pytest.mark.parametrize("tail", _CUT_SHORT.values(), ids=_CUT_SHORT.keys())
def test_a_message_whose_last_field_is_cut_short_is_rejected(tail: bytes) -> None:
    # betterproto reads such input short and returns what it has: a truncated row or
    # file would decode, and here even validate, if the framing were not checked
    directory = castore_pb.Directory(
        files=[castore_pb.FileNode(name=b"a", digest=bytes(32), size=1)]
    )
    data = bytes(directory)
    assert castore_wire.decode_directory(data).files  # whole: fine
    castore_pb.Directory().parse(data + tail)  # betterproto alone accepts it
    with pytest.raises(InvalidRequest, match=r"malformed Directory protobuf .* past the end"):
        castore_wire.decode_directory(data + tail)
    info = store_wire.encode_path_info(make_info("x"))
    assert store_wire.decode_path_info(info).store_path.name == "x"
    with pytest.raises(InvalidRequest, match=r"malformed PathInfo protobuf .* past the end"):
        store_wire.decode_path_info(info + tail)


def test_framing_is_checked_only_where_its_length_is_known() -> None:
    castore_wire.check_framing(b"")
    castore_wire.check_framing(b"\x08\x96\x01\x12\x02ab\x19" + bytes(8) + b"\x25" + bytes(4))
    castore_wire.check_framing(b"\x0b\x80")  # a group: not walked further (betterproto decides)
    with pytest.raises(ValueError, match="the field at byte 2 runs past the end"):
        castore_wire.check_framing(b"\x08\x01\x12\x09abc")  # 9 bytes announced, 3 present
    with pytest.raises(ValueError, match="a varint at byte 3 runs past the end"):
        castore_wire.check_framing(b"\x08\x01\x10\x80")


def test_read_varint_reads_as_betterproto_does() -> None:
    assert castore_wire.read_varint(b"\x07\x96\x01", 0) == (7, 1)
    assert castore_wire.read_varint(b"\x07\x96\x01", 1) == (150, 3)
    ten = b"\xff" * 9 + b"\x7f"  # 70 bits: not cut to 64, as betterproto reads it
    assert castore_wire.read_varint(ten, 0) == ((1 << 70) - 1, 10)
    with pytest.raises(ValueError, match="a varint at byte 0 is longer than 10 bytes"):
        castore_wire.read_varint(b"\xff" * 11, 0)
    with pytest.raises(ValueError, match="a varint at byte 1 runs past the end"):
        castore_wire.read_varint(b"\x00\x80\x80", 1)


def test_iter_fields_reads_each_wire_type() -> None:
    data = b"\x08\x96\x01" + b"\x12\x02ab" + b"\x19" + bytes(8) + b"\x25" + bytes(4) + b"\x33"
    assert list(castore_wire.iter_fields(data)) == [
        (1, 0, 150),
        (2, 2, b"ab"),
        (3, 1, 0),
        (4, 5, 0),
        (6, 3, 0),  # a group's tag, read alone
    ]
    fields = castore_wire.iter_fields(b"\x08\x01\x12\x09abc")
    assert next(fields) == (1, 0, 1)  # whole fields come before the one cut short
    with pytest.raises(ValueError, match="the field at byte 2 runs past the end"):
        next(fields)
