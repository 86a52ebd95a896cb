"""Watch (resumable, live) and FollowLog (live and after the fact), through the gRPC API."""

from __future__ import annotations

from pathlib import Path

import anyio
import grpc
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from proto.gen.tvixd import v1 as tvixd_pb
from tests.coordinator.harness import Stores, running
from tests.coordinator.helpers import (
    ChattyBuilder,
    assert_gapless,
    body,
    drv_states,
    job_states,
    log_lines,
)
from tests.coordinator.nixfiles import graph_nix, instantiate
from tests.interop import GrpcioProtos, in_thread
from tvixd.build.dummy import DummyBuildService
from tvixd.journal import DROPPED_LINE

pytestmark = [pytest.mark.nix, pytest.mark.asyncio]


async def test_watch_resumes_without_gaps_or_duplicates(tmp_path: Path) -> None:
    nix = graph_nix(tmp_path, {"a": [], "b": ["a"], "c": ["b"]})
    stores = Stores()
    builder = DummyBuildService(stores.blobs, delay=0.1)
    async with running(tmp_path, builder=builder, stores=stores) as env:
        job = await env.submit_file(nix, "c")
        first: list[tvixd_pb.JobEvent] = []
        with anyio.fail_after(20):
            async for event in env.stub.watch(tvixd_pb.WatchRequest(job_id=job.id, follow=True)):
                first.append(event)
                if len(first) == 6:
                    break  # a client disconnecting mid-job
        rest = await env.events(job.id, from_seq=first[-1].seq)
        everything = first + rest
        assert_gapless(everything)
        assert job_states(everything)[-1] == "succeeded"

        # After the fact: the whole log, any suffix of it, and follow=false ends after replay.
        replay = await env.events(job.id)
        assert replay == everything
        for start in (0, 3, len(everything) - 1, len(everything)):
            suffix = [
                e
                async for e in env.stub.watch(
                    tvixd_pb.WatchRequest(job_id=job.id, from_seq=start, follow=False)
                )
            ]
            assert suffix == everything[start:]


async def test_watch_without_follow_ends_after_the_stored_events(tmp_path: Path) -> None:
    nix = graph_nix(tmp_path, {"slow": []})
    stores = Stores()
    async with running(
        tmp_path, builder=DummyBuildService(stores.blobs, delay=1.0), stores=stores
    ) as env:
        job = await env.submit_file(nix, "slow")
        with anyio.fail_after(5):
            snapshot = [
                e async for e in env.stub.watch(tvixd_pb.WatchRequest(job_id=job.id, follow=False))
            ]
        assert snapshot
        assert_gapless(snapshot + (await env.events(job.id, from_seq=snapshot[-1].seq)))


async def test_follow_log_live_and_after_the_fact(tmp_path: Path) -> None:
    nix = graph_nix(tmp_path, {"chatty": []})
    (drv,) = instantiate(nix, "chatty")
    stores = Stores()
    builder = ChattyBuilder(DummyBuildService(stores.blobs), lines=30, pause=0.02)
    async with running(tmp_path, builder=builder, stores=stores) as env:
        job = await env.submit_file(nix, "chatty")
        with anyio.fail_after(10):
            await builder.started.wait()
            live = [
                line
                async for line in env.stub.follow_log(
                    tvixd_pb.FollowLogRequest(drv_path=drv, follow=True)
                )
            ]
        expected = [f"line {i}".encode() for i in range(30)]
        assert [line.line for line in live][:30] == expected  # in order, none missed, ended
        assert {(line.drv_path, line.attempt) for line in live} == {(drv, 1)}
        events = await env.events(job.id)
        assert log_lines(events)[:30] == expected  # the same lines reached the job's watchers
        stored = [
            line.line async for line in env.stub.follow_log(tvixd_pb.FollowLogRequest(drv_path=drv))
        ]
        assert stored == [line.line for line in live]


