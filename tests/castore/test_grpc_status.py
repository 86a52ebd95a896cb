"""The status boundaries: domain errors → gRPC status on the server, and back in the clients.

``tvixd.grpc_status.status_boundary`` is the one server-side place (castore,
store and build servicers); ``clients.castore.grpc_common.translate`` the one
client-side place (castore, store and build adapters).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from types import MappingProxyType

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from clients.build.errors import BuildError, BuildFailed
from clients.castore.grpc_common import translate
from clients.errors import InvalidRequest, NotFound, StorageError
from tvixd.build.server import status_boundary as build_boundary
from tvixd.castore.server import status_boundary as castore_boundary
from tvixd.grpc_status import status_boundary


class Custom(Exception):
    """An error one servicer maps itself (``extra``)."""


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (InvalidRequest("bad name b'..'"), Status.INVALID_ARGUMENT, "bad name b'..'"),
        (NotFound("blob 3f2a not found"), Status.NOT_FOUND, "blob 3f2a not found"),
        (BuildFailed("exit 1", exit_code=1), Status.ABORTED, "exit 1"),
        (StorageError("disk full"), Status.INTERNAL, "Svc.Method: disk full"),
        (BuildError("runc missing"), Status.INTERNAL, "Svc.Method: runc missing"),
        (KeyError("secret"), Status.INTERNAL, "Svc.Method: internal error (KeyError)"),
    ],
)
def test_server_boundary(error: Exception, status: Status, message: str) -> None:
    with pytest.raises(GRPCError) as info, status_boundary("Svc.Method"):
        raise error
    assert (info.value.status, info.value.message) == (status, message)
    assert info.value.__cause__ is error


def test_reveal_sends_the_unexpected_message_too() -> None:
    with pytest.raises(GRPCError) as info, status_boundary("Svc.M", reveal=True):
        raise KeyError("x")
    assert info.value.message == "Svc.M: internal error (KeyError: 'x')"
    with pytest.raises(GRPCError) as info, build_boundary("BuildService.DoBuild"):
        raise KeyError("x")
    assert info.value.message == "BuildService.DoBuild: internal error (KeyError: 'x')"
    with pytest.raises(GRPCError) as info, castore_boundary("BlobService.Stat"):
        raise KeyError("x")
    assert info.value.message == "BlobService.Stat: internal error (KeyError)"


def test_grpc_errors_pass_and_extra_comes_first() -> None:
    original = GRPCError(Status.UNIMPLEMENTED, "no castore")
    with pytest.raises(GRPCError) as info, status_boundary("Svc.M"):
        raise original
    assert info.value is original
    extra = MappingProxyType({Custom: Status.UNAVAILABLE, NotFound: Status.FAILED_PRECONDITION})
    with pytest.raises(GRPCError) as info, status_boundary("Svc.M", extra=extra):
        raise Custom("shutting down")
    assert (info.value.status, info.value.message) == (Status.UNAVAILABLE, "shutting down")
    with pytest.raises(GRPCError) as info, status_boundary("Svc.M", extra=extra):
        raise NotFound("gone")
    assert info.value.status is Status.FAILED_PRECONDITION


def test_cancellation_is_not_translated() -> None:
    with pytest.raises(asyncio.CancelledError), status_boundary("Svc.M"):
        raise asyncio.CancelledError


def test_internal_errors_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(GRPCError), status_boundary("Svc.M"):
        raise StorageError("disk full")
    assert [r.getMessage() for r in caplog.records] == ["Svc.M failed: disk full"]
    caplog.clear()
    with caplog.at_level(logging.ERROR), pytest.raises(GRPCError), status_boundary("Svc.M"):
        raise KeyError("k")
    assert [r.getMessage() for r in caplog.records] == ["Svc.M: unexpected error"]
    assert caplog.records[0].exc_info is not None


def _through_both_boundaries(
    error: Exception, failure: type[Exception], statuses: Mapping[Status, type[Exception]] | None
) -> None:
    with (
        translate("grpc+unix:///s", "Op", failure=failure, statuses=statuses),
        status_boundary("Svc.M"),
    ):
        raise error


@pytest.mark.parametrize(
    ("error", "castore", "build"),
    [
        (InvalidRequest("rule"), InvalidRequest, InvalidRequest),
        (NotFound("absent"), NotFound, NotFound),
        (BuildFailed("exit 1"), StorageError, BuildFailed),
        (StorageError("disk"), StorageError, BuildError),
        (BuildError("runc"), StorageError, BuildError),
    ],
)
def test_round_trip(error: Exception, castore: type[Exception], build: type[Exception]) -> None:
    """What a server raises comes back in each client as the matching error."""
    for failure, statuses, expected in [
        (StorageError, None, castore),
        (BuildError, {Status.ABORTED: BuildFailed}, build),
    ]:
        with pytest.raises(expected) as info:
            _through_both_boundaries(error, failure, statuses)
        assert type(info.value) is expected
        if expected in (InvalidRequest, NotFound, BuildFailed):
            assert str(info.value) == str(error)
        else:
            status = "ABORTED" if isinstance(error, BuildFailed) else "INTERNAL"
            tail = str(error) if status == "ABORTED" else f"Svc.M: {error}"
            assert str(info.value) == f"Op on grpc+unix:///s: {status}: {tail}"


def _raise_in(error: BaseException, what: str, failure: type[Exception] = StorageError) -> None:
    with translate("t", what, failure=failure):
        raise error


def test_client_transport_errors() -> None:
    with pytest.raises(StorageError, match=r"^Read on t: StreamTerminatedError: Connection lost$"):
        _raise_in(StreamTerminatedError("Connection lost"), "Read")
    with pytest.raises(BuildError, match=r"^build on t: ConnectionRefusedError: "):
        _raise_in(ConnectionRefusedError(111, "refused"), "build", BuildError)
    with pytest.raises(StorageError, match=r"^Get on t: UNAVAILABLE: UNAVAILABLE$"):
        _raise_in(GRPCError(Status.UNAVAILABLE), "Get")
