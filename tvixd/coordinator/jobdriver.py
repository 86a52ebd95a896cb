"""The job side of the driver: start, evaluate, finish, cancel and resume jobs.

A job's task (:meth:`Driver.start`) sends ``start``, evaluates (streaming: each
root is attached to the shared graph as soon as it is evaluated, so lookups
and builds start while evaluation runs), then sends ``evaluated``.  The job
finishes when evaluation is over and no derivation it needs is pending — or,
without ``keep_going``, at the first derivation that fails.

Finishing or cancelling a job (:meth:`Driver.close`) cancels the derivations
only this job needs (their builds stop), then drops the job from every node,
then sends the job's final event, so the job's event log ends with its final
state.  Derivations other running jobs need go on.

:meth:`Driver.recover` rebuilds the running jobs from the journal after a
restart: each job's derivations are restored from their records (those in
``lookup``, ``waiting``, ``build`` or ``push`` are sent ``resume``, which looks
them up again), jobs still ``queued`` or ``evaluating`` evaluate again, jobs
``realising`` wait for their derivations.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import anyio

from fsm import DrvState, JobMachine, JobRecord, JobState
from nixcompat.storepath import StorePath
from tvixd.coordinator.driver import NodeDriver
from tvixd.coordinator.graph import Node
from tvixd.coordinator.jobs import JobRun
from tvixd.coordinator.listeners import JobJournal
from tvixd.eval.protocol import EvalRequest, EvaluatedRoot, EvaluationError
from tvixd.eval.roots import roots_from_drv_paths
from tvixd.journal.db import Recovered
from tvixd.journal.model import DrvPathsSource, JobInfo, JobOutput, JobSpec

__all__ = ["Driver"]

log = logging.getLogger(__name__)


class Driver(NodeDriver):
    """The coordinator's engine: derivations (:class:`NodeDriver`) and jobs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._job_listener = JobJournal(self._journal, self.runs, self._clock)

    def __repr__(self) -> str:
        return f"Driver({len(self.runs)} jobs, {self.graph!r}, {self.slots!r})"

    def info(self, run: JobRun) -> JobInfo:
        """The live job as the API shows it."""
        assert run.machine is not None
        current = self._journal.job(run.id)
        assert current is not None
        return run.info(
            state=run.state,
            error=run.machine.model.failure_reason,
            updated_ms=current.updated_ms,
            last_seq=current.last_seq,
        )

    # -- starting and evaluating ---------------------------------------------------------

    def create(self, spec: JobSpec) -> JobRun:
        """A new job in ``queued`` (journaled at the next settle)."""
        run = JobRun(uuid.uuid4().hex, spec, self._clock())
        self.runs[run.id] = run
        run.machine = JobMachine.new(run.id, listeners=[self._job_listener])
        return run

    def start(self, run: JobRun) -> None:
        """Run the job's evaluation task in the coordinator's task group."""
        self._spawn(self._run_job, run)

    def _job_send(self, run: JobRun, event: str, **facts: Any) -> None:
        assert run.machine is not None
        run.machine.send(event, **facts)

    async def _run_job(self, run: JobRun) -> None:
        with anyio.CancelScope() as scope:
            run.scope = scope
            try:
                if run.state is JobState.QUEUED:
                    self._job_send(run, "start")
                    await self.settle()
                await self._evaluate(run)
            except EvaluationError as exc:
                self.close(run, "evaluated", success=False, error=exc.message)
                await self.settle()
                return
            except Exception as exc:
                log.exception("evaluating job %s", run.id)
                self.fail_job(run, f"internal error: {type(exc).__name__}: {exc}")
                await self.settle()
                return
            if run.closing:
                return
            run.eval_done = True
            self._job_send(run, "evaluated", success=True)
            self._maybe_finish(run)
            await self.settle()

    async def _evaluate(self, run: JobRun) -> None:
        source = run.spec.source
        if isinstance(source, DrvPathsSource):
            for root in await roots_from_drv_paths(self._evaluator, source.paths):
                await self._add_root(run, root)
            return
        roots = self._evaluator.evaluate(
            EvalRequest(Path(source.path), source.attr_paths, source.args)
        )
        try:
            async for root in roots:
                await self._add_root(run, root)
        finally:
            aclose = getattr(roots, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                    await aclose()

    async def _add_root(self, run: JobRun, root: EvaluatedRoot) -> None:
        drv = await self._evaluator.read_derivation(root.drv_path)
        missing = [name for name in root.outputs if name not in drv.outputs]
        if missing:
            raise EvaluationError(f"{root.drv_path} has no output(s) {', '.join(missing)}")
        if run.closing:
            return
        node = self.node(root.drv_path, drv)
        if (root.attr_path, node.key) not in run.root_keys:
            run.root_keys.add((root.attr_path, node.key))
            outputs = [(name, drv.outputs[name].path) for name in root.outputs]
            self._journal.add_root(run.id, root.attr_path, node.key, outputs)
            for name, path in outputs:
                run.outputs.setdefault(JobOutput(node.key, name, path, root.attr_path))
        self.attach(run, node)
        await self.settle()

    # -- finishing ------------------------------------------------------------------------

    def node_final(self, run: JobRun, node: Node) -> None:
        if run.closing:
            return
        run.pending -= 1
        if node.is_unsuccessful and not run.spec.keep_going:
            self.fail_job(run, self._failure_summary(run))
        else:
            self._maybe_finish(run)

    def _maybe_finish(self, run: JobRun) -> None:
        if run.closing or not run.eval_done or run.pending > 0:
            return
        if any(node.state is not DrvState.DONE for node in run.nodes):
            self.close(run, "finished", all_ok=False, reason=self._failure_summary(run))
        else:
            self.close(run, "finished", all_ok=True)

    @staticmethod
    def _failure_summary(run: JobRun) -> str:
        failed = sorted(
            (n for n in run.nodes if n.is_unsuccessful),
            key=lambda n: (n.state is not DrvState.FAILED, n.key),
        )
        if not failed:
            return "some derivations did not build"
        first = failed[0]
        text = f"{first.key}: {first.record.failure_reason}"
        if len(failed) > 1:
            text += f" (and {len(failed) - 1} more derivations did not build)"
        return text

    def fail_job(self, run: JobRun, reason: str) -> None:
        """Fail ``run`` with ``reason`` (``finished`` once realising, ``fail`` before)."""
        if run.closing:
            return
        if run.state is JobState.REALISING:
            self.close(run, "finished", all_ok=False, reason=reason)
        else:
            self.close(run, "fail", reason=reason)

    def close(self, run: JobRun, event: str, **facts: Any) -> None:
        """Send ``run`` its final ``event``, releasing what only it needs (see the module docstring)."""
        if run.closing:
            return
        run.closing = True
        if run.scope is not None:
            run.scope.cancel()
        why = "was cancelled" if event == "cancel" else "ended"
        for node in sorted(run.nodes, key=lambda n: n.key):
            if not node.is_final and node.jobs == {run.id}:
                self.cancel_node(node, f"no job needs it any more (job {run.id} {why})")
        for node in run.nodes:
            node.jobs.discard(run.id)
        self._job_send(run, event, **facts)
        self._journal.forget_job(run.id)
        del self.runs[run.id]
        for node in run.nodes:
            if node.is_final and not node.jobs:
                self.graph.evict(node)

    # -- restart --------------------------------------------------------------------------

    async def recover(self, recovered: Recovered) -> None:
        """Resume every unfinished job of ``recovered`` (see the module docstring)."""
        self._restored = dict(recovered.derivations)
        restored: list[tuple[JobRun, tuple[str, ...]]] = []
        for unfinished in recovered.jobs:
            info = unfinished.info
            run = JobRun(info.id, info.spec, info.created_ms)
            run.machine = JobMachine.from_record(
                JobRecord(info.id, info.state, info.error or None), listeners=[self._job_listener]
            )
            run.outputs = dict.fromkeys(info.outputs)
            run.root_keys = {(attr, drv) for attr, drv, _ in unfinished.roots}
            self.runs[run.id] = run
            self._journal.adopt_job(info, len(unfinished.roots))
            restored.append((run, unfinished.drv_paths))
        for run, drv_paths in restored:
            for key in drv_paths:
                self.attach(run, self.node(StorePath.from_absolute_path(key)), restoring=True)
        self._restored.clear()
        for run, _ in restored:
            if run.closing:
                continue
            if not run.spec.keep_going and any(n.is_unsuccessful for n in run.nodes):
                self.fail_job(run, self._failure_summary(run))
            elif run.state is JobState.REALISING:
                run.eval_done = True
                self._maybe_finish(run)
            else:
                self.start(run)
        await self.settle()
        log.info("resumed %d jobs (%d derivations)", len(restored), len(self.graph))

    def check_invariants(self) -> None:
        """Assert the bookkeeping is consistent (for tests)."""
        for run in self.runs.values():
            pending = sum(1 for n in run.nodes if not n.is_final)
            assert run.pending == pending, f"{run!r}: pending {run.pending}, actually {pending}"
            for node in run.nodes:
                assert run.id in node.jobs, f"{node!r} lacks {run.id}"
        for node in self.graph.nodes():
            for job_id in node.jobs:
                assert job_id in self.runs, f"{node!r} names a job that is not running"
            if node.state is DrvState.WAITING:
                for child in node.inputs:
                    assert node.jobs <= child.jobs, f"{child!r} lacks jobs of {node!r}"