async def test_stored_log_keeps_the_last_bytes(tmp_path: Path) -> None:
    nix = graph_nix(tmp_path, {"verbose": []})
    (drv,) = instantiate(nix, "verbose")
    stores = Stores()
    builder = ChattyBuilder(DummyBuildService(stores.blobs), lines=200)
    async with running(tmp_path, builder=builder, stores=stores, log_cap=100) as env:
        job = await env.submit_file(nix, "verbose")
        events = await env.events(job.id)
        assert job_states(events)[-1] == "succeeded"
        stored = [
            line.line async for line in env.stub.follow_log(tvixd_pb.FollowLogRequest(drv_path=drv))
        ]
        assert 0 < sum(map(len, stored)) <= 100
        assert stored[-1].startswith(b"dummy build of")  # the newest lines are kept
        assert b"line 199" in stored
        # Replayed events of dropped lines say so; the sequence has no gaps.
        replayed = await env.events(job.id)
        assert_gapless(replayed)
        lines = log_lines(replayed)
        assert len(lines) == 201
        assert lines[0] == DROPPED_LINE
        assert lines[-1] == stored[-1]
        assert [body(e)[0] for e in replayed] == [body(e)[0] for e in events]
        assert drv_states(replayed) == drv_states(events)


async def test_watch_batches_carry_the_events_of_watch(
    tmp_path: Path, grpcio_protos: GrpcioProtos
) -> None:
    """WatchBatches: the same events as Watch, live and replayed, resumable, read by grpcio too."""
    nix = graph_nix(tmp_path, {"a": [], "b": ["a"], "c": ["b"], "d": ["a"]})
    stores = Stores()
    builder = ChattyBuilder(DummyBuildService(stores.blobs, delay=0.05), lines=3)
    async with running(tmp_path, builder=builder, stores=stores) as env:
        job = await env.submit_file(nix, "c", "d")
        live: list[list[tvixd_pb.JobEvent]] = []
        with anyio.fail_after(20):
            request = tvixd_pb.WatchRequest(job_id=job.id, follow=True)
            async for batch in env.stub.watch_batches(request):
                live.append(list(batch.events))
        events = await env.events(job.id)
        assert_gapless(events)
        assert job_states(events)[-1] == "succeeded"
        assert all(live)
        assert [e for b in live for e in b] == events
        assert len(live) < len(events)  # several events to a message
        for start in (0, 5, len(events) - 1, len(events)):
            request = tvixd_pb.WatchRequest(job_id=job.id, from_seq=start, follow=False)
            replay = [e async for b in env.stub.watch_batches(request) for e in b.events]
            assert replay == events[start:]
        beyond = tvixd_pb.WatchRequest(job_id=job.id, from_seq=len(events) + 1)
        with pytest.raises(GRPCError) as excinfo:
            await anext(aiter(env.stub.watch_batches(beyond)))
        assert excinfo.value.status is Status.INVALID_ARGUMENT

        pb, rpc = grpcio_protos.coordinator, grpcio_protos.coordinator_grpc
        socket = str(tmp_path / "tvixd.sock")

        def with_grpcio() -> tuple[list[bytes], list[bytes]]:
            with grpc.insecure_channel(f"unix:{socket}") as channel:
                stub = rpc.CoordinatorStub(channel)
                request = pb.WatchRequest(job_id=job.id, follow=True)
                batched = [
                    e.SerializeToString() for b in stub.WatchBatches(request) for e in b.events
                ]
                single = [e.SerializeToString() for e in stub.Watch(request)]
                return batched, single

        batched, single = await in_thread(with_grpcio)
        assert batched == single == [bytes(e) for e in events]


async def test_watch_batches_with_an_interval_join_commits(tmp_path: Path) -> None:
    """Live batches at least ``interval`` apart: what commits meanwhile joins the next one,
    and every event still arrives exactly once, in order."""
    nix = graph_nix(tmp_path, {"a": [], "b": ["a"], "c": ["b"], "d": ["a"], "e": ["d", "c"]})
    stores = Stores()
    builder = ChattyBuilder(DummyBuildService(stores.blobs, delay=0.02), lines=5)
    async with running(tmp_path, builder=builder, stores=stores) as env:
        job = await env.submit_file(nix, "e")
        seen: dict[float, list[list[int]]] = {0.0: [], 0.5: []}

        async def watch(interval: float) -> None:
            batches = env.coordinator.watch_batches(job.id, 0, True, interval=interval)
            async for batch in batches:
                seen[interval].append([event.seq for event in batch])

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for interval in seen:
                    tg.start_soon(watch, interval)
        events = await env.events(job.id)
        assert job_states(events)[-1] == "succeeded"
        everything = [e.seq for e in events]
        for batches in seen.values():
            assert all(batches)
            assert [seq for batch in batches for seq in batch] == everything
        assert len(seen[0.5]) <= len(seen[0.0])
        assert len(seen[0.5]) < len(everything)
