"""Domain types and the wire converter against the vectors and two protobuf implementations."""

from __future__ import annotations

import base64
from typing import Any

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.castore import wire
from clients.castore.model import (
    B3Digest,
    Directory,
    DirectoryNode,
    FileNode,
    Node,
    SymlinkNode,
)
from clients.castore.streams import Blake3Hasher, chunks_of, rechunk
from clients.errors import InvalidRequest
from proto.gen.tvix.castore import v1 as castore_pb
from tests.castore.helpers import EMPTY_DIGEST_HEX, blob_from_spec, directory_from_json
from tests.interop import GrpcioProtos
from tests.vectors import entries, entry_id

VALID = entries("castore_directories", kind="directory", valid=True)
INVALID = entries("castore_directories", kind="directory", valid=False)
BLAKE3 = entries("blake3")

#: vector reason -> what our message must say
REASONS = {
    "name contains NUL": "contains NUL",
    "name '.'": "name b'.' is not allowed",
    "name '..'": "name b'..' is not allowed",
    "name contains '/'": "contains '/'",
    "name too long (>255)": "500 bytes long, more than 255",
    "empty name": "name b'' is empty",
    "digest of 2 bytes": "has a digest of 2 bytes, expected 32",
    "b before a": "not sorted by name: b'a' comes after b'b'",
    "duplicate name": "duplicate name b'a' in directories (",
    "duplicate name across lists": "duplicate name b'a' in directories and symlinks",
    "empty symlink target": "symlink b'a' has an empty target",
    "directory size sum overflows u64": "directory size 18446744073709551622 overflows uint64",
}


def _grpcio_directory(protos: GrpcioProtos, directory: Directory) -> Any:
    pb = protos.castore
    return pb.Directory(
        directories=[
            pb.DirectoryNode(name=n.name, digest=n.digest, size=n.size)
            for n in directory.directories
        ],
        files=[
            pb.FileNode(name=n.name, digest=n.digest, size=n.size, executable=n.executable)
            for n in directory.files
        ],
        symlinks=[pb.SymlinkNode(name=n.name, target=n.target) for n in directory.symlinks],
    )


@pytest.mark.parametrize("entry", VALID, ids=[entry_id(e) for e in VALID])
def test_valid_vectors(entry: dict[str, Any], grpcio_protos: GrpcioProtos) -> None:
    directory = directory_from_json(entry["directory"])
    directory.validate()
    encoded = bytes.fromhex(entry["protobuf_hex"])
    assert directory.encode() == encoded
    assert bytes(wire.directory_to_proto(directory)) == encoded
    assert (
        _grpcio_directory(grpcio_protos, directory).SerializeToString(deterministic=True) == encoded
    )
    assert directory.digest().hex() == entry["digest_hex"]
    assert directory.size() == entry["size"]
    assert wire.decode_directory(encoded) == directory


@pytest.mark.parametrize("entry", INVALID, ids=[entry_id(e) for e in INVALID])
def test_invalid_vectors(entry: dict[str, Any]) -> None:
    directory = directory_from_json(entry["directory"])
    assert directory.encode().hex() == entry["protobuf_hex"]
    assert wire.decode_directory(bytes.fromhex(entry["protobuf_hex"])) == directory
    with pytest.raises(InvalidRequest) as excinfo:
        directory.validate()
    message = str(excinfo.value)
    assert REASONS[entry["reason"]] in message
    assert f"(in directory {directory.digest().hex()[:12]}…)" in message


def _ingest(name: bytes, tree: dict[str, Any], out: list[Directory]) -> Node:
    """The castore node of a declarative tree (vectors README); directories appended leaves first."""
    if tree["type"] == "regular":
        data = (
            tree["contents"].encode()
            if "contents" in tree
            else base64.b64decode(tree["contents_b64"])
        )
        return FileNode(name, B3Digest.of(data), len(data), tree["executable"])
    if tree["type"] == "symlink":
        return SymlinkNode(name, tree["target"].encode())
    children = [_ingest(n.encode(), child, out) for n, child in tree["entries"].items()]
    directory = Directory.from_nodes(children)
    directory.validate()
    out.append(directory)
    return DirectoryNode(name, directory.digest(), directory.size())


TREES = entries("castore_directories", kind="tree")


@pytest.mark.parametrize("entry", TREES, ids=[entry_id(e) for e in TREES])
def test_tree_vectors(entry: dict[str, Any]) -> None:
    ingested: list[Directory] = []
    root = _ingest(b"", entry["tree"], ingested)
    expected = entry["root_node"]
    match root:
        case DirectoryNode():
            assert expected["type"] == "directory"
            assert (root.digest.hex(), root.size) == (expected["digest"], expected["size"])
        case FileNode():
            assert expected["type"] == "file"
            assert (root.digest.hex(), root.size, root.executable) == (
                expected["digest"],
                expected["size"],
                expected["executable"],
            )
        case SymlinkNode():
            assert (expected["type"], root.target) == ("symlink", expected["target"].encode())
    want = {(d["digest_hex"], d["size"]) for d in entry["directories"]}
    assert {(d.digest().hex(), d.size()) for d in ingested} == want
    for spec in entry["directories"]:
        assert directory_from_json(spec["directory"]).digest().hex() == spec["digest_hex"]


def test_empty_directory_digest() -> None:
    assert Directory().digest().hex() == EMPTY_DIGEST_HEX
    assert Directory().encode() == b""
    assert Directory().size() == 0


