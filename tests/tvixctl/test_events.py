"""tvixctl's own decoding of ``WatchBatches`` (``clients.tvixctl.events``) and its fallback to ``Watch``.

The reference is betterproto: every batch it encodes decodes to events whose
JSON form (what ``watch --json`` prints and the displays read) is the same as
that of the generated messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpclib.const
import pytest
from grpclib.server import Server
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.tvixctl.coordinator import CoordinatorClient
from clients.tvixctl.events import Event, MalformedEvents, decode_batch
from clients.tvixctl.formats import event_json, oneof
from clients.tvixctl.tracker import Tracker
from proto.gen.tvixd import v1 as pb

_text = st.text(max_size=30)
_uint32 = st.integers(0, 2**32 - 1)
_bodies = st.one_of(
    st.builds(lambda s, e: {"job_state": pb.JobStateChanged(state=s, error=e)},
              st.sampled_from(list(pb.JobState)), _text),
    st.builds(
        lambda p, s, a, d: {
            "derivation_state": pb.DerivationStateChanged(drv_path=p, state=s, attempt=a, detail=d)
        },
        _text, st.sampled_from(list(pb.DerivationState)), _uint32, _text,
    ),
    st.builds(lambda p, line, a: {"log": pb.LogLine(drv_path=p, line=line, attempt=a)},
              _text, st.binary(max_size=200), _uint32),
)  # fmt: skip
_events = st.builds(
    lambda seq, job, at, body: pb.JobEvent(seq=seq, job_id=job, time_unix_ms=at, **body),
    st.integers(0, 2**64 - 1),
    _text,
    st.integers(-(2**63), 2**63 - 1),
    _bodies,
)


@settings(max_examples=200)
@given(st.lists(_events, min_size=1, max_size=20))
def test_decoded_events_read_like_betterprotos(events: list[pb.JobEvent]) -> None:
    decoded = decode_batch(bytes(pb.JobEventBatch(events=events)))
    assert [event_json(e) for e in decoded] == [event_json(e) for e in events]
    for mine, theirs in zip(decoded, events, strict=True):
        assert isinstance(mine, Event)
        which, body = oneof(mine, "event")
        their_which, their_body = oneof(theirs, "event")
        assert which == their_which
        for name in ("state", "attempt", "drv_path", "detail", "error", "line"):
            assert getattr(body, name, None) == getattr(their_body, name, None)
    a, b = Tracker("j"), Tracker("j")
    for mine, theirs in zip(decoded, events, strict=True):
        a.apply(mine)
        b.apply(theirs)
    assert (a.job_state, a.error, a.last_seq, a.summary()) == (
        b.job_state, b.error, b.last_seq, b.summary()
    )  # fmt: skip


def _event(seq: int, state: pb.JobState = pb.JobState.REALISING) -> pb.JobEvent:
    return pb.JobEvent(seq=seq, job_id="j", time_unix_ms=5, job_state=pb.JobStateChanged(state))


def test_unknown_fields_are_skipped() -> None:
    event = bytes(_event(3))
    # field 50 (varint), field 51 (fixed64), field 52 (bytes), field 53 (fixed32)
    extra = b"\x90\x03\x07" + b"\x99\x03" + bytes(8) + b"\xa2\x03\x02hi" + b"\xad\x03" + bytes(4)
    batch = b"\x0a" + bytes([len(event + extra)]) + event + extra + b"\x10\x01"
    [decoded] = decode_batch(batch)
    assert (decoded.seq, decoded.which, decoded.body) == (3, "job_state", decoded.body)
    assert oneof(decoded, "event")[1].state is pb.JobState.REALISING


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x0a\x05\x08", "JobEventBatch: field 1 at byte 0 claims 5 bytes, 1 left"),
        (b"\x0a\x02\x08\x80", "a varint at byte 3 runs past the end"),
        (b"\x0a\x01\x0f", "JobEvent: field 1 has unsupported wire type 7 at byte 2"),
        (b"\x0a\x03\x12\x01\xff", "JobEvent.job_id is not UTF-8 (at byte 2)"),
        (b"\x0a\x02\x10\x01", "JobEvent.job_id is not length-delimited (at byte 2)"),
        (b"\x00", "JobEventBatch: field number 0 at byte 0"),
    ],
)
def test_malformed_batches_name_the_offset(data: bytes, message: str) -> None:
    with pytest.raises(MalformedEvents, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_batch(data)


class _OldDaemon(pb.CoordinatorBase):  # type: ignore[misc]
    """A coordinator from before ``WatchBatches``: only ``Watch``, from a fixed event log."""

    def __init__(self, events: list[pb.JobEvent]) -> None:
        self.events = events
        self.requests: list[pb.WatchRequest] = []

    async def watch(self, watch_request: pb.WatchRequest) -> AsyncIterator[pb.JobEvent]:
        self.requests.append(watch_request)
        for event in self.events:
            if event.seq > watch_request.from_seq:
                yield event

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        handlers: dict[str, grpclib.const.Handler] = super().__mapping__()
        del handlers["/tvixd.v1.Coordinator/WatchBatches"]
        return handlers


@pytest.mark.asyncio
async def test_falls_back_to_watch_on_a_daemon_without_batches(tmp_path: Path) -> None:
    events = [_event(1, pb.JobState.QUEUED), _event(2), _event(3, pb.JobState.SUCCEEDED)]
    old = _OldDaemon(events)
    server = Server([old])
    socket = str(tmp_path / "old.sock")
    await server.start(path=socket)
    try:
        async with CoordinatorClient(socket) as client:
            seen: list[Any] = [e async for e in client.watch("j", from_seq=1)]
            again: list[Any] = [e async for e in client.watch("j")]
    finally:
        server.close()
        await server.wait_closed()
    assert [e.seq for e in seen] == [2, 3]
    assert [e.seq for e in again] == [1, 2, 3]
    assert all(isinstance(e, pb.JobEvent) for e in seen + again)
    assert [r.from_seq for r in old.requests] == [1, 0]
