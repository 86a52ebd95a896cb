"""Random event sequences, with random (sometimes wrong) facts, against the reference model.

Whatever is sent, a machine is always in one of its declared states, its model
is always a valid record, it matches the reference step by step, an event that
fails changes nothing, and a final state is never left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm import (
    FINAL_DRV_STATES,
    FINAL_JOB_STATES,
    UNSUCCESSFUL_DRV_STATES,
    UNSUCCESSFUL_JOB_STATES,
    DerivationMachine,
    DerivationRecord,
    DrvState,
    InvalidFacts,
    JobMachine,
    JobRecord,
    JobState,
    TransitionNotAllowed,
)
from tests.fsm.reference import DRV, DRV_EVENTS, INPUT, JOB_EVENTS, D, drv_step, job_step

_text = st.text(max_size=8)

DRV_FACTS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "evaluated": st.just({}),
    "lookup_done": st.fixed_dictionaries({"outputs_present": st.booleans()}),
    "inputs_ready": st.fixed_dictionaries({"all_inputs_done": st.booleans()}),
    "input_failed": st.fixed_dictionaries({"input_drv_path": st.just(INPUT)}),
    "build_finished": st.fixed_dictionaries(
        {"success": st.booleans()},
        optional={"retryable": st.booleans(), "reason": _text, "log_tail": _text},
    ),
    "push_finished": st.fixed_dictionaries({"success": st.booleans()}, optional={"reason": _text}),
    "resume": st.just({}),
    "cancel": st.fixed_dictionaries({}, optional={"reason": _text}),
    "fail": st.fixed_dictionaries({"reason": _text}, optional={"log_tail": _text}),
    "no_such_event": st.just({}),
}
JOB_FACTS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "start": st.just({}),
    "evaluated": st.fixed_dictionaries({"success": st.booleans()}, optional={"error": _text}),
    "finished": st.fixed_dictionaries({"all_ok": st.booleans()}, optional={"reason": _text}),
    "cancel": st.fixed_dictionaries({}, optional={"reason": _text}),
    "fail": st.fixed_dictionaries({"reason": _text}),
    "no_such_event": st.just({}),
}
CORRUPTIONS = ("unknown fact", "wrong type", "missing", "positional")


DRV_REQUIRED = {
    "lookup_done": {"outputs_present"},
    "inputs_ready": {"all_inputs_done"},
    "input_failed": {"input_drv_path"},
    "build_finished": {"success"},
    "push_finished": {"success"},
    "fail": {"reason"},
}
JOB_REQUIRED = {"evaluated": {"success"}, "finished": {"all_ok"}, "fail": {"reason"}}


@dataclass(frozen=True)
class Step:
    event: str
    facts: dict[str, Any]
    corruption: str | None

    def call_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The (args, kwargs) to send: the facts, corrupted as asked."""
        facts = dict(self.facts)
        if self.corruption == "positional":
            return (True,), facts
        if self.corruption == "unknown fact":
            facts["colour"] = "blue"
        elif self.corruption == "wrong type" and facts:
            name = sorted(facts)[0]
            facts[name] = 1 if isinstance(facts[name], str) else "yes"
        elif self.corruption == "missing" and facts:
            del facts[sorted(facts)[0]]
        return (), facts

    def is_corrupt(self, required: dict[str, set[str]]) -> bool:
        """Whether call_args() breaks the event's declaration (dropping optional facts does not)."""
        if self.corruption in ("positional", "unknown fact"):
            return True
        if self.corruption == "wrong type":
            return bool(self.facts)
        if self.corruption == "missing" and self.facts:
            return sorted(self.facts)[0] in required.get(self.event, set())
        return False


def steps(facts: dict[str, st.SearchStrategy[dict[str, Any]]]) -> st.SearchStrategy[Step]:
    corruption = st.one_of(st.none(), st.none(), st.none(), st.sampled_from(CORRUPTIONS))
    return st.sampled_from(sorted(facts)).flatmap(
        lambda event: st.builds(Step, st.just(event), facts[event], corruption)
    )


