"""The derivation machine against the reference tables: allowed, forbidden, finals, retry, restore."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fsm import (
    FINAL_DRV_STATES,
    DerivationMachine,
    DerivationModel,
    DerivationRecord,
    DrvState,
    InvalidFacts,
    InvalidRecord,
    TransitionNotAllowed,
)
from tests.fsm.reference import (
    DRV,
    DRV_ALLOWED,
    DRV_EVENTS,
    DRV_FINAL,
    DRV_NON_FINAL,
    INPUT,
    VALID_FACTS,
    D,
    drv_record,
    drv_step,
)


def _id(row: tuple[Any, str, dict[str, Any], Any]) -> str:
    source, event, facts, target = row
    args = ",".join(f"{k}={v}" for k, v in facts.items() if k != "input_drv_path")
    return f"{source}-{event}({args})-{target}"


class Transitions:
    """A listener keeping (event, source, target) of every transition."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def after_transition(self, event: str, source: Any, target: Any) -> None:
        self.seen.append((str(event), source.id, target.id))


def test_the_declared_events_and_states_are_the_reference_ones() -> None:
    assert [str(e) for e in DerivationMachine.new(DRV).events] == list(DRV_EVENTS)
    assert list(DerivationMachine.event_facts) == list(DRV_EVENTS)
    assert [s.value for s in DerivationMachine.states] == list(DrvState)
    assert {s.value for s in DerivationMachine.final_states} == FINAL_DRV_STATES == set(DRV_FINAL)
    assert DerivationMachine.initial_state is not None
    assert DerivationMachine.initial_state.value is DrvState.EVAL


def test_the_table_lists_every_declared_transition() -> None:
    declared = {
        (t.source.value, str(event), t.target.value)
        for state in DerivationMachine.states
        for t in state.transitions
        if t.target is not None
        for event in t.events
    }
    assert declared == {(s, e, t) for s, e, _, t in DRV_ALLOWED}


@pytest.mark.parametrize("row", DRV_ALLOWED, ids=_id)
def test_allowed_transition(row: tuple[DrvState, str, dict[str, Any], DrvState]) -> None:
    source, event, facts, target = row
    seen = Transitions()
    machine = DerivationMachine.from_record(drv_record(source), listeners=[seen])
    machine.send(event, **facts)
    assert machine.state is target
    assert seen.seen == [(event, source.value, target.value)]
    expected = drv_step(drv_record(source), event, facts)
    assert expected is not None
    record = machine.to_record()
    assert (record.state, record.attempt) == (expected.state, expected.attempt)
    assert (record.failure_reason is None) == (expected.failure_reason is None)


FORBIDDEN = [
    (state, event)
    for state in DrvState
    for event in DRV_EVENTS
    if not any(s == state and e == event for s, e, _, _ in DRV_ALLOWED)
]


@pytest.mark.parametrize(("state", "event"), FORBIDDEN, ids=lambda v: str(v))
def test_forbidden_transition_raises_and_changes_nothing(state: DrvState, event: str) -> None:
    seen = Transitions()
    record = drv_record(state)
    machine = DerivationMachine.from_record(record, listeners=[seen])
    with pytest.raises(TransitionNotAllowed):
        machine.send(event, **VALID_FACTS[event])
    assert machine.to_record() == record
    assert seen.seen == []


@pytest.mark.parametrize("state", DRV_FINAL)
def test_final_states_are_final(state: DrvState) -> None:
    machine = DerivationMachine.from_record(drv_record(state))
    assert machine.is_final
    assert machine.allowed_events == []
    for event in [*DRV_EVENTS, "no_such_event"]:
        with pytest.raises(TransitionNotAllowed):
            machine.send(event, **VALID_FACTS.get(event, {}))
    assert machine.to_record() == drv_record(state)


def test_final_reached_by_a_transition_is_final_too() -> None:
    machine = DerivationMachine.from_record(drv_record(D.PUSH))
    machine.push_finished(success=True)
    assert machine.is_final
    for event in DRV_EVENTS:
        with pytest.raises(TransitionNotAllowed):
            machine.send(event, **VALID_FACTS[event])
    assert machine.state is D.DONE


def test_unknown_event_raises() -> None:
    machine = DerivationMachine.new(DRV)
    with pytest.raises(TransitionNotAllowed):
        machine.send("built")
    assert machine.state is D.EVAL


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 5])
def test_retry_guard_stops_at_the_limit(max_attempts: int) -> None:
    machine = DerivationMachine.new(DRV, max_attempts=max_attempts)
    builds: list[int] = []

    class CountBuilds:
        def on_enter_build(self, model: DerivationModel) -> None:
            builds.append(model.attempt)

    machine.add_listener(CountBuilds())
    machine.evaluated()
    machine.lookup_done(outputs_present=False)
    machine.inputs_ready(all_inputs_done=True)
    while machine.state is D.BUILD:
        machine.build_finished(success=False, retryable=True, reason="builder vanished")
    assert builds == list(range(1, max_attempts + 1))
    assert machine.state is D.FAILED
    assert machine.model.attempt == max_attempts
    assert machine.model.failure_reason == (
        f"build failed (attempt {max_attempts} of {max_attempts}, no attempts left): "
        "builder vanished"
    )


