"""The derivation lifecycle: eval -> lookup -> (done | waiting -> build -> push -> done).

The coordinator reports facts as event keyword arguments; the machine's guards
decide where the derivation goes; the coordinator then acts on the state it is
in (through listeners such as ``on_enter_build``).  Contracts:

* ``eval`` is initial; ``done``, ``failed``, ``dependency_failed`` and
  ``cancelled`` are final: every event there raises ``TransitionNotAllowed``.
* ``attempt`` counts the builds started since the last (re)start: it goes up by
  one on every transition into ``build`` (the retry ``build -> build`` too), is
  0 in ``eval``, ``lookup``, ``waiting`` and ``dependency_failed``, between 1
  and ``max_attempts`` in ``build`` and ``push``, and never above
  ``max_attempts``.
* a failed build is retried (``build -> build``) only when the coordinator says
  the failure is ``retryable`` (an infrastructure fault, not the builder's exit
  status: Nix builds are deterministic) and ``attempt < max_attempts``;
  otherwise it goes to ``failed``.  A failed push is not retried here: the
  store adapters retry transient errors themselves, so ``push_finished`` with
  ``success=False`` is final (``failed``).
* ``resume`` (after a daemon restart) sends a derivation from ``lookup``,
  ``waiting``, ``build`` or ``push`` back to ``lookup`` and resets ``attempt``
  to 0: the work may have finished before the crash (lookup then finds the
  outputs) and a crash is not the build's fault.  A derivation restored in
  ``eval`` just gets its ``evaluated`` event as usual.
* ``failure_reason`` is a non-empty string exactly in ``failed``,
  ``dependency_failed`` and ``cancelled``, and ``None`` elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType

from statemachine import Event, State

from fsm.base import Fact, LifecycleMachine
from fsm.records import DEFAULT_MAX_ATTEMPTS, DerivationRecord
from fsm.states import FINAL_DRV_STATES, DrvState


@dataclass(slots=True)
class DerivationModel:
    """The mutable data a :class:`DerivationMachine` drives; the machine writes ``state``.

    Listeners receive it as ``model``.  It is mutable because the library stores
    the current state on it; take a :class:`DerivationRecord` (frozen) to keep it.
    """

    drv_path: str
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    attempt: int = 0
    failure_reason: str | None = None
    state: DrvState | None = None


def _record_of(model: DerivationModel, state: DrvState) -> DerivationRecord:
    return DerivationRecord(
        model.drv_path, state, model.attempt, model.max_attempts, model.failure_reason
    )


_SUCCESS = Fact("success", bool, True, "whether the step succeeded")
_REASON = Fact("reason", str, False, "a human-readable explanation")
_LOG_TAIL = Fact("log_tail", str, False, "the last lines of the build log, for listeners")


class DerivationMachine(LifecycleMachine[DerivationModel]):
    """One derivation's lifecycle; see the module docstring for the contracts."""

    event_facts = MappingProxyType(
        {
            "evaluated": (),
            "lookup_done": (
                Fact("outputs_present", bool, True, "whether every output is in the store"),
            ),
            "inputs_ready": (
                Fact("all_inputs_done", bool, True, "whether every input derivation is done"),
            ),
            "input_failed": (
                Fact("input_drv_path", str, True, "the input derivation that failed"),
            ),
            "build_finished": (
                _SUCCESS,
                Fact("retryable", bool, False, "a failure another attempt may fix (default False)"),
                _REASON,
                _LOG_TAIL,
            ),
            "push_finished": (_SUCCESS, _REASON),
            "resume": (),
            "cancel": (_REASON,),
            "fail": (Fact("reason", str, True, "what went wrong"), _LOG_TAIL),
        }
    )

    # -- guards (named for the diagram: the label is the name without "_") ------

    def _outputs_present(self, outputs_present: bool) -> bool:
        return outputs_present

    def _all_inputs_done(self, all_inputs_done: bool) -> bool:
        return all_inputs_done

    def _success(self, success: bool) -> bool:
        return success

    def _retry_allowed(self, success: bool, retryable: bool = False) -> bool:
        return not success and retryable and self.model.attempt < self.model.max_attempts

    # -- actions on the model --------------------------------------------------------
    # Attached as the transitions' inline ``on`` actions: they run after the
    # ``on_transition`` hooks and before ``on_<event>``, so every ``on_enter_*``
    # and ``after_*`` hook sees the new state together with the new data.

    def _start_attempt(self) -> None:
        self.model.attempt += 1

    def _reset_attempts(self) -> None:
        self.model.attempt = 0

    def _note_build_failure(self, retryable: bool = False, reason: str = "") -> None:
        m = self.model
        if retryable:  # an infrastructure fault, and the retries are used up
            what = f"build failed (attempt {m.attempt} of {m.max_attempts}, no attempts left)"
        elif m.attempt > 1:  # a builder failure after retried infrastructure faults
            what = f"build failed (attempt {m.attempt})"
        else:  # a builder failure is never retried: no attempt count to speak of
            what = "build failed"
        m.failure_reason = f"{what}: {reason}" if reason else what

    def _note_push_failure(self, reason: str = "") -> None:
        self.model.failure_reason = f"push failed: {reason}" if reason else "push failed"

    def _note_input_failure(self, input_drv_path: str) -> None:
        self.model.failure_reason = f"input {input_drv_path} failed"

    def _note_cancel(self, reason: str = "") -> None:
        self.model.failure_reason = f"cancelled: {reason}" if reason else "cancelled"

    def _note_fail(self, reason: str) -> None:
        self.model.failure_reason = reason or "failed"

    # -- states ------------------------------------------------------------------

    eval = State(value=DrvState.EVAL, initial=True)
    lookup = State(value=DrvState.LOOKUP)
    waiting = State(value=DrvState.WAITING)
    build = State(value=DrvState.BUILD)
    push = State(value=DrvState.PUSH)
    done = State(value=DrvState.DONE, final=True)
    failed = State(value=DrvState.FAILED, final=True)
    dependency_failed = State(value=DrvState.DEPENDENCY_FAILED, final=True)
    cancelled = State(value=DrvState.CANCELLED, final=True)

    # -- events ------------------------------------------------------------------

    evaluated = Event(eval.to(lookup))
    lookup_done = Event(
        lookup.to(done, cond=_outputs_present) | lookup.to(waiting, unless=_outputs_present)
    )
    inputs_ready = Event(
        waiting.to(build, cond=_all_inputs_done, on=_start_attempt)
        | waiting.to(waiting, unless=_all_inputs_done, internal=True)
    )
    input_failed = Event(waiting.to(dependency_failed, on=_note_input_failure))
    build_finished = Event(
        build.to(push, cond=_success)
        | build.to(build, cond=_retry_allowed, on=_start_attempt)
        | build.to(failed, unless=[_success, _retry_allowed], on=_note_build_failure)
    )
    push_finished = Event(
        push.to(done, cond=_success) | push.to(failed, unless=_success, on=_note_push_failure)
    )
    resume = Event(lookup.from_(lookup, waiting, build, push, on=_reset_attempts))
    cancel = Event(cancelled.from_(eval, lookup, waiting, build, push, on=_note_cancel))
    fail = Event(failed.from_(eval, lookup, waiting, build, push, on=_note_fail))

    # -- construction, restore, inspection -------------------------------------

    def __init__(self, model: DerivationModel, *, listeners: Iterable[object] = ()) -> None:
        """Drive ``model``: from ``eval`` when its ``state`` is None (``on_enter_eval``
        listeners run), else from the state it holds (no enter callbacks run)."""
        _record_of(model, model.state or DrvState.EVAL)  # a valid state of this machine
        super().__init__(model, listeners=listeners)

    @classmethod
    def new(
        cls,
        drv_path: str,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        listeners: Iterable[object] = (),
    ) -> DerivationMachine:
        """A fresh machine in ``eval`` for ``drv_path``."""
        DerivationRecord(drv_path, max_attempts=max_attempts)  # validates the arguments
        return cls(DerivationModel(drv_path, max_attempts=max_attempts), listeners=listeners)

    @classmethod
    def from_record(
        cls, record: DerivationRecord, *, listeners: Iterable[object] = ()
    ) -> DerivationMachine:
        """Rebuild a machine in ``record.state`` (any state, finals included)."""
        model = DerivationModel(
            drv_path=record.drv_path,
            max_attempts=record.max_attempts,
            attempt=record.attempt,
            failure_reason=record.failure_reason,
            state=record.state,
        )
        return cls(model, listeners=listeners)

    def to_record(self) -> DerivationRecord:
        """A frozen snapshot of the model; raises InvalidRecord if it breaks an invariant."""
        return _record_of(self.model, self.state)

    @classmethod
    def subject_of(cls, model: DerivationModel) -> str:
        return model.drv_path

    @property
    def state(self) -> DrvState:
        """The current state."""
        state = self.model.state
        assert state is not None  # set by activation or restore, checked in __init__
        return state

    @property
    def is_final(self) -> bool:
        """Whether no event leaves the current state (True for a restored final machine too)."""
        return self.state in FINAL_DRV_STATES
