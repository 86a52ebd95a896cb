"""The coordinator: the daemon's job service, over the shared derivation graph.

Lifetime: :meth:`Coordinator.run` opens the journal, starts its writer and
the build slots in one task group, resumes every unfinished job, then
signals readiness and runs until cancelled; the journal is flushed and
closed on the way out.  :meth:`Coordinator.stop_accepting` refuses new jobs
(``Unavailable``); :meth:`Coordinator.drain` lets running builds finish for a
grace period and then cancels them — their derivations stay in ``build`` in
the journal and are looked up again on the next start.

Queries (``get``, ``list_jobs``) first wait for the journal to be durable up
to now, so they never show a state that a crash could take back.  The
streams (``watch``, ``follow_log``) are in :mod:`tvixd.coordinator.streams`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Iterable
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from clients.build.protocols import BuildService
from clients.castore.protocols import BlobService, DirectoryService
from clients.errors import InvalidRequest, NotFound
from clients.store.nar import CastoreNarCalculator, NarMemo
from clients.store.protocols import PathInfoService
from fsm import DerivationRecord, JobState
from nixcompat.signing import SigningKey
from tvixd.coordinator import streams
from tvixd.coordinator.errors import Unavailable
from tvixd.coordinator.hub import Hub
from tvixd.coordinator.inputs import InputResolver
from tvixd.coordinator.jobdriver import Driver
from tvixd.coordinator.logs import LOG_CAP
from tvixd.coordinator.push import Pusher
from tvixd.coordinator.realise import BUILD_TIMEOUT, PUSH_TIMEOUT, Realiser
from tvixd.coordinator.retry import RetryPolicy
from tvixd.eval.protocol import EvaluationError, Evaluator
from tvixd.eval.roots import roots_from_drv_paths
from tvixd.journal.db import Batch
from tvixd.journal.journal import Journal
from tvixd.journal.model import (
    LIMITS,
    DrvPathsSource,
    JobEvent,
    JobInfo,
    JobSpec,
    Limits,
    LogLine,
    StoredLogLine,
)

__all__ = ["LIST_LIMIT", "Coordinator", "now_ms"]

log = logging.getLogger(__name__)

LIST_LIMIT = 10_000
"""``list_jobs`` answers with at most this many jobs, newest first."""


def now_ms() -> int:
    """Milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def _nar_memo(builder: BuildService) -> NarMemo:
    """The builder's ``nar_memo`` when it has one (an in-process builder), else a new one.

    An in-process builder that ingested its outputs knows their NARs; the
    push answers from that memo instead of reading each output back.
    """
    memo = getattr(builder, "nar_memo", None)
    return memo if isinstance(memo, NarMemo) else NarMemo()