def test_a_retry_that_succeeds_goes_on_to_push() -> None:
    machine = DerivationMachine.from_record(drv_record(D.BUILD))
    machine.build_finished(success=False, retryable=True)
    assert (machine.state, machine.model.attempt) == (D.BUILD, 2)
    machine.build_finished(success=True)
    machine.push_finished(success=True)
    assert machine.to_record() == DerivationRecord(DRV, D.DONE, attempt=2)


def test_a_non_retryable_failure_fails_on_the_first_attempt() -> None:
    machine = DerivationMachine.from_record(drv_record(D.BUILD))
    machine.build_finished(success=False, reason="exit code 1")
    assert machine.to_record() == DerivationRecord(DRV, D.FAILED, 1, 3, "build failed: exit code 1")


def test_a_failed_push_is_final() -> None:
    machine = DerivationMachine.from_record(drv_record(D.PUSH))
    machine.push_finished(success=False, reason="store unreachable")
    assert machine.to_record().failure_reason == "push failed: store unreachable"
    assert machine.is_final


@pytest.mark.parametrize(
    ("event", "facts", "reason"),
    [
        ("input_failed", {"input_drv_path": INPUT}, f"input {INPUT} failed"),
        ("cancel", {}, "cancelled"),
        ("cancel", {"reason": "job 7 cancelled"}, "cancelled: job 7 cancelled"),
        ("fail", {"reason": "store returned garbage"}, "store returned garbage"),
    ],
)
def test_failure_reasons(event: str, facts: dict[str, Any], reason: str) -> None:
    machine = DerivationMachine.from_record(drv_record(D.WAITING))
    machine.send(event, **facts)
    assert machine.model.failure_reason == reason


@pytest.mark.parametrize("state", [D.LOOKUP, D.WAITING, D.BUILD, D.PUSH])
def test_resume_goes_back_to_lookup_with_a_fresh_budget(state: DrvState) -> None:
    machine = DerivationMachine.from_record(
        drv_record(state, attempt=3 if state in (D.BUILD, D.PUSH) else 0)
    )
    entered: list[str] = []

    class Lookups:
        def on_enter_lookup(self) -> None:
            entered.append("lookup")

    machine.add_listener(Lookups())
    machine.resume()
    assert machine.to_record() == DerivationRecord(DRV, D.LOOKUP, 0)
    assert entered == ["lookup"]  # the coordinator re-runs the lookup on entering it


# -- restore -------------------------------------------------------------------------

CONTINUE: dict[DrvState, list[tuple[str, dict[str, Any]]]] = {
    D.EVAL: [
        ("evaluated", {}),
        ("lookup_done", {"outputs_present": False}),
        ("inputs_ready", {"all_inputs_done": True}),
        ("build_finished", {"success": True}),
        ("push_finished", {"success": True}),
    ],
    D.LOOKUP: [("lookup_done", {"outputs_present": True})],
    D.WAITING: [
        ("inputs_ready", {"all_inputs_done": True}),
        ("build_finished", {"success": True}),
        ("push_finished", {"success": True}),
    ],
    D.BUILD: [("build_finished", {"success": True}), ("push_finished", {"success": True})],
    D.PUSH: [("push_finished", {"success": True})],
}


@pytest.mark.parametrize("state", list(DrvState))
def test_restore_from_each_state_and_continue(state: DrvState) -> None:
    saved = json.dumps(DerivationMachine.from_record(drv_record(state)).to_record().as_dict())
    record = DerivationRecord.from_dict(json.loads(saved))
    assert record == drv_record(state)
    entered: list[str] = []

    class Enters:
        def on_enter_state(self, target: Any) -> None:
            entered.append(target.id)

    machine = DerivationMachine.from_record(record, listeners=[Enters()])
    assert machine.state is state
    assert entered == []
    assert machine.is_final == (state in FINAL_DRV_STATES)
    for event, facts in CONTINUE.get(state, []):
        machine.send(event, **facts)
    assert machine.state is (D.DONE if state in DRV_NON_FINAL else state)
    assert entered == [step(e) for e in CONTINUE.get(state, [])]


def step(event: tuple[str, dict[str, Any]]) -> str:
    """The state each happy-path event of CONTINUE enters."""
    name, facts = event
    return {
        "evaluated": "lookup",
        "lookup_done": "done" if facts.get("outputs_present") else "waiting",
        "inputs_ready": "build",
        "build_finished": "push",
        "push_finished": "done",
    }[name]


