"""The journal listeners: every transition of a machine becomes journal rows and job events.

One instance of each is shared by all machines (each listener adds to a
machine's per-instance cost, see docs/fsm.md).  They only *enqueue* into the
journal (synchronous, no I/O); the driver awaits ``journal.commit()`` before
it acts on the new state.  A listener that raises aborts the event and the
machine rolls back, so a transition that cannot be journaled does not happen.

* :class:`DerivationJournal` saves the derivation's record and appends a
  ``DerivationStateChanged`` event to every running job that needs the
  derivation.  The internal progress report ``waiting → waiting``
  (``inputs_ready`` with inputs left) changes nothing and is not journaled.
* :class:`JobJournal` saves the job row (its counts frozen once final) and
  appends a ``JobStateChanged`` event, including for the initial ``queued``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from statemachine import State

from fsm import DerivationModel, DerivationRecord, DrvState, JobModel, JobState
from tvixd.coordinator.graph import Graph
from tvixd.coordinator.jobs import JobRun
from tvixd.journal.journal import Journal
from tvixd.journal.model import DerivationStateChanged, JobStateChanged

__all__ = ["DerivationJournal", "JobJournal"]


def record_of(model: DerivationModel) -> DerivationRecord:
    """The frozen record of ``model`` in its current state."""
    assert model.state is not None
    return DerivationRecord(
        model.drv_path, model.state, model.attempt, model.max_attempts, model.failure_reason
    )


class DerivationJournal:
    """Listener on every derivation machine (see the module docstring)."""

    def __init__(self, journal: Journal, graph: Graph, clock: Callable[[], int]) -> None:
        self._journal = journal
        self._graph = graph
        self._clock = clock
        self.last: tuple[DerivationModel, DerivationRecord] | None = None
        """The last model journaled and its record (the driver reuses it: no second record)."""

    def __repr__(self) -> str:
        return f"DerivationJournal({self._journal!r})"

    def after_transition(
        self, event: str, source: State, target: State, model: DerivationModel
    ) -> None:
        """Library hook: journal the transition that just happened."""
        if source.id == target.id and event == "inputs_ready":
            return
        self.save(model)

    def save(self, model: DerivationModel) -> None:
        """Journal ``model``'s current state."""
        record = record_of(model)
        self.save_record(record)
        self.last = (model, record)

    def save_record(self, record: DerivationRecord) -> None:
        """Journal ``record`` (also used for a fresh derivation's ``eval``)."""
        now = self._clock()
        journal = self._journal
        journal.save_derivation(record, now)
        node = self._graph.get(record.drv_path)
        if node is None or record.state is DrvState.EVAL:
            return  # eval is not an event: a derivation appears in job logs from lookup on
        body = DerivationStateChanged(
            record.drv_path, record.state, record.attempt, record.failure_reason or ""
        )
        for job_id in sorted(node.jobs):
            journal.append(job_id, body, now)


class JobJournal:
    """Listener on every job machine (see the module docstring)."""

    def __init__(
        self, journal: Journal, runs: Mapping[str, JobRun], clock: Callable[[], int]
    ) -> None:
        self._journal = journal
        self._runs = runs
        self._clock = clock

    def __repr__(self) -> str:
        return f"JobJournal({self._journal!r})"

    def on_enter_queued(self, model: JobModel) -> None:
        """Library hook: a fresh job machine starts in ``queued``."""
        self._save(model, JobState.QUEUED)

    def after_transition(self, model: JobModel, target: State) -> None:
        """Library hook: journal the job's new state."""
        self._save(model, JobState(target.value))

    def _save(self, model: JobModel, state: JobState) -> None:
        run = self._runs[model.job_id]
        now = self._clock()
        journal = self._journal
        current = journal.job(run.id)
        last_seq = current.last_seq if current is not None else 0
        journal.save_job(
            run.info(state=state, error=model.failure_reason, updated_ms=now, last_seq=last_seq)
        )
        journal.append(run.id, JobStateChanged(state, model.failure_reason or ""), now)
