"""An independent specification of both machines, for the tests to check them against.

Written from the issue text and docs/fsm.md, not from fsm/: transition tables
(``(source, event, facts) -> target``), a record for each state to start from,
and ``step`` functions computing the record an event should produce (``None``
when the event is forbidden).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fsm import DerivationRecord, DrvState, JobRecord, JobState

D = DrvState
J = JobState
DRV = "/nix/store/00000000000000000000000000000000-x.drv"
INPUT = "/nix/store/11111111111111111111111111111111-dep.drv"

DRV_NON_FINAL = (D.EVAL, D.LOOKUP, D.WAITING, D.BUILD, D.PUSH)
DRV_FINAL = (D.DONE, D.FAILED, D.DEPENDENCY_FAILED, D.CANCELLED)
DRV_EVENTS = (
    "evaluated",
    "lookup_done",
    "inputs_ready",
    "input_failed",
    "build_finished",
    "push_finished",
    "resume",
    "cancel",
    "fail",
)
JOB_NON_FINAL = (J.QUEUED, J.EVALUATING, J.REALISING)
JOB_FINAL = (J.SUCCEEDED, J.FAILED, J.CANCELLED)
JOB_EVENTS = ("start", "evaluated", "finished", "cancel", "fail")

Row = tuple[Any, str, dict[str, Any], Any]

DRV_ALLOWED: list[Row] = [
    (D.EVAL, "evaluated", {}, D.LOOKUP),
    (D.LOOKUP, "lookup_done", {"outputs_present": True}, D.DONE),
    (D.LOOKUP, "lookup_done", {"outputs_present": False}, D.WAITING),
    (D.LOOKUP, "resume", {}, D.LOOKUP),
    (D.WAITING, "inputs_ready", {"all_inputs_done": True}, D.BUILD),
    (D.WAITING, "inputs_ready", {"all_inputs_done": False}, D.WAITING),
    (D.WAITING, "input_failed", {"input_drv_path": INPUT}, D.DEPENDENCY_FAILED),
    (D.WAITING, "resume", {}, D.LOOKUP),
    (D.BUILD, "build_finished", {"success": True}, D.PUSH),
    (D.BUILD, "build_finished", {"success": False, "retryable": True}, D.BUILD),
    (D.BUILD, "build_finished", {"success": False}, D.FAILED),
    (D.BUILD, "build_finished", {"success": False, "retryable": False}, D.FAILED),
    (D.BUILD, "resume", {}, D.LOOKUP),
    (D.PUSH, "push_finished", {"success": True}, D.DONE),
    (D.PUSH, "push_finished", {"success": False}, D.FAILED),
    (D.PUSH, "resume", {}, D.LOOKUP),
    *[(s, "cancel", {}, D.CANCELLED) for s in DRV_NON_FINAL],
    *[(s, "fail", {"reason": "internal error"}, D.FAILED) for s in DRV_NON_FINAL],
]

JOB_ALLOWED: list[Row] = [
    (J.QUEUED, "start", {}, J.EVALUATING),
    (J.EVALUATING, "evaluated", {"success": True}, J.REALISING),
    (J.EVALUATING, "evaluated", {"success": False, "error": "syntax error"}, J.FAILED),
    (J.REALISING, "finished", {"all_ok": True}, J.SUCCEEDED),
    (J.REALISING, "finished", {"all_ok": False}, J.FAILED),
    *[(s, "cancel", {}, J.CANCELLED) for s in JOB_NON_FINAL],
    *[(s, "fail", {"reason": "internal error"}, J.FAILED) for s in JOB_NON_FINAL],
]

VALID_FACTS: dict[str, dict[str, Any]] = {
    "evaluated": {},
    "lookup_done": {"outputs_present": True},
    "inputs_ready": {"all_inputs_done": True},
    "input_failed": {"input_drv_path": INPUT},
    "build_finished": {"success": True},
    "push_finished": {"success": True},
    "resume": {},
    "cancel": {},
    "fail": {"reason": "internal error"},
    "start": {},
    "finished": {"all_ok": True},
}
"""Facts every event accepts (for job ``evaluated`` too), used to send forbidden events."""


def drv_record(
    state: DrvState, *, attempt: int | None = None, max_attempts: int = 3
) -> DerivationRecord:
    """A valid record in ``state``: attempt 1 where a build was started, a reason where due."""
    if attempt is None:
        attempt = 1 if state in (D.BUILD, D.PUSH, D.DONE, D.FAILED) else 0
    reason = {
        D.FAILED: "build failed",
        D.DEPENDENCY_FAILED: "input failed",
        D.CANCELLED: "cancelled",
    }
    return DerivationRecord(DRV, state, attempt, max_attempts, reason.get(state))


def job_record(state: JobState) -> JobRecord:
    reason = {J.FAILED: "evaluation failed", J.CANCELLED: "cancelled"}
    return JobRecord("job-1", state, reason.get(state))


def drv_step(r: DerivationRecord, event: str, facts: dict[str, Any]) -> DerivationRecord | None:
    """The record ``event`` should lead to from ``r``, or None when it is forbidden."""
    s = r.state
    if s in DRV_FINAL:
        return None
    if event == "cancel":
        return replace(r, state=D.CANCELLED, failure_reason="cancelled")
    if event == "fail":
        return replace(r, state=D.FAILED, failure_reason=facts["reason"] or "failed")
    if event == "resume" and s in (D.LOOKUP, D.WAITING, D.BUILD, D.PUSH):
        return replace(r, state=D.LOOKUP, attempt=0)
    if (s, event) == (D.EVAL, "evaluated"):
        return replace(r, state=D.LOOKUP)
    if (s, event) == (D.LOOKUP, "lookup_done"):
        return replace(r, state=D.DONE if facts["outputs_present"] else D.WAITING)
    if (s, event) == (D.WAITING, "inputs_ready"):
        return replace(r, state=D.BUILD, attempt=1) if facts["all_inputs_done"] else r
    if (s, event) == (D.WAITING, "input_failed"):
        return replace(r, state=D.DEPENDENCY_FAILED, failure_reason="input failed")
    if (s, event) == (D.BUILD, "build_finished"):
        if facts["success"]:
            return replace(r, state=D.PUSH)
        if facts.get("retryable", False) and r.attempt < r.max_attempts:
            return replace(r, attempt=r.attempt + 1)
        return replace(r, state=D.FAILED, failure_reason="build failed")
    if (s, event) == (D.PUSH, "push_finished"):
        if facts["success"]:
            return replace(r, state=D.DONE)
        return replace(r, state=D.FAILED, failure_reason="push failed")
    return None


def job_step(r: JobRecord, event: str, facts: dict[str, Any]) -> JobRecord | None:
    """The record ``event`` should lead to from ``r``, or None when it is forbidden."""
    s = r.state
    if s in JOB_FINAL:
        return None
    if event == "cancel":
        return replace(r, state=J.CANCELLED, failure_reason="cancelled")
    if event == "fail":
        return replace(r, state=J.FAILED, failure_reason=facts["reason"] or "failed")
    if (s, event) == (J.QUEUED, "start"):
        return replace(r, state=J.EVALUATING)
    if (s, event) == (J.EVALUATING, "evaluated"):
        if facts["success"]:
            return replace(r, state=J.REALISING)
        return replace(r, state=J.FAILED, failure_reason="evaluation failed")
    if (s, event) == (J.REALISING, "finished"):
        if facts["all_ok"]:
            return replace(r, state=J.SUCCEEDED)
        return replace(r, state=J.FAILED, failure_reason="derivations failed")
    return None