@st.composite
def drv_records(draw: st.DrawFn) -> DerivationRecord:
    state = draw(st.sampled_from(list(DrvState)))
    max_attempts = draw(st.integers(1, 4))
    if state in (D.EVAL, D.LOOKUP, D.WAITING, D.DEPENDENCY_FAILED):
        attempt = 0
    elif state in (D.BUILD, D.PUSH):
        attempt = draw(st.integers(1, max_attempts))
    else:
        attempt = draw(st.integers(0, max_attempts))
    reason = draw(st.text(min_size=1, max_size=5)) if state in UNSUCCESSFUL_DRV_STATES else None
    return DerivationRecord(DRV, state, attempt, max_attempts, reason)


class Transitions:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def after_transition(self, event: str, source: Any, target: Any) -> None:
        self.seen.append((str(event), str(source.value), str(target.value)))


def check_step(
    machine: DerivationMachine | JobMachine,
    seen: Transitions,
    step: Step,
    expected: Any,
    corrupt: bool,
) -> None:
    """Send ``step`` and check the outcome; ``expected`` is the reference record or None."""
    record = machine.to_record()
    before = list(seen.seen)
    error: type[Exception] | None = (
        TransitionNotAllowed if expected is None else InvalidFacts if corrupt else None
    )
    args, kwargs = step.call_args()
    if error is None:
        machine.send(step.event, *args, **kwargs)
    else:
        with pytest.raises(error):
            machine.send(step.event, *args, **kwargs)
    new = machine.to_record()  # always a valid record: the invariants hold
    if error is not None or record.is_final:
        assert new == record
        assert seen.seen == before
        return
    assert new.state is expected.state
    assert (new.failure_reason is not None) == expected.is_final_failure
    assert seen.seen == [*before, (step.event, record.state.value, new.state.value)]
    reason = kwargs.get("reason", "")
    if reason and new.state is not record.state and new.failure_reason is not None:
        assert reason in new.failure_reason


@settings(max_examples=300, deadline=None)
@given(start=st.one_of(st.none(), drv_records()), sequence=st.lists(steps(DRV_FACTS), max_size=25))
def test_derivation_machine_follows_the_reference(
    start: DerivationRecord | None, sequence: list[Step]
) -> None:
    seen = Transitions()
    if start is None:
        machine = DerivationMachine.new(DRV, listeners=[seen])
    else:
        machine = DerivationMachine.from_record(start, listeners=[seen])
    for step in sequence:
        record = machine.to_record()
        ref = drv_step(record, step.event, step.facts) if step.event in DRV_EVENTS else None
        expected = (
            None if ref is None else Expected(ref.state, ref.state in UNSUCCESSFUL_DRV_STATES)
        )
        check_step(machine, seen, step, expected, step.is_corrupt(DRV_REQUIRED))
        if ref is not None and not step.is_corrupt(DRV_REQUIRED):
            new = machine.to_record()
            assert (new.attempt, new.max_attempts) == (ref.attempt, ref.max_attempts)
        assert isinstance(machine.model.state, DrvState)
        assert machine.is_final == (machine.state in FINAL_DRV_STATES)


@settings(max_examples=150, deadline=None)
@given(
    start=st.sampled_from([None, *JobState]),
    sequence=st.lists(steps(JOB_FACTS), max_size=12),
)
def test_job_machine_follows_the_reference(start: JobState | None, sequence: list[Step]) -> None:
    seen = Transitions()
    if start is None:
        machine = JobMachine.new("job", listeners=[seen])
    else:
        reason = "r" if start in UNSUCCESSFUL_JOB_STATES else None
        machine = JobMachine.from_record(JobRecord("job", start, reason), listeners=[seen])
    for step in sequence:
        record = machine.to_record()
        ref = job_step(record, step.event, step.facts) if step.event in JOB_EVENTS else None
        expected = (
            None if ref is None else Expected(ref.state, ref.state in UNSUCCESSFUL_JOB_STATES)
        )
        check_step(machine, seen, step, expected, step.is_corrupt(JOB_REQUIRED))
        assert isinstance(machine.model.state, JobState)
        assert machine.is_final == (machine.state in FINAL_JOB_STATES)


@dataclass(frozen=True)
class Expected:
    state: DrvState | JobState
    is_final_failure: bool
