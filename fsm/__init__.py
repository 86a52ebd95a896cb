"""The derivation and job lifecycle state machines (python-statemachine 3.x).

Pure logic: no I/O, no asyncio, nothing imported from our other packages.
The coordinator sends events carrying facts (``lookup_done(outputs_present=
True)``); guards decide the transition; listeners (persistence, metrics, logs,
CI plugins) react through ``on_enter_<state>`` / ``after_<event>`` hooks.
See docs/fsm.md.
"""

from __future__ import annotations

from fsm.base import Fact
from fsm.compiled import CompiledMachine
from fsm.derivation import DerivationMachine, DerivationModel
from fsm.errors import FsmError, InvalidFacts, InvalidRecord, TransitionNotAllowed
from fsm.job import JobMachine, JobModel
from fsm.plugins import FailedDerivation, FailureRecorder
from fsm.records import DEFAULT_MAX_ATTEMPTS, DerivationRecord, JobRecord
from fsm.states import (
    FINAL_DRV_STATES,
    FINAL_JOB_STATES,
    UNSUCCESSFUL_DRV_STATES,
    UNSUCCESSFUL_JOB_STATES,
    DrvState,
    JobState,
)

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "FINAL_DRV_STATES",
    "FINAL_JOB_STATES",
    "UNSUCCESSFUL_DRV_STATES",
    "UNSUCCESSFUL_JOB_STATES",
    "CompiledMachine",
    "DerivationMachine",
    "DerivationModel",
    "DerivationRecord",
    "DrvState",
    "Fact",
    "FailedDerivation",
    "FailureRecorder",
    "FsmError",
    "InvalidFacts",
    "InvalidRecord",
    "JobMachine",
    "JobModel",
    "JobRecord",
    "JobState",
    "TransitionNotAllowed",
]
