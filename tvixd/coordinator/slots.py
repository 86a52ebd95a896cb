"""What a build slot does with a derivation: build it and report; then, outside the slot, push.

:class:`BuildSlots` owns the :class:`~tvixd.coordinator.dispatch.Dispatcher`
(``max_jobs`` workers).  For a node in ``build`` a worker runs
:meth:`BuildSlots.realise`: the :class:`~tvixd.coordinator.realise.Realiser`
builds it (log lines go to a :class:`~tvixd.coordinator.logs.BuildLog`) and
the outcome is sent to the node's machine (``build_finished`` with the retry
policy's classification).  A successful build's push is a follow-up
(:meth:`~tvixd.coordinator.dispatch.Dispatcher.follow_up`, on one of
``max(max_jobs, PUSHES)`` followers), so the slot takes the next build at once:
the push waits until ``build → push`` is durable, puts the path infos and
sends ``push_finished``.  Events go through the driver (:class:`Steps`),
which acts on the states they reach.

A build or push whose node was cancelled meanwhile (a newer ``generation``,
or its cancel scope cancelled) reports nothing: the cancel already moved the
node.  One cancelled from outside (a drain, shutdown) reports nothing either
and propagates, so the node stays in ``build`` / ``push`` in the journal and
is looked up again on the next start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import anyio

from clients.errors import InvalidRequest, StorageError
from fsm import DrvState
from tvixd.coordinator.dispatch import Dispatcher
from tvixd.coordinator.graph import Node
from tvixd.coordinator.logs import LOG_CAP, BuildLog
from tvixd.coordinator.realise import Built, Realiser
from tvixd.coordinator.retry import Failure, classify
from tvixd.journal.journal import Journal

__all__ = ["PUSHES", "BuildSlots", "Steps"]

PUSHES = 16
"""Pushes in flight at a time (at least the number of slots).

Pushes running together share commits: their path infos go into one
transaction of the path-info database (one fsync) and their ``push → done``
transitions into one journal transaction.  Two at a time (the slots) made
pushes trickle one by one: with the 1000-derivation ``dummy://`` graph,
sixteen cut the coordinator's CPU per derivation by ~15 %.  Each push streams
its outputs' NARs in bounded chunks, so memory stays bounded too."""

log = logging.getLogger(__name__)


class Steps(Protocol):
    """The driver, as the build slots use it."""

    def send(self, node: Node, event: str, **facts: Any) -> None:
        """Send ``event`` to ``node``'s machine and act on the state it reaches."""
        ...

    async def settle(self) -> None:
        """Commit the journal, then run the collected actions."""
        ...


class BuildSlots:
    """The build slots and the work they do (see the module docstring)."""

    def __init__(
        self,
        steps: Steps,
        *,
        slots: int,
        realiser: Realiser,
        journal: Journal,
        clock: Callable[[], int],
        log_cap: int = LOG_CAP,
    ) -> None:
        # pushes run on the dispatcher's followers: max(slots, PUSHES) at a time
        self.dispatcher = Dispatcher(slots, self.realise, followers=max(slots, PUSHES))
        self._steps = steps
        self._realiser = realiser
        self._journal = journal
        self._clock = clock
        self._log_cap = log_cap

    def __repr__(self) -> str:
        return f"BuildSlots({self.dispatcher!r})"

    def submit(self, node: Node, generation: int) -> None:
        """Queue ``node`` for a slot."""
        self.dispatcher.submit(node, generation)

    async def submit_after(self, node: Node, generation: int, delay: float) -> None:
        """Queue ``node`` for a slot after ``delay`` seconds (a retry), unless it moved on."""
        await anyio.sleep(delay)
        if not node.is_stale(generation, DrvState.BUILD):
            self.dispatcher.submit(node, generation)

    async def realise(self, node: Node, generation: int) -> None:
        """Build ``node`` and report (in a slot); a success's push follows outside the slot."""
        if node.is_stale(generation, DrvState.BUILD):
            return
        sink = BuildLog(
            self._journal,
            node,
            node.record.attempt,
            self._clock,
            cap=self._log_cap,
            reset=node.fresh_log,
        )
        node.fresh_log = False
        result: Built | Failure
        # One scope: the build's deadline and the node's cancellation (cancel_node).
        deadline = anyio.current_time() + self._realiser.build_timeout
        with anyio.CancelScope(deadline=deadline) as scope:
            node.scope = scope
            try:
                result = await self._realiser.build(node, sink)
            except Exception as exc:
                result = classify(exc)
                if result.reason.startswith("internal error"):
                    log.exception("building %s", node.key)
            finally:
                node.scope = None
        if node.is_stale(generation, DrvState.BUILD):
            return  # cancelled (a cancel moved the node), or moved on meanwhile
        if scope.cancelled_caught:
            if anyio.current_time() < deadline:
                return
            result = classify(TimeoutError())
        steps = self._steps
        if isinstance(result, Failure):
            steps.send(
                node,
                "build_finished",
                success=False,
                retryable=result.retryable,
                reason=result.reason,
                log_tail=result.log_tail or sink.tail_text(),
            )
            await steps.settle()
            return
        steps.send(node, "build_finished", success=True)
        self.dispatcher.follow_up(node, partial(self._push, node, generation, result))

    async def _push(self, node: Node, generation: int, built: Built) -> None:
        """Push ``built`` once ``build → push`` is durable, then report."""
        await self._steps.settle()
        if node.is_stale(generation, DrvState.PUSH):
            return
        failure = None
        deadline = anyio.current_time() + self._realiser.push_timeout
        # One scope: the push's deadline and the node's cancellation.
        with anyio.CancelScope(deadline=deadline) as scope:
            node.scope = scope
            try:
                await self._realiser.push(node, built)
            except Exception as exc:
                failure = str(exc) or type(exc).__name__
                if not isinstance(exc, InvalidRequest | StorageError | TimeoutError):
                    log.exception("pushing %s", node.key)
            finally:
                node.scope = None
        if node.is_stale(generation, DrvState.PUSH):
            return
        if scope.cancelled_caught:
            if anyio.current_time() < deadline:
                return
            failure = f"the push did not finish within {self._realiser.push_timeout:g} s"
        if failure is None:
            self._steps.send(node, "push_finished", success=True)
        else:
            self._steps.send(node, "push_finished", success=False, reason=failure)
        await self._steps.settle()