def test_a_fresh_machine_starts_in_eval() -> None:
    machine = DerivationMachine.new(DRV, max_attempts=4)
    assert machine.to_record() == DerivationRecord(DRV, D.EVAL, 0, 4, None)
    assert machine.model.state is D.EVAL


def test_machines_do_not_share_models() -> None:
    a, b = DerivationMachine.new(DRV), DerivationMachine.new(INPUT)
    a.evaluated()
    assert (a.state, b.state) == (D.LOOKUP, D.EVAL)


# -- facts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "args", "message"),
    [
        ({}, (), "build_finished for /nix/store/0000"),
        ({}, (), "missing the fact success"),
        ({"success": 1}, (), "fact success must be a bool, got 1"),
        ({"success": "yes"}, (), "got 'yes'"),
        ({"success": False, "retryable": None}, (), "fact retryable must be a bool, got None"),
        ({"success": False, "log_tail": b"raw"}, (), "fact log_tail must be a str, got b'raw'"),
        ({"sucess": True}, (), "unknown fact(s) sucess"),
        ({"success": False, "retriable": True}, (), "unknown fact(s) retriable"),
        ({}, (True,), "facts are keyword arguments, got positional (True,)"),
    ],
)
def test_bad_facts_are_refused(kwargs: dict[str, Any], args: tuple[Any, ...], message: str) -> None:
    record = drv_record(D.BUILD)
    machine = DerivationMachine.from_record(record)
    with pytest.raises(InvalidFacts) as info:
        machine.build_finished(*args, **kwargs)
    assert message in str(info.value)
    assert machine.to_record() == record
    machine.build_finished(success=True)  # still usable
    assert machine.state is D.PUSH


def test_an_event_without_facts_refuses_any() -> None:
    machine = DerivationMachine.new(DRV)
    with pytest.raises(InvalidFacts, match=r"unknown fact\(s\) outputs_present .*no facts"):
        machine.evaluated(outputs_present=True)
    assert machine.state is D.EVAL


def test_fail_needs_a_reason() -> None:
    machine = DerivationMachine.new(DRV)
    with pytest.raises(InvalidFacts, match="missing the fact reason"):
        machine.fail()


# -- records -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"drv_path": ""}, "drv_path must be a non-empty string, got ''"),
        ({"state": "build"}, "state must be a DrvState, got 'build'"),
        ({"attempt": -1}, "attempt must be an int >= 0, got -1"),
        ({"attempt": True}, "attempt must be an int >= 0, got True"),
        ({"max_attempts": 0}, "max_attempts must be an int >= 1, got 0"),
        ({"state": D.BUILD, "attempt": 4}, "attempt 4 is above max_attempts 3"),
        ({"state": D.BUILD, "attempt": 0}, "attempt must be at least 1 in build, got 0"),
        ({"state": D.WAITING, "attempt": 1}, "attempt must be 0 in waiting, got 1"),
        ({"state": D.FAILED}, "failure_reason must be a non-empty string in failed, got None"),
        ({"state": D.CANCELLED, "failure_reason": ""}, "non-empty string in cancelled, got ''"),
        ({"state": D.DONE, "failure_reason": "x"}, "failure_reason must be None in done, got 'x'"),
    ],
)
def test_invalid_records_are_refused(fields: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"drv_path": DRV, "state": D.EVAL, **fields}
    with pytest.raises(InvalidRecord) as info:
        DerivationRecord(**args)
    assert message in str(info.value)


def test_a_machine_refuses_an_invalid_model() -> None:
    with pytest.raises(InvalidRecord, match="attempt must be 0 in eval, got 2"):
        DerivationMachine(DerivationModel(DRV, attempt=2))
    with pytest.raises(InvalidRecord, match="max_attempts must be an int >= 1, got 0"):
        DerivationMachine.new(DRV, max_attempts=0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"drv_path": DRV, "state": "eval"}, "keys must be"),
        ({**drv_record(D.EVAL).as_dict(), "extra": 1}, "got ['attempt', 'drv_path', 'extra'"),
        ({**drv_record(D.EVAL).as_dict(), "state": "building"}, "unknown state 'building'"),
        ({**drv_record(D.EVAL).as_dict(), "attempt": "0"}, "attempt must be an int >= 0, got '0'"),
    ],
)
def test_invalid_dicts_are_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRecord) as info:
        DerivationRecord.from_dict(data)
    assert message in str(info.value)


@pytest.mark.parametrize("state", list(DrvState))
def test_dict_round_trip(state: DrvState) -> None:
    record = drv_record(state)
    assert DerivationRecord.from_dict(json.loads(json.dumps(record.as_dict()))) == record
    assert record.is_final == (state in FINAL_DRV_STATES)
