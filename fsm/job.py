"""The job lifecycle: queued -> evaluating -> realising -> succeeded | failed | cancelled.

A job is one user request.  Contracts:

* ``queued`` is initial; ``succeeded``, ``failed`` and ``cancelled`` are final:
  every event there raises ``TransitionNotAllowed``.
* ``evaluated(success=False, error=...)`` fails the job and keeps the
  evaluator's message in ``failure_reason``; ``finished(all_ok=...)`` is the
  coordinator's verdict once every derivation of the job is final.
* ``cancel`` and ``fail`` leave any non-final state.
* ``failure_reason`` is a non-empty string exactly in ``failed`` and
  ``cancelled``, and ``None`` elsewhere.
* There is no resume event: a job restored in ``evaluating`` has its
  evaluation run again (evaluation is idempotent and derivations already known
  are deduplicated), one restored in ``realising`` waits on its derivations,
  which resume on their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType

from statemachine import Event, State

from fsm.base import Fact, LifecycleMachine
from fsm.records import JobRecord
from fsm.states import FINAL_JOB_STATES, JobState


@dataclass(slots=True)
class JobModel:
    """The mutable data a :class:`JobMachine` drives; the machine writes ``state``."""

    job_id: str
    failure_reason: str | None = None
    state: JobState | None = None


def _record_of(model: JobModel, state: JobState) -> JobRecord:
    return JobRecord(model.job_id, state, model.failure_reason)


_REASON = Fact("reason", str, False, "a human-readable explanation")


class JobMachine(LifecycleMachine[JobModel]):
    """One job's lifecycle; see the module docstring for the contracts."""

    event_facts = MappingProxyType(
        {
            "start": (),
            "evaluated": (
                Fact("success", bool, True, "whether evaluation succeeded"),
                Fact("error", str, False, "the evaluator's message when it did not"),
            ),
            "finished": (
                Fact("all_ok", bool, True, "whether every derivation of the job is done"),
                _REASON,
            ),
            "cancel": (_REASON,),
            "fail": (Fact("reason", str, True, "what went wrong"),),
        }
    )

    # -- guards and actions -----------------------------------------------------

    def _success(self, success: bool) -> bool:
        return success

    def _all_ok(self, all_ok: bool) -> bool:
        return all_ok

    def _note_eval_failure(self, error: str = "") -> None:
        what = "evaluation failed"
        self.model.failure_reason = f"{what}: {error}" if error else what

    def _note_drv_failures(self, reason: str = "") -> None:
        self.model.failure_reason = reason or "some derivations did not build"

    def _note_cancel(self, reason: str = "") -> None:
        self.model.failure_reason = f"cancelled: {reason}" if reason else "cancelled"

    def _note_fail(self, reason: str) -> None:
        self.model.failure_reason = reason or "failed"

    # -- states and events ---------------------------------------------------------

    queued = State(value=JobState.QUEUED, initial=True)
    evaluating = State(value=JobState.EVALUATING)
    realising = State(value=JobState.REALISING)
    succeeded = State(value=JobState.SUCCEEDED, final=True)
    failed = State(value=JobState.FAILED, final=True)
    cancelled = State(value=JobState.CANCELLED, final=True)

    start = Event(queued.to(evaluating))
    evaluated = Event(
        evaluating.to(realising, cond=_success)
        | evaluating.to(failed, unless=_success, on=_note_eval_failure)
    )
    finished = Event(
        realising.to(succeeded, cond=_all_ok)
        | realising.to(failed, unless=_all_ok, on=_note_drv_failures)
    )
    cancel = Event(cancelled.from_(queued, evaluating, realising, on=_note_cancel))
    fail = Event(failed.from_(queued, evaluating, realising, on=_note_fail))

    # -- construction, restore, inspection -------------------------------------

    def __init__(self, model: JobModel, *, listeners: Iterable[object] = ()) -> None:
        """Drive ``model``: from ``queued`` when its ``state`` is None (``on_enter_queued``
        listeners run), else from the state it holds (no enter callbacks run)."""
        _record_of(model, model.state or JobState.QUEUED)  # a valid state of this machine
        super().__init__(model, listeners=listeners)

    @classmethod
    def new(cls, job_id: str, *, listeners: Iterable[object] = ()) -> JobMachine:
        """A fresh machine in ``queued`` for ``job_id``."""
        return cls(JobModel(job_id), listeners=listeners)

    @classmethod
    def from_record(cls, record: JobRecord, *, listeners: Iterable[object] = ()) -> JobMachine:
        """Rebuild a machine in ``record.state`` (any state, finals included)."""
        model = JobModel(record.job_id, failure_reason=record.failure_reason, state=record.state)
        return cls(model, listeners=listeners)

    def to_record(self) -> JobRecord:
        """A frozen snapshot of the model; raises InvalidRecord if it breaks an invariant."""
        return _record_of(self.model, self.state)

    @classmethod
    def subject_of(cls, model: JobModel) -> str:
        return f"job {model.job_id}"

    @property
    def state(self) -> JobState:
        """The current state."""
        state = self.model.state
        assert state is not None  # set by activation or restore
        return state

    @property
    def is_final(self) -> bool:
        """Whether no event leaves the current state (True for a restored final machine too)."""
        return self.state in FINAL_JOB_STATES
