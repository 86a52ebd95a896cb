"""The driver: sends events to the derivation machine and acts on the states it reaches.

Every change happens in a *step*: synchronous code on the event loop sends
events (the journal listeners enqueue rows), collects the actions the new
states call for, then ``await self.settle()`` commits the journal and only
then performs the actions.  So nothing is done — no lookup, build, push or
answer — for a transition that is not durable, and a burst of transitions is
one transaction.

What entering each state calls for (``_entered``):

=====================  ======================================================
``lookup``             ask the path-info service for the outputs (batched)
``waiting``            link the inputs (creating and attaching them: lookup is
                       top-down), then ``inputs_ready`` or ``input_failed``
``build``              queue for a build slot (after the retry delay)
``push``               (the build slot's follow-up pushes)
final                  tell waiting dependents and the jobs
=====================  ======================================================

``.drv`` files to read and outputs to look up are queued and handled in
batches (:class:`~tvixd.coordinator.batches.BatchQueue`): one task, one
``read_derivations`` / ``get_many`` call, one deadline and one commit per
batch, instead of one of each per derivation.

Final nodes are processed from a queue, not recursively, so a failure
cascading down a long chain cannot exhaust the stack.  Jobs (starting,
evaluating, finishing, cancelling) are in :mod:`tvixd.coordinator.jobdriver`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import anyio.abc

from clients.errors import InvalidRequest, StorageError
from clients.store.protocols import PathInfoService
from fsm import CompiledMachine, DerivationMachine, DerivationModel, DerivationRecord, DrvState
from nixcompat.derivation import Derivation
from nixcompat.storepath import StorePath
from tvixd.coordinator.batches import BatchQueue
from tvixd.coordinator.graph import Graph, Node
from tvixd.coordinator.jobs import JobRun
from tvixd.coordinator.listeners import DerivationJournal, record_of
from tvixd.coordinator.logs import LOG_CAP
from tvixd.coordinator.realise import Realiser
from tvixd.coordinator.retry import RetryPolicy
from tvixd.coordinator.slots import BuildSlots
from tvixd.eval.protocol import Evaluator
from tvixd.journal.journal import Journal, JournalClosed
from tvixd.store.pathinfo.many import get_many

__all__ = ["LOOKUP_TIMEOUT", "NodeDriver"]

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT = 300.0
"""Seconds reading a batch of ``.drv`` files or looking up a batch of outputs may take."""

_RESUMABLE = frozenset({DrvState.LOOKUP, DrvState.WAITING, DrvState.BUILD, DrvState.PUSH})


class NodeDriver:
    """Drives derivation nodes (see the module docstring); jobs build on it."""

    def __init__(
        self,
        *,
        tg: anyio.abc.TaskGroup,
        journal: Journal,
        evaluator: Evaluator,
        pathinfos: PathInfoService,
        realiser: Realiser,
        slots: int,
        retry: RetryPolicy,
        clock: Callable[[], int],
        log_cap: int = LOG_CAP,
    ) -> None:
        self.graph = Graph()
        self.runs: dict[str, JobRun] = {}
        self.slots = BuildSlots(
            self, slots=slots, realiser=realiser, journal=journal, clock=clock, log_cap=log_cap
        )
        self._tg = tg
        self._journal = journal
        self._evaluator = evaluator
        self._pathinfos = pathinfos
        self._retry = retry
        self._clock = clock
        self._listener = DerivationJournal(journal, self.graph, clock)
        self._machine = CompiledMachine(DerivationMachine, listeners=[self._listener])
        self._actions: list[Callable[[], object]] = []
        self._finals: deque[Node] = deque()
        self._loads = BatchQueue[tuple[Node, int, DrvState]](self._spawn_task, self._load)
        self._lookups = BatchQueue[tuple[Node, int]](self._spawn_task, self._lookup)
        self._restored: dict[str, DerivationRecord] = {}

    # -- steps ----------------------------------------------------------------------------

    async def settle(self) -> None:
        """End a step: process final nodes, commit the journal, then run the collected actions."""
        self._drain_finals()
        actions, self._actions = self._actions, []
        # Shielded: the actions belong to every step so far, not only the caller's; a
        # cancelled caller (e.g. a job's task) must not drop them.  Bounded by the commit.
        with anyio.CancelScope(shield=True):
            try:
                await self._journal.commit()
            except JournalClosed:
                return  # shutting down: nothing more is acted upon
            for action in actions:
                action()

    def _later(self, fn: Callable[..., object], *args: Any) -> None:
        self._actions.append(partial(fn, *args))

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        self._tg.start_soon(fn, *args)

    def _spawn_task(self, fn: Callable[[], Any]) -> None:
        self._tg.start_soon(fn)

    def send(self, node: Node, event: str, **facts: Any) -> None:
        """Send ``event`` to ``node``'s derivation machine and act on the state it reaches.

        The machine is compiled once (:class:`fsm.CompiledMachine`) and driven over a model
        made from the node's record: a node holds no machine of its own.
        """
        before = node.record
        model = DerivationModel(
            before.drv_path,
            before.max_attempts,
            before.attempt,
            before.failure_reason,
            before.state,
        )
        self._machine.send(model, event, **facts)
        last = self._listener.last
        # the record the listener journaled, when it journaled this model (nothing changes it after)
        node.record = last[1] if last is not None and last[0] is model else record_of(model)
        if node.record.state is not before.state or node.record.attempt != before.attempt:
            self._entered(node)

    def _entered(self, node: Node) -> None:
        state = node.state
        if state is DrvState.LOOKUP:
            self._later(self._lookups.add, (node, node.generation))
        elif state is DrvState.WAITING:
            self._link_inputs(node)
        elif state is DrvState.BUILD:
            delay = self._retry.delay(node.record.attempt)
            if delay > 0:
                self._later(self._spawn, self.slots.submit_after, node, node.generation, delay)
            else:
                self._later(self.slots.submit, node, node.generation)
        elif node.is_final:
            self._finals.append(node)

    # -- nodes: creation, start, restart, cancel ---------------------------------

    def node(self, path: StorePath, drv: Derivation | None = None) -> Node:
        """The node of ``path``, created (not started) when absent."""
        key = path.absolute
        node = self.graph.get(key)
        if node is not None:
            if node.drv is None:
                node.drv = drv
            return node
        restored = self._restored.pop(key, None)
        if restored is None:
            node = self.graph.add(Node(path, self._fresh_record(key), drv))
            self._fresh(node)
        else:
            node = self.graph.add(Node(path, restored, drv))
        return node

    def _fresh_record(self, key: str) -> DerivationRecord:
        return DerivationRecord(key, max_attempts=self._retry.max_attempts)

    def _fresh(self, node: Node) -> None:
        """Start ``node`` over in ``eval`` (journaled; no enter callbacks, nothing listens to them)."""
        record = self._fresh_record(node.key)
        node.record = record
        node.fresh_log = True
        self._listener.save_record(record)

    def _start(self, node: Node) -> None:
        """Set a node going: load its ``.drv`` if needed, then ``evaluated`` or ``resume``."""
        node.started = True
        if node.is_final:
            return
        if node.drv is None:
            self._later(self._loads.add, (node, node.generation, node.state))
        else:
            self._advance_loaded(node)

    def _advance_loaded(self, node: Node) -> None:
        if node.state is DrvState.EVAL:
            self.send(node, "evaluated")
        elif node.state in _RESUMABLE:
            self.send(node, "resume")

    def _restart(self, node: Node) -> None:
        """Run an unsuccessful node again (a job that had not seen it fail needs it)."""
        node.generation += 1
        for child in node.inputs:
            child.dependents.discard(node)
        node.inputs.clear()
        node.pending_inputs = 0
        self._fresh(node)
        for job_id in node.jobs:
            self.runs[job_id].pending += 1
        self._start(node)

    def cancel_node(self, node: Node, reason: str) -> None:
        """Cancel ``node`` (and its running build)."""
        node.generation += 1
        if node.scope is not None:
            node.scope.cancel()
        self.send(node, "cancel", reason=reason)

    def attach(self, run: JobRun, node: Node, *, restoring: bool = False) -> None:
        """Make ``run`` need ``node`` (and, through waiting nodes, their inputs).

        An unsuccessful node the job had not needed before is restarted
        (unless ``restoring``: then the job saw that failure before a restart).
        """
        for n in self.graph.attach(run.id, node):
            run.nodes.add(n)
            self._journal.add_job_drv(run.id, n.key)
            if n.is_unsuccessful and not restoring:
                self._restart(n)
            elif not n.is_final:
                run.pending += 1
            if not n.started:
                self._start(n)

    # -- async steps: load, lookup --------------------------------------------------------

    async def _load(self, items: list[tuple[Node, int, DrvState]]) -> None:
        """Read the ``.drv`` files, then advance each node (if nothing else moved it meanwhile)."""
        paths = [node.drv_path for node, _, _ in items]
        results: list[Derivation | str]
        try:
            with anyio.fail_after(LOOKUP_TIMEOUT):
                loaded = await self._evaluator.read_derivations(paths)
            results = [drv if isinstance(drv, Derivation) else drv.message for drv in loaded]
        except TimeoutError:
            results = [
                f"reading {node.key} did not finish within {LOOKUP_TIMEOUT:g} s"
                for node, _, _ in items
            ]
        except Exception as exc:
            log.exception("reading %d derivations", len(items))
            results = [
                f"internal error reading {node.key}: {type(exc).__name__}: {exc}"
                for node, _, _ in items
            ]
        for (node, generation, state), result in zip(items, results, strict=True):
            if node.is_stale(generation, state):
                continue
            if isinstance(result, str):
                self.send(node, "fail", reason=result)
            else:
                node.drv = result
                self._advance_loaded(node)
        await self.settle()

    async def _lookup(self, items: list[tuple[Node, int]]) -> None:
        """Look up the outputs of each node, then report ``lookup_done`` (or ``fail``)."""
        wanted: list[list[bytes]] = [[] for _ in items]
        found: dict[bytes, object] = {}
        failure = None
        try:
            wanted = [[path.digest for path in node.output_paths().values()] for node, _ in items]
            digests = list(dict.fromkeys(d for node_digests in wanted for d in node_digests))
            with anyio.fail_after(LOOKUP_TIMEOUT):
                found = dict(zip(digests, await get_many(self._pathinfos, digests), strict=True))
        except TimeoutError as exc:
            failure = f"looking up the outputs failed: {exc or type(exc).__name__}"
        except Exception as exc:
            log.exception("looking up the outputs of %d derivations", len(items))
            failure = f"internal error looking up the outputs: {type(exc).__name__}: {exc}"
        for (node, generation), node_digests in zip(items, wanted, strict=True):
            if node.is_stale(generation, DrvState.LOOKUP):
                continue
            reason = failure
            present = True
            for digest in node_digests if reason is None else ():
                info = found[digest]
                if isinstance(info, StorageError | InvalidRequest):
                    reason = f"looking up the outputs failed: {info or type(info).__name__}"
                    break
                if info is None:
                    present = False
            if reason is not None:
                self.send(node, "fail", reason=reason)
            else:
                self.send(node, "lookup_done", outputs_present=present)
        await self.settle()

    # -- waiting: inputs ------------------------------------------------------------------

    def _link_inputs(self, node: Node) -> None:
        drv = node.drv
        assert drv is not None
        node.pending_inputs = 0
        failed: Node | None = None
        for path, outputs in drv.input_derivations.items():
            # the common case, a known node, without parsing (its key is the canonical path)
            child = self.graph.get(path)
            if child is None:
                child = self.node(StorePath.from_absolute_path(path))
            self.graph.link(node, child, outputs)
            for job_id in sorted(node.jobs):
                self.attach(self.runs[job_id], child)
            if child.state is DrvState.CANCELLED:
                self._restart(child)  # cancelled is not a failure: a running job needs it again
            if child.state is DrvState.DONE:
                continue
            if child.is_unsuccessful:
                failed = failed or child
            else:
                node.pending_inputs += 1
        if failed is not None:
            self.send(node, "input_failed", input_drv_path=failed.key)
        elif node.pending_inputs == 0:
            self.send(node, "inputs_ready", all_inputs_done=True)

    # -- final nodes ----------------------------------------------------------------------

    def _drain_finals(self) -> None:
        while self._finals:
            node = self._finals.popleft()
            if node.is_final:  # still: it may have been restarted since
                self._finalised(node)

    def _finalised(self, node: Node) -> None:
        state = node.state
        needed_by: set[str] = set()
        for dependent in sorted(node.dependents, key=lambda n: n.key):
            if dependent.state is not DrvState.WAITING or node not in dependent.inputs:
                continue
            if state is DrvState.DONE:
                dependent.pending_inputs -= 1
                if dependent.pending_inputs == 0:
                    self.send(dependent, "inputs_ready", all_inputs_done=True)
            elif state is DrvState.CANCELLED:
                needed_by |= dependent.jobs
            else:
                self.send(dependent, "input_failed", input_drv_path=node.key)
        for job_id in sorted(node.jobs):
            self.node_final(self.runs[job_id], node)
        needed_by &= self.runs.keys()
        if needed_by:  # cancelled, but a running job still waits on it: run it again
            for job_id in sorted(needed_by):
                self.attach(self.runs[job_id], node)
            if node.is_final:
                self._restart(node)
        elif node.is_final and not node.jobs:
            self.graph.evict(node)

    def node_final(self, run: JobRun, node: Node) -> None:
        """A node ``run`` needs became final (the job driver decides what that means for the job)."""
        raise NotImplementedError
