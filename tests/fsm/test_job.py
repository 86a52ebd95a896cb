"""The job machine against the reference table: allowed, forbidden, finals, restore, records."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fsm import (
    FINAL_JOB_STATES,
    InvalidFacts,
    InvalidRecord,
    JobMachine,
    JobModel,
    JobRecord,
    JobState,
    TransitionNotAllowed,
)
from tests.fsm.reference import (
    JOB_ALLOWED,
    JOB_EVENTS,
    JOB_FINAL,
    VALID_FACTS,
    J,
    job_record,
    job_step,
)


def test_the_declared_events_and_states_are_the_reference_ones() -> None:
    assert [str(e) for e in JobMachine.new("j").events] == list(JOB_EVENTS)
    assert list(JobMachine.event_facts) == list(JOB_EVENTS)
    assert [s.value for s in JobMachine.states] == list(JobState)
    assert {s.value for s in JobMachine.final_states} == FINAL_JOB_STATES == set(JOB_FINAL)


def test_the_table_lists_every_declared_transition() -> None:
    declared = {
        (t.source.value, str(event), t.target.value)
        for state in JobMachine.states
        for t in state.transitions
        if t.target is not None
        for event in t.events
    }
    assert declared == {(s, e, t) for s, e, _, t in JOB_ALLOWED}


@pytest.mark.parametrize(
    "row", JOB_ALLOWED, ids=lambda r: f"{r[0]}-{r[1]}({','.join(map(str, r[2].values()))})"
)
def test_allowed_transition(row: tuple[JobState, str, dict[str, Any], JobState]) -> None:
    source, event, facts, target = row
    machine = JobMachine.from_record(job_record(source))
    machine.send(event, **facts)
    expected = job_step(job_record(source), event, facts)
    assert expected is not None
    assert machine.state is target is expected.state
    assert (machine.model.failure_reason is None) == (expected.failure_reason is None)


FORBIDDEN = [
    (state, event)
    for state in JobState
    for event in JOB_EVENTS
    if not any(s == state and e == event for s, e, _, _ in JOB_ALLOWED)
]


@pytest.mark.parametrize(("state", "event"), FORBIDDEN, ids=str)
def test_forbidden_transition_raises_and_changes_nothing(state: JobState, event: str) -> None:
    facts = {"success": True} if event == "evaluated" else VALID_FACTS[event]
    machine = JobMachine.from_record(job_record(state))
    with pytest.raises(TransitionNotAllowed):
        machine.send(event, **facts)
    assert machine.to_record() == job_record(state)


@pytest.mark.parametrize("state", JOB_FINAL)
def test_final_states_are_final(state: JobState) -> None:
    machine = JobMachine.from_record(job_record(state))
    assert machine.is_final
    for event in [*JOB_EVENTS, "restart"]:
        with pytest.raises(TransitionNotAllowed):
            machine.send(event)
    assert machine.to_record() == job_record(state)


def test_an_evaluation_error_is_kept_on_the_model() -> None:
    machine = JobMachine.new("job-1")
    machine.start()
    machine.evaluated(success=False, error="undefined variable 'foo' at default.nix:3:5")
    assert machine.to_record() == JobRecord(
        "job-1",
        J.FAILED,
        "evaluation failed: undefined variable 'foo' at default.nix:3:5",
    )


@pytest.mark.parametrize(
    ("event", "facts", "reason"),
    [
        ("finished", {"all_ok": False}, "some derivations did not build"),
        ("finished", {"all_ok": False, "reason": "2 derivations failed"}, "2 derivations failed"),
        ("cancel", {"reason": "by user"}, "cancelled: by user"),
        ("fail", {"reason": "store gone"}, "store gone"),
    ],
)
def test_failure_reasons(event: str, facts: dict[str, Any], reason: str) -> None:
    machine = JobMachine.from_record(job_record(J.REALISING))
    machine.send(event, **facts)
    assert machine.model.failure_reason == reason


def test_the_happy_path() -> None:
    entered: list[str] = []

    class Enters:
        def on_enter_state(self, target: Any) -> None:
            entered.append(target.id)

    machine = JobMachine.new("job-1", listeners=[Enters()])
    machine.start()
    machine.evaluated(success=True)
    machine.finished(all_ok=True)
    assert entered == ["queued", "evaluating", "realising", "succeeded"]
    assert machine.to_record() == JobRecord("job-1", J.SUCCEEDED)


@pytest.mark.parametrize("state", list(JobState))
def test_restore_from_each_state(state: JobState) -> None:
    record = JobRecord.from_dict(json.loads(json.dumps(job_record(state).as_dict())))
    machine = JobMachine.from_record(record)
    assert machine.state is state
    assert machine.is_final == record.is_final == (state in FINAL_JOB_STATES)
    paths: dict[JobState, list[tuple[str, dict[str, Any]]]] = {
        J.QUEUED: [("start", {}), ("evaluated", {"success": True}), ("finished", {"all_ok": True})],
        J.EVALUATING: [("evaluated", {"success": True}), ("finished", {"all_ok": True})],
        J.REALISING: [("finished", {"all_ok": True})],
    }
    path = paths.get(state, [])
    for event, facts in path:
        machine.send(event, **facts)
    assert machine.state is (J.SUCCEEDED if path else state)


def test_bad_facts() -> None:
    machine = JobMachine.from_record(job_record(J.EVALUATING))
    with pytest.raises(InvalidFacts, match="evaluated for job job-1: missing the fact success"):
        machine.evaluated(error="x")
    with pytest.raises(InvalidFacts, match="fact error must be a str, got 3"):
        machine.evaluated(success=False, error=3)
    assert machine.state is J.EVALUATING


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"job_id": ""}, "job_id must be a non-empty string, got ''"),
        ({"state": "queued"}, "state must be a JobState, got 'queued'"),
        ({"state": J.FAILED}, "failure_reason must be a non-empty string in failed, got None"),
        ({"failure_reason": "x"}, "failure_reason must be None in queued, got 'x'"),
    ],
)
def test_invalid_records_are_refused(fields: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"job_id": "job-1", **fields}
    with pytest.raises(InvalidRecord) as info:
        JobRecord(**args)
    assert message in str(info.value)


def test_invalid_dicts_and_models_are_refused() -> None:
    with pytest.raises(InvalidRecord, match="unknown state 'running'"):
        JobRecord.from_dict({"job_id": "j", "state": "running", "failure_reason": None})
    with pytest.raises(InvalidRecord, match="keys must be"):
        JobRecord.from_dict({"job_id": "j"})
    with pytest.raises(InvalidRecord, match="failure_reason must be None in queued"):
        JobMachine(JobModel("j", failure_reason="stale"))
