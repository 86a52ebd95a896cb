"""``CompiledMachine`` against the library machine: same records, same errors, same hooks.

Every event of a random sequence (random, sometimes wrong, facts; listeners
that sometimes raise in a random hook) is sent both to a library machine
restored from a record and to a ``CompiledMachine`` driving a separate model
from the same record.  After each event the two models must be equal, the
two errors equal (type and message), and the two recording listeners must
have seen the same hooks in the same order with the same arguments.
"""

from __future__ import annotations

import inspect
from dataclasses import astuple
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm import (
    CompiledMachine,
    DerivationMachine,
    DerivationModel,
    DerivationRecord,
    DrvState,
    FailureRecorder,
    InvalidFacts,
    JobMachine,
    JobModel,
    JobRecord,
    JobState,
    TransitionNotAllowed,
)
from fsm.base import LifecycleMachine
from tests.fsm.test_properties import DRV_FACTS, JOB_FACTS, Step, drv_records, steps

CONTEXT = ("event", "source", "target", "state", "model", "transition")


class Boom(Exception):
    """What a listener raises when told to."""


def hook_names(machine: type[LifecycleMachine[Any]]) -> list[str]:
    """Every listener hook name the machine's declaration knows (minus the unsupported ones)."""
    names = set(machine._specs.conventional_specs)
    for state in machine.states:
        names |= state._specs.conventional_specs
        for transition in state.transitions:
            names |= transition._specs.conventional_specs
    return sorted(n for n in names if n != "prepare_event" and not n.startswith("on_invoke_"))


def fact_names(machine: type[LifecycleMachine[Any]]) -> list[str]:
    return sorted({f.name for facts in machine.event_facts.values() for f in facts})


class Recorder:
    """A listener with every hook, each taking every argument; ``raise_in`` makes one raise."""

    def __init__(self, machine: type[LifecycleMachine[Any]], raise_in: str | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.raise_in = raise_in
        params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in CONTEXT] + [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default="<absent>")
            for name in fact_names(machine)
        ]
        signature = inspect.Signature(params)
        for name in hook_names(machine):
            setattr(self, name, self._hook(name, signature, f"Recorder.{machine.__name__}.{name}"))

    def _hook(self, name: str, signature: inspect.Signature, qualname: str) -> Any:
        def hook(**kwargs: Any) -> None:
            self.calls.append(
                (
                    name,
                    str(kwargs["event"]),
                    kwargs["source"].id,
                    kwargs["target"].id,
                    kwargs["state"].id,
                    str(kwargs["transition"]),
                    astuple(kwargs["model"]),
                    tuple(sorted((k, v) for k, v in kwargs.items() if k not in CONTEXT)),
                )
            )
            if name == self.raise_in:
                raise Boom(name)

        hook.__signature__ = signature  # type: ignore[attr-defined]
        hook.__qualname__ = qualname  # the library caches signatures by qualified name
        return hook


def outcome(send: Any) -> tuple[type[BaseException], str] | None:
    try:
        send()
    except (TransitionNotAllowed, InvalidFacts, Boom) as exc:
        return type(exc), str(exc)
    return None


def compare(
    machine: LifecycleMachine[Any],
    compiled: CompiledMachine[Any],
    model: Any,
    sequence: list[Step],
    recorders: tuple[Recorder, Recorder],
) -> None:
    for step in sequence:
        if step.corruption == "positional":
            continue  # CompiledMachine.send has no positional facts to refuse
        _, kwargs = step.call_args()
        theirs = outcome(lambda: machine.send(step.event, **kwargs))  # noqa: B023
        ours = outcome(lambda: compiled.send(model, step.event, **kwargs))  # noqa: B023
        assert ours == theirs, step
        assert astuple(model) == astuple(machine.model), step
        assert recorders[1].calls == recorders[0].calls, step


