"""``clients.store.wire_fast.decode_path_info_fast`` against ``wire.decode_path_info`` (betterproto).

Both must agree on every input: the same PathInfo, or both an
``InvalidRequest`` (the fast decoder hands what it does not read plainly to
betterproto, so the messages match too).  Inputs: every ``rich_infos()``
path info, hypothesis-generated ones, and mutations of their encodings —
truncations, byte flips, unknown fields of every wire type, reordered and
duplicated fields, wrong wire types, long and non-minimal varints.  Valid
plain encodings must be read without betterproto (``_no_fallback``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.castore.model import SymlinkNode
from clients.castore.wire import read_varint
from clients.errors import InvalidRequest
from clients.store import wire, wire_fast
from clients.store.model import PathInfo
from tests.store.pathinfo_helpers import make_info, rich_infos, store_path
from tests.store.test_pathinfo_wire import _infos
from tvixd.protowire import varint

INFOS = rich_infos()
ENCODINGS = [wire.encode_path_info(info) for info in INFOS]
CASES = list(zip(INFOS, ENCODINGS, strict=True))
IDS = [info.store_path.name for info in INFOS]


def _outcome(decode: object, data: bytes) -> PathInfo | str:
    assert callable(decode)
    try:
        info = decode(data)
    except InvalidRequest as exc:
        return f"InvalidRequest: {exc}"
    assert isinstance(info, PathInfo)
    return info


def _agree(data: bytes) -> PathInfo | str:
    """Both decoders' outcome on ``data``, which must be the same."""
    slow = _outcome(wire.decode_path_info, data)
    fast = _outcome(wire_fast.decode_path_info_fast, data)
    assert fast == slow, data.hex()
    return fast


