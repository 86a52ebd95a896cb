"""The ``tvixd.v1.Coordinator`` gRPC service: a thin servicer over :class:`~tvixd.coordinator.Coordinator`.

The servicer only converts — wire messages to domain types and back, in the
functions below — and translates errors to gRPC status in one place
(:func:`_boundary`):

=================================  ====================
error                              status
=================================  ====================
``InvalidRequest``                 ``INVALID_ARGUMENT``
``NotFound``                       ``NOT_FOUND``
``Unavailable``                    ``UNAVAILABLE``
``StorageError`` (the journal)     ``INTERNAL``
anything else                      ``INTERNAL`` (logged)
=================================  ====================

``Watch`` sends one ``JobEvent`` per message, ``WatchBatches`` the same
events several to a ``JobEventBatch`` (at most :data:`BATCH_BYTES` encoded,
unless one event alone is larger).  Both encode events with
:func:`encode_event` — the same bytes betterproto writes, ~60x cheaper — and
hand grpclib messages that are already encoded.

A submit request larger than ``limits.max_request_bytes`` (1 MiB), or with
more than 1000 attribute paths or ``.drv`` paths, is ``INVALID_ARGUMENT``.
``Job.counts`` is keyed by the ``DerivationState`` enum value names
(``"DERIVATION_STATE_DONE"``, …).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import aclosing, contextmanager

import betterproto
from grpclib.const import Status

from clients.errors import InvalidRequest
from fsm import DrvState, JobState
from proto.gen.tvixd import v1 as tvixd_pb
from tvixd.coordinator import Coordinator, Unavailable
from tvixd.eval.protocol import NixArg
from tvixd.grpc_status import status_boundary
from tvixd.journal.model import (
    DerivationStateChanged,
    DrvPathsSource,
    JobEvent,
    JobInfo,
    JobSpec,
    JobStateChanged,
    LogLine,
    NixFileSource,
)
from tvixd.protowire import Encoded, varint

__all__ = [
    "BATCH_BYTES",
    "BATCH_INTERVAL",
    "CoordinatorServicer",
    "coordinator_servicers",
    "counts_key",
    "encode_batches",
    "encode_event",
    "job_to_proto",
    "spec_from_proto",
]


@contextmanager
def _boundary(method: str) -> Iterator[None]:
    with status_boundary(f"Coordinator.{method}", extra={Unavailable: Status.UNAVAILABLE}):
        yield


# -- wire -> domain ----------------------------------------------------------------------


def _arg_from_proto(arg: tvixd_pb.NixArg, index: int) -> NixArg:
    which, _ = betterproto.which_one_of(arg, "value")
    if which == "str":
        return NixArg(arg.name, arg.str, True)
    if which == "expr":
        return NixArg(arg.name, arg.expr, False)
    raise InvalidRequest(f"nix_file.args[{index}] ({arg.name!r}) has neither expr nor str")


def spec_from_proto(request: tvixd_pb.SubmitRequest) -> JobSpec:
    """The job spec of a submit request (shapes only; :meth:`JobSpec.validate` checks limits)."""
    which, _ = betterproto.which_one_of(request, "source")
    if which == "nix_file":
        source = request.nix_file
        return JobSpec(
            NixFileSource(
                path=source.path,
                attr_paths=tuple(source.attr_paths),
                args=tuple(_arg_from_proto(a, i) for i, a in enumerate(source.args)),
            ),
            request.keep_going,
        )
    if which == "drv_paths":
        return JobSpec(DrvPathsSource(tuple(request.drv_paths.paths)), request.keep_going)
    raise InvalidRequest("SubmitRequest.source is not set (expected nix_file or drv_paths)")


# -- domain -> wire ----------------------------------------------------------------------


def _job_state(state: JobState) -> tvixd_pb.JobState:
    return tvixd_pb.JobState[state.name]


def _drv_state(state: DrvState) -> tvixd_pb.DerivationState:
    return tvixd_pb.DerivationState[state.name]


def counts_key(state: DrvState) -> str:
    """The key of ``state`` in ``Job.counts``: the proto enum value name."""
    return f"DERIVATION_STATE_{state.name}"


def spec_to_proto(spec: JobSpec) -> tvixd_pb.SubmitRequest:
    source = spec.source
    if isinstance(source, NixFileSource):
        args = [
            tvixd_pb.NixArg(name=a.name, str=a.value)
            if a.is_string
            else tvixd_pb.NixArg(name=a.name, expr=a.value)
            for a in source.args
        ]
        nix = tvixd_pb.NixFile(path=source.path, attr_paths=list(source.attr_paths), args=args)
        return tvixd_pb.SubmitRequest(nix_file=nix, keep_going=spec.keep_going)
    return tvixd_pb.SubmitRequest(
        drv_paths=tvixd_pb.DrvPaths(paths=list(source.paths)), keep_going=spec.keep_going
    )


def job_to_proto(info: JobInfo) -> tvixd_pb.Job:
    """The wire form of a job."""
    return tvixd_pb.Job(
        id=info.id,
        state=_job_state(info.state),
        request=spec_to_proto(info.spec),
        created_unix_ms=info.created_ms,
        updated_unix_ms=info.updated_ms,
        counts={counts_key(DrvState(k)): v for k, v in sorted(info.counts.items())},
        outputs=[
            tvixd_pb.JobOutput(
                drv_path=o.drv_path, output_name=o.output_name, path=o.path, attr_path=o.attr_path
            )
            for o in info.outputs
        ],
        error=info.error,
        last_seq=info.last_seq,
    )


def _log_to_proto(line: LogLine) -> tvixd_pb.LogLine:
    return tvixd_pb.LogLine(drv_path=line.drv_path, line=line.line, attempt=line.attempt)


def event_to_proto(event: JobEvent) -> tvixd_pb.JobEvent:
    """The wire form of a job event."""
    message = tvixd_pb.JobEvent(seq=event.seq, job_id=event.job_id, time_unix_ms=event.time_ms)
    body = event.body
    if isinstance(body, JobStateChanged):
        message.job_state = tvixd_pb.JobStateChanged(state=_job_state(body.state), error=body.error)
    elif isinstance(body, DerivationStateChanged):
        message.derivation_state = tvixd_pb.DerivationStateChanged(
            drv_path=body.drv_path,
            state=_drv_state(body.state),
            attempt=body.attempt,
            detail=body.detail,
        )
    else:
        message.log = _log_to_proto(body)
    return message


# -- domain -> wire, encoded directly (the hot path of Watch) ------------------------------

BATCH_BYTES = 256 << 10
"""The encoded size a ``JobEventBatch`` is kept under (an event alone may exceed it)."""
BATCH_INTERVAL = 0.01
"""Seconds at least between two live ``JobEventBatch`` messages of one ``WatchBatches``.

