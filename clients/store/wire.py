"""The one place converting tvix.store.v1 betterproto messages to and from domain types.

Decoding is defensive (betterproto checks neither wire types nor enum values)
and complete: :func:`path_info_from_proto` returns only *valid* path infos.
Everything the domain type cannot express is checked here — 20-byte
reference digests, ``reference_names`` parsing and matching ``references``
one by one, known CA types, a set ``narinfo`` — and then
``PathInfo.validate()`` runs.  Every rejection is an :class:`InvalidRequest`
naming the field (``NARInfo.reference_names[2]``) and the value.

The canonical encoding of a path info (:func:`encode_path_info`) is what
standard encoders emit: fields in number order, default values omitted.
``clients.store.wire_fast.decode_path_info_fast`` decodes path infos without
betterproto, to the same result as :func:`decode_path_info`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import betterproto

from clients.castore import wire as castore_wire
from clients.castore.model import Node, SymlinkNode
from clients.castore.wire import expect_message, expect_type, parse_message
from clients.errors import InvalidRequest
from clients.store.model import PathInfo, store_path_digest
from nixcompat.errors import NixCompatError
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.narinfo import CaMethod, ContentAddress
from nixcompat.signing import Signature
from nixcompat.storepath import StorePath
from proto.gen.tvix.castore import v1 as castore_pb
from proto.gen.tvix.store import v1 as store_pb

__all__ = [
    "CA_HASH_TYPES",
    "calculate_nar_response",
    "decode_path_info",
    "encode_path_info",
    "nar_from_response",
    "node_from_proto",
    "node_to_proto",
    "path_info_from_proto",
    "path_info_to_proto",
    "store_path_digest",
]

_Ca = store_pb.NarInfoCaHash
_CA_TYPES: dict[Any, tuple[CaMethod, HashAlgo]] = {
    _Ca.NAR_SHA256: (CaMethod.recursive, HashAlgo.sha256),
    _Ca.NAR_SHA1: (CaMethod.recursive, HashAlgo.sha1),
    _Ca.NAR_SHA512: (CaMethod.recursive, HashAlgo.sha512),
    _Ca.NAR_MD5: (CaMethod.recursive, HashAlgo.md5),
    _Ca.TEXT_SHA256: (CaMethod.text, HashAlgo.sha256),
    _Ca.FLAT_SHA1: (CaMethod.flat, HashAlgo.sha1),
    _Ca.FLAT_MD5: (CaMethod.flat, HashAlgo.md5),
    _Ca.FLAT_SHA256: (CaMethod.flat, HashAlgo.sha256),
    _Ca.FLAT_SHA512: (CaMethod.flat, HashAlgo.sha512),
}
_CA_ENUM = {pair: kind for kind, pair in _CA_TYPES.items()}
CA_HASH_TYPES: dict[int, tuple[CaMethod, HashAlgo]] = {int(k): v for k, v in _CA_TYPES.items()}
"""``NARInfo.ca.type`` numbers and what they mean (``clients.store.wire_fast`` decodes by it)."""


def node_to_proto(node: Node) -> castore_pb.Node:
    """``clients.castore.wire.node_to_proto`` with plain ``bytes`` digests.

    A domain node may hold a ``B3Digest`` (a ``bytes`` subclass), which the
    castore decoder's exact type check rejects when a message is decoded
    without a serialisation in between (in-process, in tests).
    """
    if not isinstance(node, SymlinkNode) and type(node.digest) is not bytes:
        node = dataclasses.replace(node, digest=bytes(node.digest))
    return castore_wire.node_to_proto(node)


def node_from_proto(message: object, field: str) -> Node:
    """The node in a ``tvix.castore.v1.Node``; InvalidRequest naming ``field`` when malformed."""
    try:
        return castore_wire.node_from_proto(expect_message(message, castore_pb.Node, field))
    except InvalidRequest as exc:
        raise InvalidRequest(f"{field}: {exc}") from exc


def _references(message: Any, narinfo: Any) -> tuple[StorePath, ...]:
    digests = expect_type(message.references, list, "PathInfo.references")
    names = expect_type(narinfo.reference_names, list, "NARInfo.reference_names")
    if len(digests) != len(names):
        raise InvalidRequest(
            f"PathInfo.references has {len(digests)} entries but NARInfo.reference_names has "
            f"{len(names)}; they must list the same store paths in the same order"
        )
    paths = []
    for index, (digest, name) in enumerate(zip(digests, names, strict=True)):
        store_path_digest(digest, f"PathInfo.references[{index}]")
        where = f"NARInfo.reference_names[{index}]"
        try:
            path = StorePath.parse_basename(expect_type(name, str, where))
        except NixCompatError as exc:
            raise InvalidRequest(f"{where} {name!r} is not a store path basename: {exc}") from exc
        if path.digest != digest:
            raise InvalidRequest(
                f"{where} {name!r} does not match PathInfo.references[{index}] "
                f"({StorePath(digest, path.name).hash_part})"
            )
        paths.append(path)
    return tuple(paths)


def _signatures(narinfo: Any) -> tuple[Signature, ...]:
    out = []
    for index, sig in enumerate(expect_type(narinfo.signatures, list, "NARInfo.signatures")):
        where = f"NARInfo.signatures[{index}]"
        expect_message(sig, store_pb.NarInfoSignature, where)
        name = expect_type(sig.name, str, where + ".name")
        data = expect_type(sig.data, bytes, where + ".data")
        try:
            out.append(Signature(name, data))
        except NixCompatError as exc:
            raise InvalidRequest(f"{where}: {exc}") from exc
    return tuple(out)


def _deriver(narinfo: Any) -> StorePath | None:
    deriver = expect_message(narinfo.deriver, store_pb.StorePath, "NARInfo.deriver")
    name = expect_type(deriver.name, str, "NARInfo.deriver.name")
    digest = expect_type(deriver.digest, bytes, "NARInfo.deriver.digest")
    if not betterproto.serialized_on_wire(deriver) and not name and not digest:
        return None
    store_path_digest(digest, "NARInfo.deriver.digest")
    try:
        return StorePath(digest, name)
    except NixCompatError as exc:
        raise InvalidRequest(f"NARInfo.deriver: {exc}") from exc


def _ca(narinfo: Any) -> ContentAddress | None:
    ca = expect_message(narinfo.ca, store_pb.NarInfoCa, "NARInfo.ca")
    kind: Any = ca.type
    digest = expect_type(ca.digest, bytes, "NARInfo.ca.digest")
    if not betterproto.serialized_on_wire(ca) and not digest and kind == 0:
        return None
    if not isinstance(kind, int) or isinstance(kind, bool):
        raise InvalidRequest(f"malformed NARInfo.ca.type: wire type of {type(kind).__name__}")
    pair = _CA_TYPES.get(kind) if isinstance(kind, _Ca) and kind.name is not None else None
    if pair is None:
        known = ", ".join(f"{k.name}={int(k)}" for k in _CA_TYPES)
        raise InvalidRequest(
            f"NARInfo.ca.type {int(kind)} is not a known CA hash type (known: {known})"
        )
    method, algo = pair
    try:
        return ContentAddress(method, NixHash(algo, digest))
    except NixCompatError as exc:
        raise InvalidRequest(f"NARInfo.ca ({method.value} {algo.value}): {exc}") from exc


def path_info_from_proto(message: object) -> PathInfo:
    """The *validated* domain PathInfo of a message; InvalidRequest naming what is wrong."""
    m = expect_message(message, store_pb.PathInfo, "PathInfo")
    node = node_from_proto(m.node, "PathInfo.node")
    narinfo = expect_message(m.narinfo, store_pb.NarInfo, "PathInfo.narinfo")
    if not betterproto.serialized_on_wire(narinfo):
        raise InvalidRequest("PathInfo.narinfo is not set (it carries the NAR hash and size)")
    references = _references(m, narinfo)
    try:
        name = node.name.decode("ascii")
        store_path = StorePath.parse_basename(name)
    except (UnicodeDecodeError, NixCompatError) as exc:
        raise InvalidRequest(
            f"PathInfo.node name {node.name[:120]!r} is not a store path basename ({exc})"
        ) from None
    info = PathInfo(
        store_path=store_path,
        node=node,
        references=references,
        nar_size=expect_type(narinfo.nar_size, int, "NARInfo.nar_size"),
        nar_sha256=expect_type(narinfo.nar_sha256, bytes, "NARInfo.nar_sha256"),
        signatures=_signatures(narinfo),
        deriver=_deriver(narinfo),
        ca=_ca(narinfo),
    )
    info.validate()
    return info


def path_info_to_proto(info: PathInfo) -> store_pb.PathInfo:
    """The message for ``info`` (which should be valid; nothing is checked here)."""
    narinfo = store_pb.NarInfo(
        nar_size=info.nar_size,
        nar_sha256=info.nar_sha256,
        signatures=[store_pb.NarInfoSignature(name=s.name, data=s.data) for s in info.signatures],
        reference_names=[r.basename for r in info.references],
    )
    if info.deriver is not None:
        narinfo.deriver = store_pb.StorePath(name=info.deriver.name, digest=info.deriver.digest)
    if info.ca is not None:
        kind = _CA_ENUM[(info.ca.method, info.ca.hash.algo)]
        narinfo.ca = store_pb.NarInfoCa(type=kind, digest=info.ca.hash.digest)
    return store_pb.PathInfo(
        node=node_to_proto(info.node),
        references=[r.digest for r in info.references],
        narinfo=narinfo,
    )


def encode_path_info(info: PathInfo) -> bytes:
    """The canonical protobuf encoding of ``info``."""
    return bytes(path_info_to_proto(info))


def decode_path_info(data: bytes) -> PathInfo:
    """Parse and validate a protobuf-encoded PathInfo; InvalidRequest when malformed or invalid."""
    return path_info_from_proto(parse_message(data, store_pb.PathInfo))


def calculate_nar_response(nar_size: int, nar_sha256: bytes) -> store_pb.CalculateNarResponse:
    return store_pb.CalculateNarResponse(nar_size=nar_size, nar_sha256=nar_sha256)


def nar_from_response(message: object) -> tuple[int, bytes]:
    """``(nar_size, nar_sha256)`` of a CalculateNARResponse; InvalidRequest when malformed."""
    m = expect_message(message, store_pb.CalculateNarResponse, "CalculateNARResponse")
    size = expect_type(m.nar_size, int, "CalculateNARResponse.nar_size")
    digest = expect_type(m.nar_sha256, bytes, "CalculateNARResponse.nar_sha256")
    if len(digest) != 32:
        raise InvalidRequest(
            f"CalculateNARResponse.nar_sha256 has {len(digest)} bytes, expected 32"
        )
    return size, digest