@pytest.fixture
def _no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the betterproto fallback fail, to show an input was read by the fast path."""

    def refuse(data: bytes) -> PathInfo:
        raise AssertionError(f"fell back to betterproto for {data.hex()}")

    monkeypatch.setattr(wire, "decode_path_info", refuse)


def _field(number: int, kind: int, payload: bytes) -> bytes:
    return varint(number << 3 | kind) + payload


def _len(number: int, payload: bytes) -> bytes:
    return _field(number, 2, varint(len(payload)) + payload)


def _top_fields(data: bytes) -> list[bytes]:
    """The raw top-level fields (tag, length, value) of a canonical encoding."""
    out, pos = [], 0
    while pos < len(data):
        start = pos
        pos += 1  # every top-level tag is one byte
        length, pos = read_varint(data, pos)
        pos += length
        out.append(data[start:pos])
    return out


@pytest.mark.parametrize(("info", "data"), CASES, ids=IDS)
@pytest.mark.usefixtures("_no_fallback")
def test_rich_infos_decode_without_betterproto(info: PathInfo, data: bytes) -> None:
    assert wire_fast.decode_path_info_fast(data) == info


@pytest.mark.parametrize(("info", "data"), CASES, ids=IDS)
def test_rich_infos_decode_as_betterproto_does(info: PathInfo, data: bytes) -> None:
    assert _agree(data) == info


@settings(max_examples=150, deadline=None)
@given(_infos())
def test_roundtrip_property(info: PathInfo) -> None:
    assert wire_fast.decode_path_info_fast(wire.encode_path_info(info)) == info


# --- mutations: both decoders agree on every one ------------------------------------------

UNKNOWN_FIELDS = {
    "varint": _field(9, 0, varint(300)),
    "long-varint": _field(9, 0, b"\xff" * 9 + b"\x01"),
    "fixed64": _field(9, 1, bytes(8)),
    "fixed32": _field(9, 5, bytes(4)),
    "length-delimited": _len(9, b"\x08\x01junk"),
    "group-start": _field(9, 3, b""),
    "group-end": _field(9, 4, b""),
    "wire-type-6": _field(9, 6, b""),
    "wire-type-7": _field(9, 7, b""),
    "field-0": _field(0, 0, b"\x05"),
    "huge-number": _field(1 << 28, 0, b"\x01"),
}


def _mutations(data: bytes) -> Iterator[bytes]:
    for cut in range(len(data)):
        yield data[:cut]
    for at in range(len(data)):
        for flip in (0x01, 0x02, 0x80, 0xFF):
            yield data[:at] + bytes((data[at] ^ flip,)) + data[at + 1 :]
    fields = _top_fields(data)
    yield b"".join(reversed(fields))
    for index, field in enumerate(fields):
        yield data + field  # duplicated: appended (repeated) or the last one wins
        yield b"".join(fields[:index] + fields[index + 1 :])  # left out
    for extra in UNKNOWN_FIELDS.values():
        yield data + extra
        yield extra + data
        yield data[:1] + data[1:2] + extra + data[2:]  # mid-stream, before the node's contents
    for tail in (b"\x80", b"\x22\x05ab", b"\x21ab", b"\x2dab", b"\xff" * 11):
        yield data + tail  # truncated or overlong trailing fields


@pytest.mark.parametrize(("info", "data"), CASES, ids=IDS)
def test_mutated_encodings_agree(info: PathInfo, data: bytes) -> None:
    accepted = sum(isinstance(_agree(mutated), PathInfo) for mutated in _mutations(data))
    assert accepted > 0  # the unknown fields at least are skipped by both


@pytest.mark.parametrize("name", UNKNOWN_FIELDS, ids=list(UNKNOWN_FIELDS))
@pytest.mark.usefixtures("_no_fallback")
def test_unknown_fields_are_skipped_by_the_fast_path(name: str) -> None:
    info = INFOS[4]
    data = ENCODINGS[4]
    extra = UNKNOWN_FIELDS[name]
    assert wire_fast.decode_path_info_fast(extra + data + extra) == info


def _order_fields() -> tuple[PathInfo, list[bytes], bytes]:
    info = make_info("order-1.0", references=[store_path("a-1")], nar_size=5)
    other = make_info("order-1.0", references=[], nar_size=99)
    stale_narinfo = _top_fields(wire.encode_path_info(other))[-1]
    return info, _top_fields(wire.encode_path_info(info)), stale_narinfo


@pytest.mark.usefixtures("_no_fallback")
def test_fields_in_any_order_and_the_last_narinfo_wins() -> None:
    info, fields, stale_narinfo = _order_fields()
    assert wire_fast.decode_path_info_fast(stale_narinfo + b"".join(reversed(fields))) == info


def test_a_later_narinfo_replaces_rather_than_merges() -> None:
    _, fields, stale_narinfo = _order_fields()
    replaced = _agree(b"".join(fields) + stale_narinfo)  # no reference names left
    assert isinstance(replaced, str)
    assert "reference_names has 0" in replaced


def test_duplicated_node_fields_last_one_wins_as_in_betterproto() -> None:
    info = make_info("dup-1.0")
    node_field, narinfo_field = _top_fields(wire.encode_path_info(info))
    name = info.store_path.basename.encode()
    symlink = _len(3, _len(1, name) + _len(2, b"/target"))  # a Node's symlink member
    as_symlink = dataclasses.replace(info, node=SymlinkNode(name, b"/target"))
    # a later Node replaces the earlier one
    assert _agree(node_field + _len(1, symlink) + narinfo_field) == as_symlink
    assert _agree(_len(1, symlink) + node_field + narinfo_field) == info
    # inside one Node, the member set last wins
    file_member = node_field[2:]  # the canonical Node holds the file member alone (short length)
    assert _agree(_len(1, symlink + file_member) + narinfo_field) == info
    assert _agree(_len(1, file_member + symlink) + narinfo_field) == as_symlink


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_len(1, b"") + _len(3, b""), id="empty-node"),
        pytest.param(_field(1, 0, b"\x01"), id="node-as-varint"),
        pytest.param(ENCODINGS[0] + _field(3, 0, b"\x01"), id="narinfo-as-varint"),
        pytest.param(ENCODINGS[0] + _field(3, 3, b""), id="narinfo-as-group"),
        pytest.param(ENCODINGS[0] + _field(2, 5, b"abcd"), id="reference-as-fixed32"),
        pytest.param(ENCODINGS[0][:-1] + b"\xff" * 11, id="overlong-varint"),
        pytest.param(_len(3, _field(6, 2, b"\x02\x08\x63")), id="ca-type-unknown"),
        pytest.param(ENCODINGS[0] + _len(3, _len(4, b"\xff")), id="reference-name-not-utf8"),
        pytest.param(ENCODINGS[4] + b"\x22\x05ab", id="truncated-unknown-field"),
        pytest.param(ENCODINGS[0] + b"\x80", id="truncated-trailing-tag"),
        pytest.param(ENCODINGS[0][:-2], id="truncated-last-field"),
    ],
)
def test_malformed_encodings_agree(data: bytes) -> None:
    _agree(data)


def _replaced_then_valid() -> Iterator[tuple[str, bytes]]:
    """Encodings whose only flaw is in a field a later one replaces (betterproto parses it)."""
    info = INFOS[4]  # "everything": signatures and a deriver
    node_field, *rest, narinfo_field = _top_fields(ENCODINGS[4])
    valid = b"".join([node_field, *rest, narinfo_field])
    bad_varint = _field(1, 0, b"\xff" * 11)
    yield "narinfo", _len(3, bad_varint) + valid
    yield "node", _len(1, bad_varint) + valid
    yield (
        "node-member",
        _len(1, _len(1, bad_varint) + node_field[2:]) + b"".join([*rest, narinfo_field]),
    )
    body = narinfo_field[2:] if narinfo_field[1] < 0x80 else narinfo_field[3:]
    name = info.signatures[0].name.encode()
    signature = _len(1, b"\xff") + _len(1, name) + _len(2, info.signatures[0].data)
    yield "signature-name", node_field + b"".join(rest) + _len(3, body + _len(3, signature))
    deriver = _len(1, b"\xff") + _len(1, b"x.drv") + _len(2, bytes(20))
    yield "deriver-name", node_field + b"".join(rest) + _len(3, body + _len(5, deriver))


@pytest.mark.parametrize(("what", "data"), list(_replaced_then_valid()))
def test_a_flaw_in_a_replaced_field_is_still_rejected(what: str, data: bytes) -> None:
    assert isinstance(_agree(data), str), what


def test_non_minimal_varints_are_read() -> None:
    info = make_info("varint-1.0", nar_size=1)
    node_field, narinfo_field = _top_fields(wire.encode_path_info(info))
    body = narinfo_field[2:]  # tag and a one-byte length
    assert body.startswith(b"\x08\x01")  # nar_size comes first
    padded = _len(3, b"\x08\x81\x80\x00" + body[2:])
    assert _agree(node_field + padded) == info


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ENCODINGS), st.binary(max_size=40), st.integers(0, 600))
def test_spliced_bytes_agree(data: bytes, junk: bytes, at: int) -> None:
    _agree(data[:at] + junk + data[at:])


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(ENCODINGS[4] + b"\x22\x05ab", id="truncated-unknown-field"),
        pytest.param(ENCODINGS[0] + b"\x80", id="truncated-trailing-tag"),
    ],
)
def test_a_field_cut_short_at_the_end_is_refused_by_both(data: bytes) -> None:
    for decode in (wire_fast.decode_path_info_fast, wire.decode_path_info):
        with pytest.raises(InvalidRequest, match="runs past the end"):
            decode(data)
