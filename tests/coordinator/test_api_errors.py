"""Bad input through the gRPC API: each a clear status, and the daemon goes on serving."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from nixcompat import nixbase32
from proto.gen.tvixd import v1 as tvixd_pb
from tests.coordinator.harness import Env, running
from tests.coordinator.helpers import job_states
from tests.coordinator.nixfiles import graph_nix, instantiate, write_nix

pytestmark = [pytest.mark.nix, pytest.mark.asyncio]


async def status_of(call: Awaitable[object]) -> tuple[Status, str]:
    with pytest.raises(GRPCError) as caught:
        await call
    return caught.value.status, caught.value.message or ""


async def stream_status(stream: AsyncIterator[object]) -> tuple[Status, str]:
    with pytest.raises(GRPCError) as caught:
        async for _ in stream:
            pass
    return caught.value.status, caught.value.message or ""


@pytest.fixture
def malformed_drv() -> Iterator[str]:
    """A file with a valid ``.drv`` store path name in /nix/store that is not a derivation."""
    digest = nixbase32.encode(secrets.token_bytes(20))
    path = f"/nix/store/{digest}-malformed.drv"
    Path(path).write_text('Derive([("out","/nix/store/x","","")],[],[],"x86_64-linux"')
    yield path
    os.unlink(path)


async def still_serving(env: Env, nix: Path) -> None:
    job = await env.submit_file(nix, "fine")
    events = await env.events(job.id)
    assert job_states(events)[-1] == "succeeded"


async def test_bad_submits_are_invalid_argument(tmp_path: Path, malformed_drv: str) -> None:
    nix = graph_nix(tmp_path, {"fine": []})
    (fine_drv,) = instantiate(nix, "fine")
    missing_drv = fine_drv.replace(fine_drv[11:43], "0" * 32)
    submit = tvixd_pb.SubmitRequest
    nix_file = tvixd_pb.NixFile
    cases: list[tuple[tvixd_pb.SubmitRequest, str]] = [
        (
            submit(nix_file=nix_file(path=str(tmp_path / "absent.nix"))),
            "absent.nix' does not exist",
        ),
        (submit(nix_file=nix_file(path="relative.nix")), "must be absolute, got 'relative.nix'"),
        (submit(), "SubmitRequest.source is not set"),
        (submit(drv_paths=tvixd_pb.DrvPaths(paths=[malformed_drv])), "is not a valid derivation"),
        (submit(drv_paths=tvixd_pb.DrvPaths(paths=[missing_drv])), "does not exist"),
        (submit(drv_paths=tvixd_pb.DrvPaths(paths=["/etc/passwd"])), "'/etc/passwd'"),
        (submit(drv_paths=tvixd_pb.DrvPaths(paths=[])), "drv_paths.paths is empty"),
        (submit(drv_paths=tvixd_pb.DrvPaths(paths=[f"{fine_drv}!nope"])), "has no output 'nope'"),
        (
            submit(nix_file=nix_file(path=str(nix), attr_paths=["a"] * 1001)),
            "too many attribute paths: 1001 (at most 1000)",
        ),
        (
            submit(
                nix_file=nix_file(
                    path=str(nix), args=[tvixd_pb.NixArg(name="big", str="x" * (2 << 20))]
                )
            ),
            "the submit request is 2097",
        ),
        (
            submit(nix_file=nix_file(path=str(nix), args=[tvixd_pb.NixArg(name="noval")])),
            "has neither expr nor str",
        ),
    ]
    async with running(tmp_path) as env:
        for request, expected in cases:
            status, message = await status_of(env.stub.submit(request))
            assert status == Status.INVALID_ARGUMENT, (request, message)
            assert expected in message, (expected, message)
        await still_serving(env, nix)


async def test_evaluation_errors_fail_the_job_with_nix_message(tmp_path: Path) -> None:
    nix = write_nix(
        tmp_path,
        'fine = mk "fine" "mkdir $out" {};\nin { inherit fine; boom = throw "kaboom from the test"; }',
    )
    bad_syntax = tmp_path / "syntax.nix"
    bad_syntax.write_text("{ this is not nix")
    async with running(tmp_path) as env:
        for path, attrs, expected in (
            (nix, ["boom"], "kaboom from the test"),
            (
                nix,
                ["nosuchattr"],
                "attribute 'nosuchattr' in selection path 'nosuchattr' not found",
            ),
            (bad_syntax, [], "syntax error"),
        ):
            job = await env.submit_file(path, *attrs)
            events = await env.events(job.id)
            assert job_states(events) == ["queued", "evaluating", "failed"]
            final = await env.stub.get_job(tvixd_pb.GetJobRequest(id=job.id))
            assert final.state == tvixd_pb.JobState.FAILED
            assert final.error.startswith("evaluation failed: ")
            assert expected in final.error, final.error
            assert events[-1].job_state.error == final.error
        await still_serving(env, nix)


async def test_unknown_ids_are_not_found(tmp_path: Path) -> None:
    nix = graph_nix(tmp_path, {"fine": []})
    (fine_drv,) = instantiate(nix, "fine")
    async with running(tmp_path) as env:
        stub = env.stub
        for call in (
            stub.get_job(tvixd_pb.GetJobRequest(id="no-such-job")),
            stub.cancel(tvixd_pb.CancelRequest(id="no-such-job")),
        ):
            status, message = await status_of(call)
            assert (status, message) == (Status.NOT_FOUND, "job 'no-such-job' not found")
        status, message = await stream_status(
            stub.watch(tvixd_pb.WatchRequest(job_id="no-such-job", follow=True))
        )
        assert (status, message) == (Status.NOT_FOUND, "job 'no-such-job' not found")
        status, message = await stream_status(
            stub.follow_log(tvixd_pb.FollowLogRequest(drv_path=fine_drv))
        )
        assert status == Status.NOT_FOUND
        assert fine_drv in message
        status, message = await stream_status(
            stub.follow_log(tvixd_pb.FollowLogRequest(drv_path="/tmp/x"))
        )
        assert status == Status.INVALID_ARGUMENT
        assert "'/tmp/x' is not a store path" in message

        job = await env.submit_file(nix, "fine")
        events = await env.events(job.id)
        status, message = await stream_status(
            stub.watch(tvixd_pb.WatchRequest(job_id=job.id, from_seq=len(events) + 5))
        )
        assert status == Status.INVALID_ARGUMENT
        assert f"beyond the last event of job {job.id} ({len(events)})" in message
        status, message = await status_of(
            stub.list_jobs(tvixd_pb.ListJobsRequest(states=[tvixd_pb.JobState.UNSPECIFIED]))
        )
        assert status == Status.INVALID_ARGUMENT
        await still_serving(env, nix)
