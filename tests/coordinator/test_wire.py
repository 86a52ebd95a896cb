"""The hand-written encoders on the hot path give exactly the bytes betterproto gives.

* ``tvixd.api.encode_event`` / ``encode_batches`` (``Watch``, ``WatchBatches``) against
  ``bytes(event_to_proto(event))`` and the generated ``JobEventBatch``;
* ``tvixd.store.pathinfo.sqlite.encode`` (the stored path infos) against
  ``clients.store.wire.encode_path_info``, over every field and node kind.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from clients.castore.model import B3Digest, DirectoryNode, FileNode, Node, SymlinkNode
from clients.store import wire
from fsm import DrvState, JobState
from nixcompat.signing import Signature
from proto.gen.tvixd import v1 as tvixd_pb
from tests.store.pathinfo_helpers import make_info, rich_infos, store_path
from tvixd.api import encode_batches, encode_event, event_to_proto
from tvixd.journal.model import (
    DerivationStateChanged,
    EventBody,
    JobEvent,
    JobStateChanged,
    LogLine,
)
from tvixd.store.pathinfo.sqlite import encode

_text = st.text(max_size=40)
_uint32 = st.integers(0, 2**32 - 1)
_bodies: st.SearchStrategy[EventBody] = st.one_of(
    st.builds(JobStateChanged, st.sampled_from(JobState), _text),
    st.builds(DerivationStateChanged, _text, st.sampled_from(DrvState), _uint32, _text),
    st.builds(LogLine, _text, st.binary(max_size=300), _uint32),
)
_events = st.builds(
    JobEvent, st.integers(0, 2**64 - 1), _text, st.integers(-(2**63), 2**63 - 1), _bodies
)


@settings(max_examples=300)
@given(_events)
def test_event_encoding_is_betterprotos(event: JobEvent) -> None:
    assert encode_event(event) == bytes(event_to_proto(event))


@settings(max_examples=100)
@given(st.lists(_events, max_size=30), st.integers(1, 2000))
def test_batches_hold_every_event_in_order_within_the_limit(
    events: list[JobEvent], limit: int
) -> None:
    batches = list(encode_batches(events, limit))
    decoded = [e for data in batches for e in tvixd_pb.JobEventBatch().parse(data).events]
    assert [bytes(e) for e in decoded] == [bytes(event_to_proto(e)) for e in events]
    for data in batches:
        count = len(tvixd_pb.JobEventBatch().parse(data).events)
        assert count >= 1
        assert len(data) <= limit or count == 1  # only a lone event may exceed the limit
    if events:
        whole = b"".join(encode_batches(events, 1 << 30))
        assert whole == bytes(tvixd_pb.JobEventBatch(events=[event_to_proto(e) for e in events]))
    else:
        assert batches == []


def test_path_info_encoding_is_betterprotos_for_every_field() -> None:
    for info in rich_infos():
        assert encode(info) == wire.encode_path_info(info), info.store_path


@settings(max_examples=150)
@given(
    kind=st.sampled_from(["file", "exec", "dir", "link"]),
    size=st.integers(0, 2**64 - 1),
    nar_size=st.integers(0, 2**64 - 1),
    refs=st.lists(st.sampled_from(["a-1", "b-2", "c", "d.drv"]), unique=True),
    sigs=st.lists(st.binary(min_size=64, max_size=64), max_size=3),
    deriver=st.booleans(),
    target=st.binary(min_size=1, max_size=50).filter(lambda t: b"\0" not in t),
)
def test_path_info_encoding_property(
    kind: str,
    size: int,
    nar_size: int,
    refs: list[str],
    sigs: list[bytes],
    deriver: bool,
    target: bytes,
) -> None:
    digest = B3Digest.of(target)
    nodes: dict[str, Node] = {
        "file": FileNode(b"", digest, size),
        "exec": FileNode(b"", digest, size, executable=True),
        "dir": DirectoryNode(b"", digest, size),
        "link": SymlinkNode(b"", target),
    }
    node = nodes[kind]
    info = make_info(
        "prop-1.0",
        node=node,
        nar_size=nar_size,
        references=sorted((store_path(r) for r in refs), key=lambda p: p.absolute),
        signatures=[Signature(f"key-{i}", s) for i, s in enumerate(sigs)],
        deriver=store_path("prop-1.0.drv") if deriver else None,
    )
    assert encode(info) == wire.encode_path_info(info)
    assert wire.decode_path_info(encode(info)) == info
    bare = dataclasses.replace(info, signatures=(), references=())
    assert encode(bare) == wire.encode_path_info(bare)
