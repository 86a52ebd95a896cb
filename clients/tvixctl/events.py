"""Job events as ``tvixctl`` reads them from ``WatchBatches``: decoded directly, not by betterproto.

A busy job sends thousands of events; parsing each into betterproto messages
cost ~0.2 ms of the CPU tvixctl shares with the daemon.  :func:`decode_batch`
reads a ``tvixd.v1.JobEventBatch`` into small frozen objects with the same
attribute names as the generated messages (``event.seq``,
``event.time_unix_ms``, ``body.drv_path``, ``body.state`` as the generated
enum, …); :func:`clients.tvixctl.formats.oneof` answers for them as for a
message (``oneof(event, "event")`` → ``("derivation_state", body)``), so the
displays take either.

Unknown fields are skipped (newer daemons may add some); a malformed
message raises :class:`MalformedEvents`, naming the byte offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clients.castore.wire import read_varint
from clients.tvixctl.common import CommandError
from proto.gen.tvixd import v1 as pb

__all__ = [
    "DerivationStateBody",
    "Event",
    "EventBatch",
    "JobStateBody",
    "LogBody",
    "MalformedEvents",
    "decode_batch",
]


class MalformedEvents(CommandError):
    """The daemon sent a ``JobEventBatch`` that is not valid protobuf."""


@dataclass(frozen=True, slots=True)
class JobStateBody:
    """``tvixd.v1.JobStateChanged``."""

    state: pb.JobState = pb.JobState.UNSPECIFIED
    error: str = ""


@dataclass(frozen=True, slots=True)
class DerivationStateBody:
    """``tvixd.v1.DerivationStateChanged``."""

    drv_path: str = ""
    state: pb.DerivationState = pb.DerivationState.UNSPECIFIED
    attempt: int = 0
    detail: str = ""


@dataclass(frozen=True, slots=True)
class LogBody:
    """``tvixd.v1.LogLine``."""

    drv_path: str = ""
    line: bytes = b""
    attempt: int = 0


Body = JobStateBody | DerivationStateBody | LogBody


@dataclass(frozen=True, slots=True)
class Event:
    """``tvixd.v1.JobEvent``; ``which`` names the oneof member set (``""``: none), ``body`` it."""

    seq: int = 0
    job_id: str = ""
    time_unix_ms: int = 0
    which: str = ""
    body: Body | None = None


Value = int | slice
"""A field's value: a varint, or where its bytes are in the batch."""


