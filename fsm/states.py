"""The state names of the two lifecycle machines, as string enums.

The values are the machines' state ids (``DrvState.BUILD == "build"``), the
names the daemon, the journal and the wire enum ``DerivationState`` use.  A
machine stores these members on its model, so ``model.state`` is always a
``DrvState`` / ``JobState`` (or ``None`` before a fresh machine activates).
"""

from __future__ import annotations

from enum import StrEnum


class DrvState(StrEnum):
    """Where one derivation is: eval -> lookup -> (done | waiting -> build -> push -> done)."""

    EVAL = "eval"
    LOOKUP = "lookup"
    WAITING = "waiting"
    BUILD = "build"
    PUSH = "push"
    DONE = "done"
    FAILED = "failed"
    DEPENDENCY_FAILED = "dependency_failed"
    CANCELLED = "cancelled"


class JobState(StrEnum):
    """Where one job (a user request) is: queued -> evaluating -> realising -> an outcome."""

    QUEUED = "queued"
    EVALUATING = "evaluating"
    REALISING = "realising"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_DRV_STATES: frozenset[DrvState] = frozenset(
    {DrvState.DONE, DrvState.FAILED, DrvState.DEPENDENCY_FAILED, DrvState.CANCELLED}
)
"""Derivation states no event leaves."""

UNSUCCESSFUL_DRV_STATES: frozenset[DrvState] = FINAL_DRV_STATES - {DrvState.DONE}
"""Final derivation states that carry a ``failure_reason``."""

FINAL_JOB_STATES: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
)
"""Job states no event leaves."""

UNSUCCESSFUL_JOB_STATES: frozenset[JobState] = FINAL_JOB_STATES - {JobState.SUCCEEDED}
"""Final job states that carry a ``failure_reason``."""
