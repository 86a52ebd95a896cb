"""A coordinator served over a real unix socket, and helpers to drive it through the gRPC API.

``running(...)`` starts a :class:`~tvixd.coordinator.Coordinator` (real SQLite
journal in the test's directory, memory castore and path infos unless given,
the real Nix evaluator, any builder) in a task group, serves
``coordinator_servicers`` on ``<dir>/tvixd.sock`` with grpclib and yields an
:class:`Env` holding the generated ``CoordinatorStub`` talking to it.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from grpclib.client import Channel
from grpclib.server import Server

from clients.build.protocols import BuildService
from clients.castore.protocols import BlobService, DirectoryService
from clients.store.protocols import PathInfoService
from nixcompat.signing import SigningKey
from proto.gen.tvixd import v1 as tvixd_pb
from tvixd.api import coordinator_servicers
from tvixd.build.dummy import DummyBuildService
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService
from tvixd.coordinator import Coordinator, RetryPolicy
from tvixd.eval.nix import NixEvaluator
from tvixd.eval.protocol import Evaluator
from tvixd.store.pathinfo.memory import MemoryPathInfoService

FINAL = (tvixd_pb.JobState.SUCCEEDED, tvixd_pb.JobState.FAILED, tvixd_pb.JobState.CANCELLED)


@dataclass
class Stores:
    """The store services a coordinator works on (memory by default)."""

    blobs: BlobService = field(default_factory=MemoryBlobService)
    directories: DirectoryService = field(default_factory=MemoryDirectoryService)
    pathinfos: PathInfoService = field(default_factory=MemoryPathInfoService)


@dataclass
class Env:
    """A running coordinator and a client of it."""

    coordinator: Coordinator
    stub: tvixd_pb.CoordinatorStub
    stores: Stores
    builder: BuildService
    journal: Path

    async def submit_file(self, path: Path, *attrs: str, keep_going: bool = False) -> tvixd_pb.Job:
        return await self.stub.submit(
            tvixd_pb.SubmitRequest(
                nix_file=tvixd_pb.NixFile(path=str(path), attr_paths=list(attrs)),
                keep_going=keep_going,
            )
        )

    async def submit_drvs(self, paths: Sequence[str], *, keep_going: bool = False) -> tvixd_pb.Job:
        return await self.stub.submit(
            tvixd_pb.SubmitRequest(
                drv_paths=tvixd_pb.DrvPaths(paths=list(paths)), keep_going=keep_going
            )
        )

    async def events(
        self, job_id: str, from_seq: int = 0, within: float = 60
    ) -> list[tvixd_pb.JobEvent]:
        """Watch (follow) the job to its end; every event received."""
        events = []
        with anyio.fail_after(within):
            async for event in self.stub.watch(
                tvixd_pb.WatchRequest(job_id=job_id, from_seq=from_seq, follow=True)
            ):
                events.append(event)
        return events

    async def finish(self, job_id: str, within: float = 60) -> tvixd_pb.Job:
        """Wait (through Watch) for the job to be final; the final job."""
        await self.events(job_id, within=within)
        job = await self.stub.get_job(tvixd_pb.GetJobRequest(id=job_id))
        assert job.state in FINAL, job
        return job


def copy_busybox(directory: Path) -> Path:
    """``directory/busybox/bin/busybox``: a static busybox for derivations (nixpkgs bootstrap style)."""
    tree = directory / "busybox"
    (tree / "bin").mkdir(parents=True, exist_ok=True)
    target = tree / "bin" / "busybox"
    if not target.exists():
        shutil.copy2("/bin/busybox", target)
        target.chmod(0o555)
    return tree


@asynccontextmanager
async def running(
    directory: Path,
    *,
    builder: BuildService | None = None,
    stores: Stores | None = None,
    evaluator: Evaluator | None = None,
    max_jobs: int = 4,
    signing_key: SigningKey | None = None,
    retry: RetryPolicy | None = None,
    log_cap: int | None = None,
    build_timeout: float | None = None,
) -> AsyncIterator[Env]:
    stores = stores or Stores()
    builder = builder or DummyBuildService(stores.blobs)
    own_evaluator = evaluator is None
    evaluator = evaluator or NixEvaluator(stores.blobs, stores.directories, stores.pathinfos)
    journal = directory / "state" / "jobs.db"
    extra: dict[str, float] = {} if log_cap is None else {"log_cap": log_cap}
    if build_timeout is not None:
        extra["build_timeout"] = build_timeout
    coordinator = Coordinator(
        evaluator=evaluator,
        blobs=stores.blobs,
        directories=stores.directories,
        pathinfos=stores.pathinfos,
        builder=builder,
        journal_path=journal,
        signing_key=signing_key,
        max_jobs=max_jobs,
        retry=retry or RetryPolicy(base_delay=0.01),
        **extra,  # type: ignore[arg-type]
    )
    socket = directory / "tvixd.sock"
    try:
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(30):
                await tg.start(coordinator.run)
            server = Server(coordinator_servicers(coordinator))
            await server.start(path=str(socket))
            channel = Channel(path=str(socket))
            try:
                yield Env(coordinator, tvixd_pb.CoordinatorStub(channel), stores, builder, journal)
            finally:
                channel.close()
                server.close()
                with anyio.fail_after(10):
                    await server.wait_closed()
                tg.cancel_scope.cancel()
    finally:
        if own_evaluator:
            await evaluator.close()
