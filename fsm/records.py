"""The saved form of the lifecycle machines: frozen records, checked on creation.

A record is everything needed to rebuild a machine in its state
(``DerivationMachine.from_record``, ``JobMachine.from_record``).  Creating one
checks the machine's invariants, so a corrupted journal entry is an
:class:`~fsm.errors.InvalidRecord` naming the field and its value, never a
machine in an impossible state.  ``as_dict`` / ``from_dict`` give the
JSON-ready form the daemon's journal stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fsm.errors import InvalidRecord
from fsm.states import (
    FINAL_DRV_STATES,
    FINAL_JOB_STATES,
    UNSUCCESSFUL_DRV_STATES,
    UNSUCCESSFUL_JOB_STATES,
    DrvState,
    JobState,
)

DEFAULT_MAX_ATTEMPTS = 3
"""Builds a derivation may start (the first one and its retries) unless told otherwise."""

_NEVER_BUILT = frozenset(
    {DrvState.EVAL, DrvState.LOOKUP, DrvState.WAITING, DrvState.DEPENDENCY_FAILED}
)
_BUILT = frozenset({DrvState.BUILD, DrvState.PUSH})


def _check_failure_reason(where: str, state: object, reason: object, unsuccessful: bool) -> None:
    """A failure reason is a non-empty string exactly in the unsuccessful states."""
    if unsuccessful:
        if not isinstance(reason, str) or not reason:
            raise InvalidRecord(
                f"{where}: failure_reason must be a non-empty string in {state}, got {reason!r}"
            )
    elif reason is not None:
        raise InvalidRecord(f"{where}: failure_reason must be None in {state}, got {reason!r}")


@dataclass(frozen=True, slots=True)
class DerivationRecord:
    """A saved derivation machine: everything needed to rebuild it, checked on creation."""

    drv_path: str
    state: DrvState = DrvState.EVAL
    attempt: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    failure_reason: str | None = None

    def __post_init__(self) -> None:
        where = f"derivation record for {self.drv_path!r}"
        if not isinstance(self.drv_path, str) or not self.drv_path:
            raise InvalidRecord(f"drv_path must be a non-empty string, got {self.drv_path!r}")
        if not isinstance(self.state, DrvState):
            raise InvalidRecord(f"{where}: state must be a DrvState, got {self.state!r}")
        for name, value, low in (
            ("attempt", self.attempt, 0),
            ("max_attempts", self.max_attempts, 1),
        ):
            if type(value) is not int or value < low:
                raise InvalidRecord(f"{where}: {name} must be an int >= {low}, got {value!r}")
        if self.attempt > self.max_attempts:
            raise InvalidRecord(
                f"{where}: attempt {self.attempt} is above max_attempts {self.max_attempts}"
            )
        if self.state in _NEVER_BUILT and self.attempt != 0:
            raise InvalidRecord(f"{where}: attempt must be 0 in {self.state}, got {self.attempt}")
        if self.state in _BUILT and self.attempt == 0:
            raise InvalidRecord(f"{where}: attempt must be at least 1 in {self.state}, got 0")
        _check_failure_reason(
            where, self.state, self.failure_reason, self.state in UNSUCCESSFUL_DRV_STATES
        )

    @property
    def is_final(self) -> bool:
        """Whether no event leaves this record's state."""
        return self.state in FINAL_DRV_STATES

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready form (``state`` as its string value)."""
        return {
            "drv_path": self.drv_path,
            "state": self.state.value,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "failure_reason": self.failure_reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DerivationRecord:
        """Inverse of :meth:`as_dict`; rejects missing, unknown and ill-typed keys."""
        expected = {"drv_path", "state", "attempt", "max_attempts", "failure_reason"}
        if set(data) != expected:
            raise InvalidRecord(
                f"derivation record keys must be {sorted(expected)}, got {sorted(data)}"
            )
        try:
            state = DrvState(data["state"])
        except ValueError:
            raise InvalidRecord(
                f"derivation record for {data['drv_path']!r}: unknown state {data['state']!r}"
            ) from None
        return cls(
            drv_path=data["drv_path"],
            state=state,
            attempt=data["attempt"],
            max_attempts=data["max_attempts"],
            failure_reason=data["failure_reason"],
        )


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A saved job machine, checked on creation."""

    job_id: str
    state: JobState = JobState.QUEUED
    failure_reason: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.job_id, str) or not self.job_id:
            raise InvalidRecord(f"job_id must be a non-empty string, got {self.job_id!r}")
        where = f"job record for {self.job_id!r}"
        if not isinstance(self.state, JobState):
            raise InvalidRecord(f"{where}: state must be a JobState, got {self.state!r}")
        _check_failure_reason(
            where, self.state, self.failure_reason, self.state in UNSUCCESSFUL_JOB_STATES
        )

    @property
    def is_final(self) -> bool:
        """Whether no event leaves this record's state."""
        return self.state in FINAL_JOB_STATES

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready form (``state`` as its string value)."""
        return {
            "job_id": self.job_id,
            "state": self.state.value,
            "failure_reason": self.failure_reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobRecord:
        """Inverse of :meth:`as_dict`; rejects missing, unknown and ill-typed keys."""
        expected = {"job_id", "state", "failure_reason"}
        if set(data) != expected:
            raise InvalidRecord(f"job record keys must be {sorted(expected)}, got {sorted(data)}")
        try:
            state = JobState(data["state"])
        except ValueError:
            raise InvalidRecord(
                f"job record for {data['job_id']!r}: unknown state {data['state']!r}"
            ) from None
        return cls(job_id=data["job_id"], state=state, failure_reason=data["failure_reason"])