class Coordinator:
    """Runs jobs: evaluation, lookup, build and push over one shared derivation graph.

    ``build_timeout`` / ``push_timeout``: seconds one build attempt / one push may take.
    """

    def __init__(
        self,
        *,
        evaluator: Evaluator,
        blobs: BlobService,
        directories: DirectoryService,
        pathinfos: PathInfoService,
        builder: BuildService,
        journal_path: Path,
        signing_key: SigningKey | None,
        max_jobs: int,
        retry: RetryPolicy | None = None,
        log_cap: int = LOG_CAP,
        limits: Limits = LIMITS,
        build_timeout: float = BUILD_TIMEOUT,
        push_timeout: float = PUSH_TIMEOUT,
    ) -> None:
        if max_jobs < 1:
            raise ValueError(f"max_jobs must be at least 1, got {max_jobs}")
        self._evaluator = evaluator
        self._pathinfos = pathinfos
        self._journal_path = journal_path
        self._max_jobs = max_jobs
        self._retry = retry or RetryPolicy()
        self._log_cap = log_cap
        self.limits = limits
        inputs = InputResolver(evaluator, pathinfos)
        pusher = Pusher(
            blobs=blobs,
            directories=directories,
            pathinfos=pathinfos,
            nar=CastoreNarCalculator(blobs, directories, _nar_memo(builder)),
            signing_key=signing_key,
        )
        self._realiser = Realiser(
            evaluator=evaluator,
            builder=builder,
            inputs=inputs,
            pusher=pusher,
            build_timeout=build_timeout,
            push_timeout=push_timeout,
        )
        self._events: Hub[str, JobEvent] = Hub()
        self._logs: Hub[str, StoredLogLine | DerivationRecord] = Hub()
        self._driver: Driver | None = None
        self._journal: Journal | None = None
        self._accepting = True

    def __repr__(self) -> str:
        return f"Coordinator({str(self._journal_path)!r}, {self._driver!r})"

    @property
    def driver(self) -> Driver:
        """The running engine (``Unavailable`` before :meth:`run` started or after it ended)."""
        if self._driver is None:
            raise Unavailable("the coordinator is not running")
        return self._driver

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            raise Unavailable("the coordinator is not running")
        return self._journal

    # -- lifetime -------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Resume unfinished jobs, signal readiness, then run until cancelled."""
        journal = await Journal.open(self._journal_path)
        journal.on_commit = self._publish
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(journal.run)
                driver = Driver(
                    tg=tg,
                    journal=journal,
                    evaluator=self._evaluator,
                    pathinfos=self._pathinfos,
                    realiser=self._realiser,
                    slots=self._max_jobs,
                    retry=self._retry,
                    clock=now_ms,
                    log_cap=self._log_cap,
                )
                await tg.start(driver.slots.dispatcher.run)
                await driver.recover(await journal.load())
                self._journal, self._driver = journal, driver
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._driver = None
            self._journal = None
            await journal.close()

    def stop_accepting(self) -> None:
        """Refuse new jobs from now on (``Unavailable``)."""
        self._accepting = False

    async def drain(self, grace: float) -> None:
        """Start no more builds; wait up to ``grace`` seconds for running ones, then cancel them."""
        self.stop_accepting()
        driver = self._driver
        if driver is not None:
            await driver.slots.dispatcher.drain(grace)

    def _publish(self, batch: Batch) -> None:
        by_job: dict[str, list[JobEvent]] = {}
        for event in batch.published:
            by_job.setdefault(event.job_id, []).append(event)
        for job_id, events in by_job.items():
            self._events.publish(job_id, events)
        for line in batch.published_logs:
            self._logs.publish(line.line.drv_path, (line,))
        for record in batch.published_records:
            self._logs.publish(record.drv_path, (record,))

    # -- jobs -----------------------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> JobInfo:
        """Create a job; answers with it as queued once that is durable.

        ``InvalidRequest`` for a request over the limits, a Nix file that does
        not exist, or a ``.drv`` path that is missing or malformed (an
        evaluation error fails the job instead: evaluation runs afterwards).
        """
        if not self._accepting:
            raise Unavailable("the coordinator is shutting down and accepts no new jobs")
        driver = self.driver
        spec.validate(self.limits)
        source = spec.source
        if isinstance(source, DrvPathsSource):
            try:
                await roots_from_drv_paths(self._evaluator, source.paths)
            except EvaluationError as exc:
                raise InvalidRequest(exc.message) from exc
        elif not await anyio.to_thread.run_sync(Path(source.path).exists):
            raise InvalidRequest(
                f"the Nix file {source.path!r} does not exist on the daemon's machine"
            )
        run = driver.create(spec)
        await driver.settle()
        info = driver.info(run)
        driver.start(run)
        return info

    async def get(self, job_id: str) -> JobInfo:
        """The job; ``NotFound`` for an unknown id."""
        driver, journal = self.driver, self.journal
        await journal.commit()
        run = driver.runs.get(job_id)
        if run is not None:
            return driver.info(run)
        info = await journal.get_job(job_id)
        if info is None:
            raise NotFound(f"job {job_id!r} not found")
        return info

    async def list_jobs(self, states: Iterable[JobState] = ()) -> list[JobInfo]:
        """Jobs in ``states`` (all when empty), newest first (at most :data:`LIST_LIMIT`)."""
        driver, journal = self.driver, self.journal
        wanted = frozenset(states)
        await journal.commit()
        stored = await journal.list_jobs(wanted, LIST_LIMIT)
        live = {run.id: driver.info(run) for run in list(driver.runs.values())}
        jobs = [live.get(info.id, info) for info in stored]
        return [info for info in jobs if not wanted or info.state in wanted]

    async def cancel(self, job_id: str) -> JobInfo:
        """Cancel the job (a final job is answered as it is); ``NotFound`` for an unknown id."""
        driver = self.driver
        run = driver.runs.get(job_id)
        if run is not None:
            driver.close(run, "cancel", reason="cancelled by request")
            await driver.settle()
        return await self.get(job_id)

    # -- streams ------------------------------------------------------------------------

    def watch(
        self, job_id: str, from_seq: int = 0, follow: bool = True
    ) -> AsyncGenerator[JobEvent, None]:
        """Events of the job with ``seq > from_seq``; see :func:`tvixd.coordinator.streams.watch`."""
        return streams.watch(self.driver, self.journal, self._events, job_id, from_seq, follow)

    def watch_batches(
        self, job_id: str, from_seq: int = 0, follow: bool = True, interval: float = 0.0
    ) -> AsyncGenerator[list[JobEvent], None]:
        """:meth:`watch` in batches; see :func:`tvixd.coordinator.streams.watch_batches`."""
        return streams.watch_batches(
            self.driver, self.journal, self._events, job_id, from_seq, follow, interval
        )

    def follow_log(self, drv_path: str, follow: bool = True) -> AsyncGenerator[LogLine, None]:
        """A derivation's build log; see :func:`tvixd.coordinator.streams.follow_log`."""
        return streams.follow_log(self.driver, self.journal, self._logs, drv_path, follow)