@pytest.mark.parametrize("entry", BLAKE3, ids=[str(e["length"]) for e in BLAKE3])
@pytest.mark.asyncio
async def test_blake3_vectors(entry: dict[str, Any]) -> None:
    data = blob_from_spec(entry["blob"])
    assert B3Digest.of(data).hex() == entry["blake3_hex"]
    hasher = Blake3Hasher()
    async for piece in rechunk(chunks_of(data, 777), 70_000):
        await hasher.update(piece)
    assert hasher.digest().hex() == entry["blake3_hex"]
    assert hasher.size == len(data)


def test_b3digest() -> None:
    digest = B3Digest.from_hex(EMPTY_DIGEST_HEX)
    assert digest == bytes.fromhex(EMPTY_DIGEST_HEX)
    assert repr(digest) == f"B3Digest({EMPTY_DIGEST_HEX})"
    assert str(digest) == EMPTY_DIGEST_HEX
    assert digest.short() == EMPTY_DIGEST_HEX[:12] + "…"
    assert B3Digest(digest) is digest
    with pytest.raises(InvalidRequest, match="32 bytes, got 31 bytes"):
        B3Digest(bytes(31))
    with pytest.raises(InvalidRequest, match="not hex"):
        B3Digest.from_hex("zz" * 32)
    with pytest.raises(TypeError):
        B3Digest("00" * 32)  # type: ignore[arg-type]


def test_construction_checks_types_and_uint64() -> None:
    with pytest.raises(TypeError, match="name must be bytes"):
        FileNode("a", bytes(32), 0)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="outside the uint64 range"):
        DirectoryNode(b"a", bytes(32), 2**64)
    with pytest.raises(InvalidRequest, match="outside the uint64 range"):
        FileNode(b"a", bytes(32), -1)
    with pytest.raises(TypeError, match="holds FileNode"):
        Directory(files=(SymlinkNode(b"a", b"b"),))  # type: ignore[arg-type]
    assert Directory(files=[FileNode(b"a", bytes(32), 0)]).files == (FileNode(b"a", bytes(32), 0),)  # type: ignore[arg-type]


def test_from_nodes_sorts_and_nodes_merges() -> None:
    d = DirectoryNode(b"b", bytes(32), 0)
    f = FileNode(b"c", bytes(32), 1)
    s = SymlinkNode(b"a", b"t")
    directory = Directory.from_nodes([f, d, s])
    assert directory == Directory((d,), (f,), (s,))
    assert list(directory.nodes()) == [s, d, f]
    assert directory.size() == 3


def test_node_oneof_round_trip() -> None:
    for node in (
        DirectoryNode(b"d", bytes(32), 7),
        FileNode(b"f", bytes(32), 3, executable=True),
        SymlinkNode(b"s", b"target"),
    ):
        message = wire.node_to_proto(node)
        assert wire.node_from_proto(castore_pb.Node().parse(bytes(message))) == node
    with pytest.raises(InvalidRequest, match="none of directory, file, symlink"):
        wire.node_from_proto(castore_pb.Node())


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\x08\x01", "expected a DirectoryNode message, got int"),
        (b"\x0a\x02\x08\x01", "field 'name' has wire type of int"),
        (b"\x12\x02\x18\x00\x0a", "malformed Directory protobuf"),
        (b"\x0a\xff", "malformed Directory protobuf"),
    ],
)
def test_malformed_protobuf(data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidRequest, match="malformed") as excinfo:
        wire.decode_directory(data)
    assert fragment in str(excinfo.value)


names = st.binary(min_size=1, max_size=20).filter(
    lambda n: n not in (b".", b"..") and b"/" not in n and b"\0" not in n
)
digests = st.binary(min_size=32, max_size=32)
sizes = st.integers(min_value=0, max_value=2**40)


@st.composite
def directories(draw: st.DrawFn) -> Directory:
    unique = draw(st.lists(names, unique=True, max_size=8))
    nodes: list[DirectoryNode | FileNode | SymlinkNode] = []
    for name in unique:
        kind = draw(st.sampled_from(["d", "f", "s"]))
        if kind == "d":
            nodes.append(DirectoryNode(name, draw(digests), draw(sizes)))
        elif kind == "f":
            nodes.append(FileNode(name, draw(digests), draw(sizes), draw(st.booleans())))
        else:
            nodes.append(SymlinkNode(name, draw(names)))
    return Directory.from_nodes(nodes)


@settings(max_examples=150, deadline=None)
@given(directories())
def test_encoding_matches_both_protobuf_implementations(
    grpcio_protos: GrpcioProtos, directory: Directory
) -> None:
    directory.validate()
    encoded = directory.encode()
    assert bytes(wire.directory_to_proto(directory)) == encoded
    assert (
        _grpcio_directory(grpcio_protos, directory).SerializeToString(deterministic=True) == encoded
    )
    assert wire.decode_directory(encoded) == directory
    assert directory.digest() == blake3.blake3(encoded).digest()


def test_encoding_matches_grpcio_for_a_mixed_directory(grpcio_protos: GrpcioProtos) -> None:
    directory = Directory.from_nodes(
        [
            DirectoryNode(b"sub", bytes(range(32)), 2**40 + 5),
            FileNode("räksmörgås".encode(), bytes(32), 300, executable=True),
            SymlinkNode(b"link", b"/nix/store/x"),
            FileNode(b"zero", bytes(32), 0),
        ]
    )
    message = _grpcio_directory(grpcio_protos, directory)
    assert message.SerializeToString(deterministic=True) == directory.encode()
    parsed = grpcio_protos.castore.Directory.FromString(directory.encode())
    assert parsed == message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoding_arbitrary_bytes_raises_only_invalid_request(data: bytes) -> None:
    try:
        directory = wire.decode_directory(data)
        directory.validate()
    except InvalidRequest:
        return
    assert wire.decode_directory(directory.encode()) == directory
