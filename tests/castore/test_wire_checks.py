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
