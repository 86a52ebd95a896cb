"""Listener hooks: order, injected arguments, attachment, atomicity when one raises; FailureRecorder."""

from __future__ import annotations

from typing import Any

import pytest

from fsm import (
    DerivationMachine,
    DerivationModel,
    DrvState,
    FailedDerivation,
    FailureRecorder,
    JobMachine,
    TransitionNotAllowed,
)
from tests.fsm.reference import DRV, INPUT, D, drv_record

HOOKS = [
    "before_transition",
    "before_build_finished",
    "on_exit_state",
    "on_exit_build",
    "on_transition",
    "on_build_finished",
    "on_enter_state",
    "on_enter_push",
    "on_enter_build",
    "on_enter_failed",
    "after_build_finished",
    "after_transition",
]


class Spy:
    """Records, for each conventional hook, what it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []


def _hook(name: str) -> Any:
    def hook(
        self: Spy,
        event: str,
        source: Any,
        target: Any,
        model: DerivationModel,
        machine: DerivationMachine,
        success: bool,
        log_tail: str = "(absent)",
    ) -> None:
        assert machine.model is model
        self.calls.append(
            (name, str(event), source.id, target.id, model.state, model.attempt, success, log_tail)
        )

    return hook


for _name in HOOKS:
    setattr(Spy, _name, _hook(_name))


def test_hooks_run_in_order_with_the_right_arguments() -> None:
    spy = Spy()
    machine = DerivationMachine.from_record(drv_record(D.BUILD), listeners=[spy])
    machine.build_finished(success=True, log_tail="ok")
    common = ("build_finished", "build", "push")
    assert spy.calls == [
        ("before_transition", *common, D.BUILD, 1, True, "ok"),
        ("before_build_finished", *common, D.BUILD, 1, True, "ok"),
        ("on_exit_state", *common, D.BUILD, 1, True, "ok"),
        ("on_exit_build", *common, D.BUILD, 1, True, "ok"),
        ("on_transition", *common, D.BUILD, 1, True, "ok"),
        ("on_build_finished", *common, D.BUILD, 1, True, "ok"),
        ("on_enter_state", *common, D.PUSH, 1, True, "ok"),
        ("on_enter_push", *common, D.PUSH, 1, True, "ok"),
        ("after_build_finished", *common, D.PUSH, 1, True, "ok"),
        ("after_transition", *common, D.PUSH, 1, True, "ok"),
    ]


def test_the_retry_reenters_build_and_hooks_see_the_new_attempt() -> None:
    spy = Spy()
    machine = DerivationMachine.from_record(drv_record(D.BUILD), listeners=[spy])
    machine.build_finished(success=False, retryable=True)
    assert [(c[0], c[5]) for c in spy.calls] == [
        ("before_transition", 1),
        ("before_build_finished", 1),
        ("on_exit_state", 1),
        ("on_exit_build", 1),
        ("on_transition", 1),
        ("on_build_finished", 2),  # the machine's own bookkeeping ran in between
        ("on_enter_state", 2),
        ("on_enter_build", 2),
        ("after_build_finished", 2),
        ("after_transition", 2),
    ]
    assert spy.calls[-1][7] == "(absent)"  # an optional fact not sent is not passed


def test_failed_hooks_see_the_failure_reason() -> None:
    seen: list[tuple[str | None, str]] = []

    class OnFailed:
        def on_enter_failed(self, model: DerivationModel, log_tail: str = "") -> None:
            seen.append((model.failure_reason, log_tail))

    machine = DerivationMachine.from_record(drv_record(D.BUILD), listeners=[OnFailed()])
    machine.build_finished(success=False, reason="exit 1", log_tail="error: boom")
    assert seen == [("build failed: exit 1", "error: boom")]


def test_an_internal_self_transition_enters_nothing() -> None:
    calls: list[str] = []

    class Hooks:
        def on_enter_state(self) -> None:
            calls.append("enter")

        def on_exit_state(self) -> None:
            calls.append("exit")

        def after_inputs_ready(self, all_inputs_done: bool) -> None:
            calls.append(f"after all_inputs_done={all_inputs_done}")

    machine = DerivationMachine.from_record(drv_record(D.WAITING), listeners=[Hooks()])
    machine.inputs_ready(all_inputs_done=False)
    assert calls == ["after all_inputs_done=False"]
    machine.inputs_ready(all_inputs_done=True)
    assert calls[1:] == ["exit", "enter", "after all_inputs_done=True"]


def test_listeners_run_in_attachment_order_and_add_listener_works_later() -> None:
    order: list[str] = []

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

        def on_enter_lookup(self) -> None:
            order.append(self.name)

    machine = DerivationMachine.new(DRV, listeners=[Named("a"), Named("b")])
    assert machine.add_listener(Named("c")) is machine
    machine.evaluated()
    assert order == ["a", "b", "c"]


def test_a_fresh_machine_enters_its_initial_state_for_constructor_listeners() -> None:
    entered: list[tuple[str, str]] = []

    class Initial:
        def on_enter_eval(self, model: DerivationModel) -> None:
            entered.append(("drv", model.drv_path))

        def on_enter_queued(self) -> None:
            entered.append(("job", ""))

    DerivationMachine.new(DRV, listeners=[Initial()])
    JobMachine.new("j", listeners=[Initial()])
    DerivationMachine.from_record(drv_record(D.EVAL), listeners=[Initial()])  # restored: no hook
    assert entered == [("drv", DRV), ("job", "")]


# -- a raising listener aborts the event, atomically ---------------------------------


@pytest.mark.parametrize(
    "hook",
    [
        "before_transition",
        "on_exit_waiting",
        "on_transition",
        "on_enter_build",
        "after_inputs_ready",
        "after_transition",
    ],
)
def test_a_raising_listener_leaves_the_model_as_it_was(hook: str) -> None:
    class Boom:
        armed = True

    def explode(self: Boom) -> None:
        if self.armed:
            raise OSError("journal disk full")

    setattr(Boom, hook, explode)
    boom = Boom()
    record = drv_record(D.WAITING)
    machine = DerivationMachine.from_record(record, listeners=[boom])
    with pytest.raises(OSError, match="journal disk full"):
        machine.inputs_ready(all_inputs_done=True)
    assert machine.to_record() == record
    assert machine.model.state is D.WAITING
    boom.armed = False
    machine.inputs_ready(all_inputs_done=True)  # delivered again, now it goes through
    assert machine.to_record() == drv_record(D.BUILD)


def test_a_rolled_back_final_transition_leaves_a_working_machine() -> None:
    class Boom:
        armed = True

        def after_transition(self) -> None:
            if self.armed:
                raise OSError("journal disk full")

    boom = Boom()
    machine = DerivationMachine.from_record(drv_record(D.PUSH), listeners=[boom])
    with pytest.raises(OSError, match="journal disk full"):
        machine.push_finished(success=True)
    assert (machine.state, machine.is_final) == (D.PUSH, False)
    boom.armed = False
    machine.push_finished(success=True)
    assert machine.state is D.DONE
    with pytest.raises(TransitionNotAllowed):
        machine.resume()


# -- the CI plugin -------------------------------------------------------------------


def test_failure_recorder() -> None:
    recorder = FailureRecorder(tail_lines=2)
    built = DerivationMachine.from_record(drv_record(D.BUILD), listeners=[recorder])
    dependent = DerivationMachine.from_record(drv_record(D.WAITING), listeners=[recorder])
    internal = DerivationMachine.from_record(drv_record(D.LOOKUP))
    internal.add_listener(recorder)
    cancelled = DerivationMachine.from_record(drv_record(D.BUILD), listeners=[recorder])
    fine = DerivationMachine.from_record(drv_record(D.PUSH), listeners=[recorder])
    job = JobMachine.new("j", listeners=[recorder])

    built.build_finished(success=False, retryable=True, log_tail="lost")
    built.build_finished(success=False, reason="exit 2", log_tail="a\nb\nc\nd\n")
    dependent.input_failed(input_drv_path=INPUT)
    internal.fail(reason="store answered garbage", log_tail="x")
    cancelled.cancel()
    fine.push_finished(success=True)
    job.fail(reason="not a derivation machine")

    assert recorder.failures == (
        FailedDerivation(DRV, DrvState.FAILED, "build failed (attempt 2): exit 2", 2, "c\nd"),
        FailedDerivation(DRV, DrvState.DEPENDENCY_FAILED, f"input {INPUT} failed", 0, ""),
        FailedDerivation(DRV, DrvState.FAILED, "store answered garbage", 0, "x"),
    )
    assert recorder.report() == (
        f"failed: {DRV} (attempt 2): build failed (attempt 2): exit 2\n"
        "    | c\n    | d\n"
        f"dependency_failed: {DRV} (attempt 0): input {INPUT} failed\n"
        f"failed: {DRV} (attempt 0): store answered garbage\n"
        "    | x\n"
    )


def test_failure_recorder_tail_lines() -> None:
    recorder = FailureRecorder(tail_lines=0)
    machine = DerivationMachine.from_record(drv_record(D.BUILD), listeners=[recorder])
    machine.build_finished(success=False, log_tail="a\nb")
    assert recorder.failures[0].log_tail == ""
    with pytest.raises(ValueError, match="tail_lines must be >= 0, got -1"):
        FailureRecorder(tail_lines=-1)
