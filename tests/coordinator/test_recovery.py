"""Crash recovery: unfinished jobs resume from the journal and complete, with gapless event logs.

In process: the coordinator is stopped in the middle of a job (its task group
cancelled, as at the end of a drain) and started again on the same journal
and stores.  For real: ``tvixd`` (the daemon, a subprocess, persistent
embedded backends) is killed with SIGKILL in the middle of a multi-derivation
job and started again; the job completes, its event log has no gaps, and
``tvixctl store verify`` passes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from proto.gen.tvixd import v1 as tvixd_pb
from tests.coordinator.harness import Stores, running
from tests.coordinator.helpers import assert_gapless, drv_states, job_states
from tests.coordinator.nixfiles import graph_nix, instantiate, show_derivations
from tvixd.build.dummy import DummyBuildService

pytestmark = [pytest.mark.nix, pytest.mark.asyncio]

CHAIN = {"c0": [], "c1": ["c0"], "c2": ["c1"], "c3": ["c2"], "c4": ["c3"], "side": []}
CHAIN["top"] = ["c4", "side"]


async def follow_until(
    stub: tvixd_pb.CoordinatorStub, job_id: str, done: int
) -> list[tvixd_pb.JobEvent]:
    """Watch until ``done`` derivations are done and one is building; the events so far."""
    seen: list[tvixd_pb.JobEvent] = []
    with anyio.fail_after(30):
        async for event in stub.watch(tvixd_pb.WatchRequest(job_id=job_id, follow=True)):
            seen.append(event)
            states = drv_states(seen)
            last = [s[-1] for s in states.values()]
            if last.count("done") >= done and "build" in last:
                return seen
    raise AssertionError(f"the job ended early: {drv_states(seen)}")


async def test_restart_resumes_an_unfinished_job(tmp_path: Path) -> None:
    nix = graph_nix(tmp_path, CHAIN)
    stores = Stores()
    async with running(
        tmp_path, builder=DummyBuildService(stores.blobs, delay=0.3), stores=stores
    ) as env:
        job = await env.submit_file(nix, "top")
        before = await follow_until(env.stub, job.id, 2)
        interrupted = {n for n, s in drv_states(before).items() if s[-1] == "build"}
        assert interrupted  # some build was running when the coordinator stopped
    builder = DummyBuildService(stores.blobs)
    async with running(tmp_path, builder=builder, stores=stores) as env:
        events = await env.events(job.id)
        assert_gapless(events)
        assert job_states(events) == ["queued", "evaluating", "realising", "succeeded"]
        states = drv_states(events)
        assert all(s[-1] == "done" for s in states.values()), states
        for name in interrupted:  # looked up again after the restart, then built
            after = states[name][states[name].index("build") :]
            assert "lookup" in after, (name, states[name])
        # Builds done before the stop were not repeated.
        assert builder.builds == len(CHAIN) - sum(
            1 for s in drv_states(before).values() if s[-1] == "done"
        )
        env.coordinator.driver.check_invariants()


@contextmanager
def daemon(state: Path, socket: Path, delay: float) -> Iterator[subprocess.Popen[bytes]]:
    """``tvixd`` on the embedded persistent backends and ``dummy://?delay=…``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TVIXD_", "NOTIFY_SOCKET", "LISTEN_"))
    }
    argv = [
        sys.executable, "-m", "tvixd.main",
        "--state-dir", str(state),
        "--listen", f"unix:{socket}",
        "--build-service", f"dummy://?delay={delay}",
        "--max-jobs", "2",
    ]  # fmt: skip
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        assert process.stderr is not None
        process.stderr.close()


async def connect(socket: Path) -> Channel:
    """A channel once the daemon answers (it listens only after recovering its jobs)."""
    with anyio.fail_after(30):
        while True:
            if await anyio.Path(socket).exists():
                channel = Channel(path=str(socket))
                try:
                    await tvixd_pb.CoordinatorStub(channel).list_jobs(tvixd_pb.ListJobsRequest())
                    return channel
                except (ConnectionError, OSError):
                    channel.close()
            await anyio.sleep(0.05)  # the daemon is a separate process: nothing to wait on


async def test_sigkill_in_the_middle_of_a_job(tmp_path: Path) -> None:
    nix = graph_nix(tmp_path, CHAIN)
    drvs = instantiate(nix, *CHAIN)
    shown = show_derivations(drvs)
    state, socket = tmp_path / "state", tmp_path / "tvixd.sock"

    with daemon(state, socket, delay=0.4) as process:
        channel = await connect(socket)
        stub = tvixd_pb.CoordinatorStub(channel)
        job = await stub.submit(
            tvixd_pb.SubmitRequest(nix_file=tvixd_pb.NixFile(path=str(nix), attr_paths=["top"]))
        )
        before = await follow_until(stub, job.id, 2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        channel.close()
    assert_gapless_prefix(before)

    with daemon(state, socket, delay=0.05):
        channel = await connect(socket)
        stub = tvixd_pb.CoordinatorStub(channel)
        events = []
        with anyio.fail_after(60):
            async for event in stub.watch(tvixd_pb.WatchRequest(job_id=job.id, follow=True)):
                events.append(event)
        assert_gapless(events)
        assert events[: len(before)] == before  # what was acknowledged before the kill is kept
        assert job_states(events) == ["queued", "evaluating", "realising", "succeeded"]
        final = await stub.get_job(tvixd_pb.GetJobRequest(id=job.id))
        assert final.counts == {"DERIVATION_STATE_DONE": len(CHAIN)}
        channel.close()

        verify = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "clients.tvixctl",
                    "store",
                    "verify",
                    "--verbose",
                    "--socket",
                    str(socket),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        for drv in shown.values():  # every output was pushed, and verified
            path = drv["outputs"]["out"]["path"]  # type: ignore[index]
            assert path in verify.stdout, verify.stdout


def assert_gapless_prefix(events: list[tvixd_pb.JobEvent]) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_drain_cancels_running_builds_and_they_resume(tmp_path: Path) -> None:
    nix = graph_nix(tmp_path, {"long": []})
    (drv,) = instantiate(nix, "long")
    stores = Stores()
    async with running(
        tmp_path, builder=DummyBuildService(stores.blobs, delay=30), stores=stores
    ) as env:
        job = await env.submit_file(nix, "long")
        with anyio.fail_after(20):
            async for event in env.stub.watch(tvixd_pb.WatchRequest(job_id=job.id, follow=True)):
                if drv_states([event]).get("long") == ["build"]:
                    break
        with anyio.fail_after(5):
            await env.coordinator.drain(grace=0.2)
        record = await env.coordinator.journal.get_derivation(drv)
        assert record is not None
        assert record.state.value == "build"
        status = None
        try:
            await env.submit_file(nix, "long")
        except GRPCError as exc:
            status = exc.status
        assert status == Status.UNAVAILABLE
    async with running(tmp_path, stores=stores) as env:
        events = await env.events(job.id)
        assert_gapless(events)
        assert drv_states(events)["long"] == [
            "lookup",
            "waiting",
            "build",
            "lookup",
            "waiting",
            "build",
            "push",
            "done",
        ]
