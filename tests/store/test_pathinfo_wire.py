"""The domain type and its wire conversion: validation, canonical encoding, narinfo round trips.

The bad-message table runs twice: through ``clients.store.wire`` directly and
through our gRPC server (which must answer INVALID_ARGUMENT with the same
message and store nothing).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.testing import ChannelFor
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.castore.model import B3Digest, DirectoryNode, FileNode, SymlinkNode
from clients.errors import InvalidRequest
from clients.store import wire
from clients.store.model import PathInfo, with_name
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.narinfo import ContentAddress, NarInfo
from nixcompat.signing import Signature
from nixcompat.storepath import StorePath
from proto.gen.tvix.castore import v1 as castore_pb
from proto.gen.tvix.store import v1 as store_pb
from tests.store.pathinfo_helpers import make_info, rich_infos, store_path
from tests.vectors import entries, entry_id
from tvixd.store.pathinfo.memory import MemoryPathInfoService
from tvixd.store.server import PathInfoServiceServicer

DEP = store_path("dep-1.0")
Mutation = Callable[[store_pb.PathInfo], None]


def _base() -> store_pb.PathInfo:
    info = make_info("base-1.0", references=[DEP], deriver=store_path("base-1.0.drv"))
    return wire.path_info_to_proto(info)


def _set(path: str, value: object) -> Mutation:
    def mutate(message: store_pb.PathInfo) -> None:
        *parents, last = path.split(".")
        target: object = message
        for part in parents:
            target = getattr(target, part)
        setattr(target, last, value)

    return mutate


BAD_MESSAGES: list[tuple[str, Mutation, str]] = [
    (
        "references-longer",
        _set("references", [DEP.digest, store_path("x").digest]),
        "PathInfo.references has 2 entries but NARInfo.reference_names has 1",
    ),
    (
        "reference-names-longer",
        _set("narinfo.reference_names", [DEP.basename, DEP.basename]),
        "PathInfo.references has 1 entries but NARInfo.reference_names has 2",
    ),
    (
        "reference-name-mismatch",
        _set("narinfo.reference_names", [store_path("x").basename]),
        f"NARInfo.reference_names[0] '{store_path('x').basename}' does not match "
        f"PathInfo.references[0] ({DEP.hash_part})",
    ),
    (
        "reference-digest-short",
        _set("references", [DEP.digest[:19]]),
        "PathInfo.references[0] must be a 20-byte store path digest, got 19 bytes",
    ),
    (
        "reference-name-unparseable",
        _set("narinfo.reference_names", ["not-a-store-path"]),
        "NARInfo.reference_names[0] 'not-a-store-path' is not a store path basename",
    ),
    ("node-unset", _set("node", castore_pb.Node()), "PathInfo.node: malformed Node"),
    (
        "node-name-not-basename",
        _set("node.file.name", b"base-1.0"),
        "PathInfo.node name b'base-1.0' is not a store path basename",
    ),
    ("node-digest-short", _set("node.file.digest", bytes(31)), "has a digest of 31 bytes"),
    ("narinfo-unset", _set("narinfo", store_pb.NarInfo()), "PathInfo.narinfo is not set"),
    ("nar-sha256-short", _set("narinfo.nar_sha256", bytes(31)), "nar_sha256 has 31 bytes"),
    (
        "ca-unknown-type",
        _set("narinfo.ca", store_pb.NarInfoCa(type=42, digest=bytes(32))),
        "NARInfo.ca.type 42 is not a known CA hash type",
    ),
    (
        "ca-digest-length",
        _set(
            "narinfo.ca", store_pb.NarInfoCa(type=store_pb.NarInfoCaHash.FLAT_MD5, digest=bytes(32))
        ),
        "NARInfo.ca (flat md5): a md5 digest has 16 bytes, not 32",
    ),
    (
        "ca-empty",
        _set("narinfo.ca", store_pb.NarInfoCa(type=store_pb.NarInfoCaHash.TEXT_SHA256)),
        "NARInfo.ca (text sha256): a sha256 digest has 32 bytes, not 0",
    ),
    (
        "signature-short",
        _set("narinfo.signatures", [store_pb.NarInfoSignature(name="k-1", data=bytes(10))]),
        "NARInfo.signatures[0]: signature 'k-1' has 10 bytes, expected 64",
    ),
    (
        "signature-bad-name",
        _set("narinfo.signatures", [store_pb.NarInfoSignature(name="", data=bytes(64))]),
        "NARInfo.signatures[0]:",
    ),
    (
        "deriver-digest-short",
        _set("narinfo.deriver.digest", bytes(5)),
        "NARInfo.deriver.digest must be a 20-byte store path digest, got 5 bytes",
    ),
    (
        "deriver-bad-name",
        _set("narinfo.deriver.name", "bad name.drv"),
        "NARInfo.deriver: invalid store path",
    ),
    (
        "deriver-not-drv",
        _set("narinfo.deriver.name", "base-1.0"),
        "does not end in .drv",
    ),
]


@pytest.mark.parametrize(
    ("rule", "mutate", "fragment"), BAD_MESSAGES, ids=[c[0] for c in BAD_MESSAGES]
)
def test_wire_rejects(rule: str, mutate: Mutation, fragment: str) -> None:
    message = _base()
    wire.path_info_from_proto(message)  # the base is valid
    mutate(message)
    with pytest.raises(InvalidRequest) as excinfo:
        wire.path_info_from_proto(message)
    assert fragment in str(excinfo.value)
    with pytest.raises(InvalidRequest) as excinfo:  # and so does the byte-level decoder
        wire.decode_path_info(bytes(message))
    assert fragment in str(excinfo.value)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("rule", "mutate", "fragment"), BAD_MESSAGES, ids=[c[0] for c in BAD_MESSAGES]
)
async def test_server_rejects(rule: str, mutate: Mutation, fragment: str) -> None:
    backend = MemoryPathInfoService()
    message = _base()
    mutate(message)
    async with ChannelFor([PathInfoServiceServicer(backend)]) as channel:
        stub = store_pb.PathInfoServiceStub(channel)
        with pytest.raises(GRPCError) as excinfo:
            await stub.put(message)
    assert excinfo.value.status is Status.INVALID_ARGUMENT
    assert fragment in str(excinfo.value.message)
    assert [i async for i in backend.list()] == []


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (bytes(_base()) + bytes.fromhex("1005"), "PathInfo.references"),  # varint in a bytes field
        (b"\x0a", "malformed PathInfo protobuf"),  # truncated
        (b"\x0f\x01", "malformed PathInfo.node: expected a Node message, got NoneType"),
        (b"", "PathInfo.node: malformed Node"),
    ],
    ids=["wire-type", "truncated", "bad-wire-type", "empty"],
)
def test_decode_rejects_garbage(data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidRequest, match=fragment):
        wire.decode_path_info(data)


@pytest.mark.parametrize("info", rich_infos(), ids=lambda i: i.store_path.name)
def test_roundtrip_and_canonical(info: PathInfo) -> None:
    info.validate()
    data = wire.encode_path_info(info)
    assert wire.decode_path_info(data) == info
    assert bytes(store_pb.PathInfo().parse(data)) == data
    assert wire.path_info_from_proto(wire.path_info_to_proto(info)) == info


CA_TABLE = [
    ("fixed:r:sha256:", store_pb.NarInfoCaHash.NAR_SHA256),
    ("fixed:r:sha1:", store_pb.NarInfoCaHash.NAR_SHA1),
    ("fixed:r:sha512:", store_pb.NarInfoCaHash.NAR_SHA512),
    ("fixed:r:md5:", store_pb.NarInfoCaHash.NAR_MD5),
    ("text:sha256:", store_pb.NarInfoCaHash.TEXT_SHA256),
    ("fixed:sha1:", store_pb.NarInfoCaHash.FLAT_SHA1),
    ("fixed:md5:", store_pb.NarInfoCaHash.FLAT_MD5),
    ("fixed:sha256:", store_pb.NarInfoCaHash.FLAT_SHA256),
    ("fixed:sha512:", store_pb.NarInfoCaHash.FLAT_SHA512),
]


@pytest.mark.parametrize(("prefix", "kind"), CA_TABLE, ids=[p for p, _ in CA_TABLE])
def test_ca_mapping(prefix: str, kind: store_pb.NarInfoCaHash) -> None:
    """Each Nix content-address form maps to exactly its enum value and back."""
    algo = HashAlgo(prefix.rstrip(":").rsplit(":", 1)[1])
    digest = hashlib.new(algo.value, b"ca").digest()
    ca = ContentAddress.parse(prefix + NixHash(algo, digest).to_nixbase32())
    message = wire.path_info_to_proto(make_info("ca", ca=ca))
    assert message.narinfo.ca.type == kind
    assert message.narinfo.ca.digest == digest
    assert wire.path_info_from_proto(message).ca == ca


_names = st.from_regex(r"[A-Za-z0-9+\-._?=]{1,40}", fullmatch=True).filter(
    lambda n: n not in (".", "..")
)
_paths = st.builds(StorePath, st.binary(min_size=20, max_size=20), _names)
_digests = st.binary(min_size=32, max_size=32)
_nodes = st.one_of(
    st.builds(DirectoryNode, st.just(b""), _digests, st.integers(0, 2**64 - 1)),
    st.builds(FileNode, st.just(b""), _digests, st.integers(0, 2**64 - 1), st.booleans()),
    st.builds(
        SymlinkNode,
        st.just(b""),
        st.binary(min_size=1, max_size=50).filter(lambda t: b"\0" not in t),
    ),
)


@st.composite
def _infos(draw: st.DrawFn) -> PathInfo:
    path = draw(_paths)
    return PathInfo(
        store_path=path,
        node=with_name(draw(_nodes), path.basename.encode()),
        references=draw(st.lists(_paths, max_size=5).map(tuple)),
        nar_size=draw(st.integers(0, 2**64 - 1)),
        nar_sha256=draw(_digests),
        signatures=draw(
            st.lists(
                st.builds(Signature, _names, st.binary(min_size=64, max_size=64)), max_size=3
            ).map(tuple)
        ),
        deriver=draw(
            st.none()
            | st.builds(
                StorePath,
                st.binary(min_size=20, max_size=20),
                _names.map(lambda n: n[:200] + ".drv"),
            )
        ),
        ca=draw(
            st.none()
            | st.sampled_from(
                [
                    ContentAddress.parse(
                        p
                        + "0"
                        * {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}[
                            p.rstrip(":").rsplit(":", 1)[1]
                        ]
                    )
                    for p, _ in CA_TABLE
                ]
            )
        ),
    )


@settings(max_examples=150, deadline=None)
@given(_infos())
def test_roundtrip_property(info: PathInfo) -> None:
    info.validate()
    assert wire.decode_path_info(wire.encode_path_info(info)) == info


# --- narinfo: fingerprints and rendering against what Nix wrote ----------------------------

NARINFOS = entries("narinfo", kind="narinfo")


@pytest.mark.parametrize("entry", NARINFOS, ids=entry_id)
def test_narinfo_roundtrip(entry: dict[str, object]) -> None:
    narinfo = NarInfo.parse(str(entry["narinfo"]))
    node = FileNode(b"anything", B3Digest.of(b"contents"), 8)
    info = PathInfo.from_narinfo(narinfo, node)
    info.validate()
    assert info.node.name == narinfo.store_path.basename.encode()
    assert info.fingerprint() == entry["fingerprint"]
    again = info.to_narinfo(
        url=narinfo.url,
        compression=narinfo.compression,
        file_hash=narinfo.file_hash,
        file_size=narinfo.file_size,
        system=narinfo.system,
    )
    assert again.render() == narinfo.render()
    assert wire.decode_path_info(wire.encode_path_info(info)) == info


def test_with_signature_no_duplicates() -> None:
    a, b = Signature("a-1", bytes(64)), Signature("b-1", b"\x01" * 64)
    info = make_info("sigs", signatures=[b])
    assert info.with_signature(b) is info
    assert info.with_signature(a).signatures == (b, a)
    assert info.with_signature(a).with_signature(a).signatures == (b, a)


def test_fingerprint_sorts_references_and_keeps_order() -> None:
    refs = [store_path("zzz"), store_path("aaa"), store_path("zzz")]
    info = make_info("fp", references=refs)
    assert info.references == tuple(refs)
    listed = info.fingerprint().rsplit(";", 1)[1].split(",")
    assert listed == sorted({r.absolute for r in refs}, key=lambda p: p[11:])
    assert info.to_narinfo(url="nar/x.nar").references == tuple(sorted(set(refs)))


def test_fingerprint_refuses_zero_nar_size() -> None:
    with pytest.raises(InvalidRequest, match="its NAR size is 0"):
        make_info("empty", nar_size=0).fingerprint()


def test_construction_checks_types() -> None:
    info = make_info("typed")
    with pytest.raises(TypeError, match=r"PathInfo\.nar_size must be int, got bool"):
        dataclasses.replace(info, nar_size=True)
    with pytest.raises(TypeError, match=r"PathInfo\.references\[\] must be StorePath, got str"):
        dataclasses.replace(info, references=[DEP.absolute])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"PathInfo\.node must be"):
        dataclasses.replace(info, node=b"node")  # type: ignore[arg-type]
    replaced = dataclasses.replace(info, references=iter([DEP]))  # type: ignore[arg-type]
    assert replaced.references == (DEP,)