@settings(max_examples=300, deadline=None)
@given(
    start=drv_records(),
    sequence=st.lists(steps(DRV_FACTS), max_size=25),
    raise_in=st.one_of(st.none(), st.sampled_from(hook_names(DerivationMachine))),
)
def test_derivations_like_the_library(
    start: DerivationRecord, sequence: list[Step], raise_in: str | None
) -> None:
    theirs = Recorder(DerivationMachine, raise_in)
    ours = Recorder(DerivationMachine, raise_in)
    machine = DerivationMachine.from_record(start, listeners=[theirs])
    compiled = CompiledMachine(DerivationMachine, listeners=[ours])
    model = DerivationModel(
        start.drv_path, start.max_attempts, start.attempt, start.failure_reason, start.state
    )
    compare(machine, compiled, model, sequence, (theirs, ours))


@settings(max_examples=150, deadline=None)
@given(
    start=st.sampled_from(list(JobState)),
    sequence=st.lists(steps(JOB_FACTS), max_size=12),
    raise_in=st.one_of(st.none(), st.sampled_from(hook_names(JobMachine))),
)
def test_jobs_like_the_library(start: JobState, sequence: list[Step], raise_in: str | None) -> None:
    reason = "r" if start in (JobState.FAILED, JobState.CANCELLED) else None
    theirs = Recorder(JobMachine, raise_in)
    ours = Recorder(JobMachine, raise_in)
    machine = JobMachine.from_record(JobRecord("job", start, reason), listeners=[theirs])
    compiled = CompiledMachine(JobMachine, listeners=[ours])
    model = JobModel("job", reason, start)
    compare(machine, compiled, model, sequence, (theirs, ours))


def test_a_built_derivation_and_the_ready_made_plugin() -> None:
    recorder = FailureRecorder()
    compiled = CompiledMachine(DerivationMachine, listeners=[recorder])
    model = DerivationModel(
        "/nix/store/00000000000000000000000000000000-x.drv", state=DrvState.EVAL
    )
    compiled.send(model, "evaluated")
    compiled.send(model, "lookup_done", outputs_present=False)
    compiled.send(model, "inputs_ready", all_inputs_done=True)
    compiled.send(model, "build_finished", success=False, retryable=True)
    assert (model.state, model.attempt) == (DrvState.BUILD, 2)
    compiled.send(model, "build_finished", success=False, reason="exit 1", log_tail="a\nb")
    assert model.state is DrvState.FAILED
    assert model.failure_reason == "build failed (attempt 2): exit 1"
    assert [(f.state, f.attempt, f.log_tail) for f in recorder.failures] == [
        (DrvState.FAILED, 2, "a\nb")
    ]
    with pytest.raises(TransitionNotAllowed, match="Can't Resume when in Failed"):
        compiled.send(model, "resume")


class _AsksForMachine:
    def after_transition(self, machine: object) -> None:
        pass


class _TakesKwargs:
    def on_enter_build(self, **kwargs: object) -> None:
        pass


class _AsksForUnknown:
    def after_transition(self, colour: str) -> None:
        pass


class _Invokes:
    def on_invoke_build(self) -> None:
        pass


@pytest.mark.parametrize(
    ("listener", "message"),
    [
        (_AsksForMachine(), "asks for 'machine'"),
        (_TakesKwargs(), r"takes \*args or \*\*kwargs"),
        (_AsksForUnknown(), "asks for 'colour'"),
        (_Invokes(), "on_invoke_build is not supported"),
    ],
)
def test_listeners_it_cannot_serve_are_refused(listener: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        CompiledMachine(DerivationMachine, listeners=[listener])


def test_a_model_defining_hooks_is_refused() -> None:
    class Model(JobModel):
        def on_enter_failed(self) -> None:
            pass

    compiled = CompiledMachine(JobMachine)
    with pytest.raises(TypeError, match="on_enter_failed"):
        compiled.send(Model("job", None, JobState.QUEUED), "start")


def test_a_model_that_is_not_a_dataclass_is_refused() -> None:
    """Atomic events put every field back: only a dataclass says what its fields are."""

    class Plain:
        def __init__(self) -> None:
            self.state = JobState.QUEUED

    compiled = CompiledMachine(JobMachine)
    with pytest.raises(TypeError, match="must be a dataclass instance, got Plain"):
        compiled.send(Plain(), "start")  # type: ignore[arg-type]