class _Reader:
    """The protobuf fields of parts of one encoded batch; errors name offsets into it."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def _varint(self, pos: int, end: int) -> tuple[int, int]:
        try:
            value, after = read_varint(self.data, pos)
        except ValueError as exc:
            raise MalformedEvents(f"JobEventBatch: {exc}") from exc
        if after > end:
            raise MalformedEvents(f"JobEventBatch: a varint at byte {pos} runs past the end")
        return value, after

    def fields(self, span: slice, what: str) -> list[tuple[int, Value, int]]:
        """``(field number, value, offset)`` of the message at ``span``, in order."""
        out: list[tuple[int, Value, int]] = []
        pos, end = span.start, span.stop
        while pos < end:
            offset = pos
            key, pos = self._varint(pos, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise MalformedEvents(f"{what}: field number 0 at byte {offset}")
            value: Value
            if wire == 0:
                value, pos = self._varint(pos, end)
            elif wire in (1, 2, 5):
                if wire == 2:
                    size, pos = self._varint(pos, end)
                else:
                    size = 8 if wire == 1 else 4
                if pos + size > end:
                    raise MalformedEvents(
                        f"{what}: field {number} at byte {offset} claims {size} bytes, "
                        f"{end - pos} left"
                    )
                value, pos = slice(pos, pos + size), pos + size
            else:
                raise MalformedEvents(
                    f"{what}: field {number} has unsupported wire type {wire} at byte {offset}"
                )
            out.append((number, value, offset))
        return out

    def number(
        self, value: Value, what: str, offset: int, bits: int = 64, signed: bool = False
    ) -> int:
        if not isinstance(value, int):
            raise MalformedEvents(f"{what} is not a varint (at byte {offset})")
        value &= (1 << bits) - 1
        if signed and value >= 1 << (bits - 1):
            value -= 1 << bits
        return value

    def span(self, value: Value, what: str, offset: int) -> slice:
        if not isinstance(value, slice):
            raise MalformedEvents(f"{what} is not length-delimited (at byte {offset})")
        return value

    def raw(self, value: Value, what: str, offset: int) -> bytes:
        return self.data[self.span(value, what, offset)]

    def text(self, value: Value, what: str, offset: int) -> str:
        try:
            return self.raw(value, what, offset).decode()
        except UnicodeDecodeError as exc:
            raise MalformedEvents(f"{what} is not UTF-8 (at byte {offset}): {exc}") from None


def _enum(enum: type[pb.JobState] | type[pb.DerivationState], number: int) -> Any:
    try:
        return enum(number)
    except ValueError:
        return number  # a value this client does not know yet


def _body(r: _Reader, which: int, span: slice) -> Body:
    if which == 10:
        state, error = 0, ""
        for number, value, at in r.fields(span, "JobStateChanged"):
            if number == 1:
                state = r.number(value, "JobStateChanged.state", at, 32, signed=True)
            elif number == 2:
                error = r.text(value, "JobStateChanged.error", at)
        return JobStateBody(_enum(pb.JobState, state), error)
    if which == 11:
        path, drv_state, attempt, detail = "", 0, 0, ""
        for number, value, at in r.fields(span, "DerivationStateChanged"):
            if number == 1:
                path = r.text(value, "DerivationStateChanged.drv_path", at)
            elif number == 2:
                drv_state = r.number(value, "DerivationStateChanged.state", at, 32, signed=True)
            elif number == 3:
                attempt = r.number(value, "DerivationStateChanged.attempt", at, 32)
            elif number == 4:
                detail = r.text(value, "DerivationStateChanged.detail", at)
        return DerivationStateBody(path, _enum(pb.DerivationState, drv_state), attempt, detail)
    path, line, attempt = "", b"", 0
    for number, value, at in r.fields(span, "LogLine"):
        if number == 1:
            path = r.text(value, "LogLine.drv_path", at)
        elif number == 2:
            line = r.raw(value, "LogLine.line", at)
        elif number == 3:
            attempt = r.number(value, "LogLine.attempt", at, 32)
    return LogBody(path, line, attempt)


_WHICH = {10: "job_state", 11: "derivation_state", 12: "log"}


def _event(r: _Reader, span: slice) -> Event:
    seq, job_id, time_ms = 0, "", 0
    which, body = "", None
    for number, value, at in r.fields(span, "JobEvent"):
        if number == 1:
            seq = r.number(value, "JobEvent.seq", at)
        elif number == 2:
            job_id = r.text(value, "JobEvent.job_id", at)
        elif number == 3:
            time_ms = r.number(value, "JobEvent.time_unix_ms", at, signed=True)
        elif number in _WHICH:
            inner = r.span(value, f"JobEvent.{_WHICH[number]}", at)
            which, body = _WHICH[number], _body(r, number, inner)
    return Event(seq, job_id, time_ms, which, body)


def decode_batch(data: bytes) -> list[Event]:
    """The events of an encoded ``tvixd.v1.JobEventBatch``; :class:`MalformedEvents` if malformed."""
    r = _Reader(bytes(data))
    return [
        _event(r, r.span(value, "JobEventBatch.events", at))
        for number, value, at in r.fields(slice(0, len(r.data)), "JobEventBatch")
        if number == 1
    ]


class EventBatch:
    """The reply type of ``WatchBatches`` for grpclib: its codec calls :meth:`FromString`."""

    @staticmethod
    def FromString(data: bytes) -> list[Event]:  # the protobuf API's name
        return decode_batch(data)
