"""Jobs through the gRPC API (unix socket), real Nix evaluation, the dummy builder.

Shared sub-graphs are built once, lookup is top-down, failures propagate to
dependents (with and without keep-going), cancel stops only what the
cancelled job alone needs, infrastructure failures are retried.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from nixcompat.signing import SigningKey
from nixcompat.storepath import StorePath
from proto.gen.tvixd import v1 as tvixd_pb
from tests.coordinator.harness import Env, Stores, running
from tests.coordinator.helpers import (
    FlakyBuilder,
    assert_gapless,
    body,
    drv_states,
    job_states,
    log_lines,
)
from tests.coordinator.nixfiles import graph_nix, instantiate, show_derivations
from tvixd.build.dummy import DummyBuildService
from tvixd.coordinator import RetryPolicy

pytestmark = [pytest.mark.nix, pytest.mark.asyncio]

DIAMOND = {"base": [], "left": ["base"], "right": ["base"], "top": ["left", "right"]}
BUILT = ["lookup", "waiting", "build", "push", "done"]


async def info_of(env: Env, out_path: str) -> object:
    return await env.stores.pathinfos.get(StorePath.from_absolute_path(out_path).digest)


async def wait_for_states(
    env: Env, job_id: str, wanted: dict[str, str], within: float = 20
) -> list[tvixd_pb.JobEvent]:
    """Follow the job until each named derivation has been in the given state."""
    seen: list[tvixd_pb.JobEvent] = []
    with anyio.fail_after(within):
        async for event in env.stub.watch(tvixd_pb.WatchRequest(job_id=job_id, follow=True)):
            seen.append(event)
            states = drv_states(seen)
            if all(state in states.get(name, []) for name, state in wanted.items()):
                return seen
    raise AssertionError(f"job {job_id} ended before reaching {wanted}: {drv_states(seen)}")


async def test_nix_file_job_and_top_down_lookup(tmp_path: Path) -> None:
    nix = graph_nix(tmp_path, DIAMOND)
    (top_drv,) = instantiate(nix, "top")
    shown = show_derivations([top_drv])
    async with running(tmp_path) as env:
        job = await env.submit_file(nix, "top")
        assert job.state == tvixd_pb.JobState.QUEUED
        events = await env.events(job.id)
        assert_gapless(events)
        assert job_states(events) == ["queued", "evaluating", "realising", "succeeded"]
        assert drv_states(events) == {name: BUILT for name in DIAMOND}
        final = await env.stub.get_job(tvixd_pb.GetJobRequest(id=job.id))
        assert final.state == tvixd_pb.JobState.SUCCEEDED
        assert final.counts == {"DERIVATION_STATE_DONE": 4}
        assert final.last_seq == events[-1].seq
        out = shown[top_drv]["outputs"]["out"]["path"]  # type: ignore[index]
        assert [(o.drv_path, o.output_name, o.path) for o in final.outputs] == [
            (top_drv, "out", out)
        ]
        for drv_path, drv in shown.items():
            for output in drv["outputs"].values():  # type: ignore[attr-defined]
                info = await info_of(env, output["path"])
                assert info is not None, output
                assert str(info.deriver) == drv_path  # type: ignore[attr-defined]
        assert env.builder.builds == 4  # type: ignore[attr-defined]

        # A second submit is answered from lookup: top is present, its inputs are never visited.
        again = await env.submit_file(nix, "top")
        events = await env.events(again.id)
        assert_gapless(events)
        assert drv_states(events) == {"top": ["lookup", "done"]}
        assert env.builder.builds == 4  # type: ignore[attr-defined]


async def test_shared_subgraph_is_built_once(tmp_path: Path) -> None:
    graph = {"base": [], "mid": ["base"], "a": ["mid"], "b": ["mid"]}
    nix = graph_nix(tmp_path, graph)
    async with running(tmp_path) as env:
        env.builder.delay = 0.2  # type: ignore[attr-defined]
        job_a = await env.submit_file(nix, "a")
        job_b = await env.submit_file(nix, "b")
        events_a = await env.events(job_a.id)
        events_b = await env.events(job_b.id)
        assert job_states(events_a)[-1] == job_states(events_b)[-1] == "succeeded"
        assert env.builder.builds == 4  # type: ignore[attr-defined]
        # Both jobs saw the shared derivations' progress.
        for events in (events_a, events_b):
            assert drv_states(events)["mid"][-1] == "done"
        env.coordinator.driver.check_invariants()


async def test_cancel_stops_only_what_the_job_alone_needs(tmp_path: Path) -> None:
    graph = {"shared": [], "only_a": [], "a": ["shared", "only_a"], "b": ["shared"]}
    nix = graph_nix(tmp_path, graph)
    drvs = dict(zip(graph, instantiate(nix, *graph), strict=True))
    outs = {n: show_derivations([d])[d]["outputs"]["out"]["path"] for n, d in drvs.items()}  # type: ignore[index]
    async with running(tmp_path) as env:
        env.builder.delay = 1.0  # type: ignore[attr-defined]
        job_a = await env.submit_file(nix, "a")
        await wait_for_states(env, job_a.id, {"shared": "build", "only_a": "build"})
        job_b = await env.submit_file(nix, "b")
        await wait_for_states(env, job_b.id, {"b": "waiting"})  # b now needs shared too
        cancelled = await env.stub.cancel(tvixd_pb.CancelRequest(id=job_a.id))
        assert cancelled.state == tvixd_pb.JobState.CANCELLED
        assert "cancelled by request" in cancelled.error

        events_a = await env.events(job_a.id)
        assert_gapless(events_a)
        states_a = drv_states(events_a)
        assert states_a["only_a"][-1] == "cancelled"
        assert states_a["a"][-1] == "cancelled"
        assert "cancelled" not in states_a["shared"]

        events_b = await env.events(job_b.id)
        assert job_states(events_b)[-1] == "succeeded"
        assert await info_of(env, outs["shared"]) is not None
        assert await info_of(env, outs["b"]) is not None
        assert await info_of(env, outs["only_a"]) is None
        assert await info_of(env, outs["a"]) is None
        # Cancelling a final job answers it as it is.
        again = await env.stub.cancel(tvixd_pb.CancelRequest(id=job_a.id))
        assert again.state == tvixd_pb.JobState.CANCELLED
        # What was cancelled runs again for a job that needs it; shared is found by lookup.
        env.builder.delay = 0  # type: ignore[attr-defined]
        retry = await env.submit_file(nix, "a")
        states = drv_states(await env.events(retry.id))
        assert states["only_a"] == BUILT
        assert states["a"] == BUILT
        assert states["shared"] == ["lookup", "done"]
        env.coordinator.driver.check_invariants()


FAILING = {
    "bad": [],
    "dep": ["bad"],
    "ok1": [],
    "ok2": ["ok1"],
    "ok3": ["ok2"],
    "top": ["dep", "ok3"],
}


async def test_failure_stops_the_job_without_keep_going(tmp_path: Path) -> None:
    nix = graph_nix(tmp_path, FAILING, fail={"bad": "bad on purpose"})
    async with running(tmp_path) as env:
        env.builder.delay = 0.3  # type: ignore[attr-defined]
        job = await env.submit_file(nix, "top")
        events = await env.events(job.id)
        assert_gapless(events)
        final = await env.stub.get_job(tvixd_pb.GetJobRequest(id=job.id))
        assert final.state == tvixd_pb.JobState.FAILED
        assert "-bad.drv: build failed: " in final.error
        assert "bad on purpose" in final.error
        states = drv_states(events)
        assert states["bad"][-1] == "failed"
        assert states["dep"][-1] == "dependency_failed"
        # ok3 waited on ok2 when bad failed: nothing else needed it, so it was cancelled.
        assert states["ok3"][-1] == "cancelled"
        assert "done" not in states["ok3"]
        assert sum(final.counts.values()) == len(FAILING)
        env.coordinator.driver.check_invariants()


async def test_failure_with_keep_going_builds_the_rest(tmp_path: Path) -> None:
    nix = graph_nix(tmp_path, FAILING, fail={"bad": "bad on purpose"})
    async with running(tmp_path) as env:
        job = await env.submit_file(nix, "top", keep_going=True)
        events = await env.events(job.id)
        assert_gapless(events)
        states = drv_states(events)
        assert states["bad"][-1] == "failed"
        assert states["dep"][-1] == "dependency_failed"
        assert states["top"][-1] == "dependency_failed"
        for name in ("ok1", "ok2", "ok3"):
            assert states[name] == BUILT
        final = await env.stub.get_job(tvixd_pb.GetJobRequest(id=job.id))
        assert final.state == tvixd_pb.JobState.FAILED
        assert final.error.startswith(
            StorePath.from_absolute_path(instantiate(nix, "bad")[0]).absolute
        )
        assert "(and 2 more derivations did not build)" in final.error
        assert final.counts == {
            "DERIVATION_STATE_DONE": 3,
            "DERIVATION_STATE_FAILED": 1,
            "DERIVATION_STATE_DEPENDENCY_FAILED": 2,
        }
        # The log of the failed build names why.
        assert any(b"dummy build of" in line for line in log_lines(events))


async def test_builder_errors_are_retried(tmp_path: Path) -> None:
    nix = graph_nix(tmp_path, {"flaky": []})
    stores = Stores()
    builder = FlakyBuilder(DummyBuildService(stores.blobs), failures=2)
    async with running(tmp_path, builder=builder, stores=stores) as env:
        job = await env.submit_file(nix, "flaky")
        events = await env.events(job.id)
        assert job_states(events)[-1] == "succeeded"
        attempts = [
            (value.state.name.lower(), value.attempt)
            for which, value in map(body, events)
            if isinstance(value, tvixd_pb.DerivationStateChanged)
        ]
        assert attempts == [
            ("lookup", 0),
            ("waiting", 0),
            ("build", 1),
            ("build", 2),
            ("build", 3),
            ("push", 3),
            ("done", 3),
        ]


async def test_builder_errors_give_up_after_max_attempts(tmp_path: Path) -> None:
    nix = graph_nix(tmp_path, {"broken": []})
    builder = FlakyBuilder(DummyBuildService(), failures=100)
    async with running(
        tmp_path, builder=builder, retry=RetryPolicy(max_attempts=2, base_delay=0)
    ) as env:
        job = await env.submit_file(nix, "broken")
        await env.events(job.id)
        final = await env.stub.get_job(tvixd_pb.GetJobRequest(id=job.id))
        assert final.state == tvixd_pb.JobState.FAILED
        assert "build failed (attempt 2 of 2, no attempts left)" in final.error
        assert "sandbox setup failed (injected failure 2)" in final.error
        assert builder.calls == 2


async def test_a_build_past_the_coordinators_deadline_is_retried_then_fails(
    tmp_path: Path,
) -> None:
    nix = graph_nix(tmp_path, {"slow": []})
    builder = DummyBuildService(delay=60)
    async with running(
        tmp_path,
        builder=builder,
        retry=RetryPolicy(max_attempts=2, base_delay=0),
        build_timeout=0.2,
    ) as env:
        job = await env.submit_file(nix, "slow")
        events = await env.events(job.id)
        final = await env.stub.get_job(tvixd_pb.GetJobRequest(id=job.id))
        assert final.state == tvixd_pb.JobState.FAILED
        assert "did not finish within the coordinator's deadline" in final.error
        assert "attempt 2 of 2" in final.error
        assert builder.builds == 2
        assert [s for s in drv_states(events)["slow"] if s == "build"] == ["build", "build"]


async def test_drv_paths_job_signing_and_listing(tmp_path: Path) -> None:
    nix = graph_nix(tmp_path, {"lib": [], "app": ["lib"]})
    app_drv, lib_drv = instantiate(nix, "app", "lib")
    key = SigningKey.generate("tvixd-test-1")
    async with running(tmp_path, signing_key=key) as env:
        job = await env.submit_drvs([f"{app_drv}!out"])
        await env.events(job.id)
        final = await env.stub.get_job(tvixd_pb.GetJobRequest(id=job.id))
        assert final.state == tvixd_pb.JobState.SUCCEEDED
        assert final.request.drv_paths.paths == [f"{app_drv}!out"]
        (output,) = final.outputs
        info = await info_of(env, output.path)
        assert info is not None
        (signature,) = info.signatures  # type: ignore[attr-defined]
        assert key.to_public().verify(info.fingerprint(), signature)  # type: ignore[attr-defined]

        failed = await env.submit_drvs([lib_drv])  # succeeds from lookup, listed first
        await env.events(failed.id)
        listed = await env.stub.list_jobs(tvixd_pb.ListJobsRequest())
        assert [j.id for j in listed.jobs] == [failed.id, job.id]
        only = await env.stub.list_jobs(tvixd_pb.ListJobsRequest(states=[tvixd_pb.JobState.FAILED]))
        assert only.jobs == []


async def test_outputs_of_a_failed_job_are_those_it_built_in_request_order(
    tmp_path: Path,
) -> None:
    nix = graph_nix(tmp_path, FAILING, fail={"bad": "bad on purpose"})
    attrs = ["ok3", "top", "bad", "ok1"]
    drvs = {name: instantiate(nix, name)[0] for name in attrs}
    outs = {n: show_derivations([d])[d]["outputs"]["out"]["path"] for n, d in drvs.items()}  # type: ignore[index]
    async with running(tmp_path) as env:
        job = await env.submit_file(nix, *attrs, keep_going=True)
        events = await env.events(job.id)
        assert job_states(events)[-1] == "failed"
        final = await env.stub.get_job(tvixd_pb.GetJobRequest(id=job.id))
        # top and bad did not build: not listed; the rest in the order they were asked for.
        assert [(o.attr_path, o.drv_path, o.output_name, o.path) for o in final.outputs] == [
            (name, drvs[name], "out", outs[name]) for name in ("ok3", "ok1")
        ]
        listed = await env.stub.list_jobs(tvixd_pb.ListJobsRequest())
        assert [o.path for o in listed.jobs[0].outputs] == [outs["ok3"], outs["ok1"]]
        # The same attributes built successfully: every output, in request order.
        again = await env.submit_file(nix, "ok1", "ok3", "ok2")
        await env.events(again.id)
        done = await env.stub.get_job(tvixd_pb.GetJobRequest(id=again.id))
        assert done.state == tvixd_pb.JobState.SUCCEEDED
        assert [o.attr_path for o in done.outputs] == ["ok1", "ok3", "ok2"]