Each message cost the daemon ~80 µs in grpclib and h2 and ``tvixctl`` more to
read; a busy job commits every millisecond or two.  What commits meanwhile
joins the next message, so a live event may reach a watcher this much later."""
_JOB_STATE_NUMBER = {state: int(tvixd_pb.JobState[state.name]) for state in JobState}
_DRV_STATE_NUMBER = {state: int(tvixd_pb.DerivationState[state.name]) for state in DrvState}


def _number(key: bytes, value: int) -> bytes:
    return key + varint(value) if value else b""


def _chunk(key: bytes, value: bytes) -> bytes:
    return key + varint(len(value)) + value if value else b""


def encode_event(event: JobEvent) -> bytes:
    """``bytes(event_to_proto(event))``, without building the message (proto3: defaults left out)."""
    body = event.body
    if isinstance(body, DerivationStateChanged):
        key = b"\x5a"  # field 11, length-delimited
        inner = b"".join(
            (
                _chunk(b"\x0a", body.drv_path.encode()),
                _number(b"\x10", _DRV_STATE_NUMBER[body.state]),
                _number(b"\x18", body.attempt),
                _chunk(b"\x22", body.detail.encode()),
            )
        )
    elif isinstance(body, LogLine):
        key = b"\x62"  # field 12
        inner = b"".join(
            (
                _chunk(b"\x0a", body.drv_path.encode()),
                _chunk(b"\x12", body.line),
                _number(b"\x18", body.attempt),
            )
        )
    else:
        key = b"\x52"  # field 10
        inner = _number(b"\x08", _JOB_STATE_NUMBER[body.state]) + _chunk(
            b"\x12", body.error.encode()
        )
    return b"".join(
        (
            _number(b"\x08", event.seq),
            _chunk(b"\x12", event.job_id.encode()),
            _number(b"\x18", event.time_ms),
            key,  # the set member of a oneof is written even when empty
            varint(len(inner)),
            inner,
        )
    )


def encode_batches(events: Iterable[JobEvent], limit: int = BATCH_BYTES) -> Iterator[bytes]:
    """``events`` as encoded ``JobEventBatch`` messages of at most ``limit`` bytes each
    (a larger event goes alone); nothing for no events."""
    parts: list[bytes] = []
    size = 0
    for event in events:
        data = encode_event(event)
        part = b"\x0a" + varint(len(data)) + data
        if parts and size + len(part) > limit:
            yield b"".join(parts)
            parts, size = [], 0
        parts.append(part)
        size += len(part)
    if parts:
        yield b"".join(parts)


class _EncodedEvent(Encoded, tvixd_pb.JobEvent):  # type: ignore[misc]  # proto.gen is untyped
    """An encoded ``JobEvent``."""


class _EncodedBatch(Encoded, tvixd_pb.JobEventBatch):  # type: ignore[misc]
    """An encoded ``JobEventBatch``."""


# -- the servicer ------------------------------------------------------------------------


class CoordinatorServicer(tvixd_pb.CoordinatorBase):  # type: ignore[misc]  # proto.gen is untyped
    """``tvixd.v1.Coordinator`` over a :class:`Coordinator`."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    def __repr__(self) -> str:
        return f"CoordinatorServicer({self._coordinator!r})"

    async def submit(self, submit_request: tvixd_pb.SubmitRequest) -> tvixd_pb.Job:
        with _boundary("Submit"):
            limits = self._coordinator.limits
            size = len(bytes(submit_request))
            if size > limits.max_request_bytes:
                raise InvalidRequest(
                    f"the submit request is {size} bytes; at most {limits.max_request_bytes} "
                    "are accepted"
                )
            spec = spec_from_proto(submit_request)
            return job_to_proto(await self._coordinator.submit(spec))

    async def get_job(self, get_job_request: tvixd_pb.GetJobRequest) -> tvixd_pb.Job:
        with _boundary("GetJob"):
            return job_to_proto(await self._coordinator.get(get_job_request.id))

    async def list_jobs(
        self, list_jobs_request: tvixd_pb.ListJobsRequest
    ) -> tvixd_pb.ListJobsResponse:
        with _boundary("ListJobs"):
            states = []
            for value in list_jobs_request.states:
                if value == tvixd_pb.JobState.UNSPECIFIED:
                    raise InvalidRequest("ListJobsRequest.states contains JOB_STATE_UNSPECIFIED")
                states.append(JobState[tvixd_pb.JobState(value).name])
            jobs = await self._coordinator.list_jobs(states)
            return tvixd_pb.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs])

    async def cancel(self, cancel_request: tvixd_pb.CancelRequest) -> tvixd_pb.Job:
        with _boundary("Cancel"):
            return job_to_proto(await self._coordinator.cancel(cancel_request.id))

    async def watch(self, watch_request: tvixd_pb.WatchRequest) -> AsyncIterator[tvixd_pb.JobEvent]:
        with _boundary("Watch"):
            events = self._coordinator.watch(
                watch_request.job_id, watch_request.from_seq, watch_request.follow
            )
            async with aclosing(events):
                async for event in events:
                    yield _EncodedEvent.of(encode_event(event))

    async def watch_batches(
        self, watch_request: tvixd_pb.WatchRequest
    ) -> AsyncIterator[tvixd_pb.JobEventBatch]:
        with _boundary("WatchBatches"):
            batches = self._coordinator.watch_batches(
                watch_request.job_id,
                watch_request.from_seq,
                watch_request.follow,
                interval=BATCH_INTERVAL,
            )
            async with aclosing(batches):
                async for batch in batches:
                    for data in encode_batches(batch):
                        yield _EncodedBatch.of(data)

    async def follow_log(
        self, follow_log_request: tvixd_pb.FollowLogRequest
    ) -> AsyncIterator[tvixd_pb.LogLine]:
        with _boundary("FollowLog"):
            lines = self._coordinator.follow_log(
                follow_log_request.drv_path, follow_log_request.follow
            )
            async with aclosing(lines):
                async for line in lines:
                    yield _log_to_proto(line)


def coordinator_servicers(coordinator: Coordinator) -> list[tvixd_pb.CoordinatorBase]:
    """The grpclib servicers exposing ``coordinator`` (add them to the daemon's server)."""
    return [CoordinatorServicer(coordinator)]
