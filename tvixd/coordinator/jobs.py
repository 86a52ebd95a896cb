"""A running job: its machine, the derivations it needs, and how far it got.

A :class:`JobRun` exists from ``Submit`` (or a restart) until its job reaches
a final state; after that the journal alone answers for it.  ``pending``
counts the nodes in ``nodes`` that are not final; the driver keeps it up to
date and finishes the job once evaluation is over and ``pending`` is 0 (or at
the first failure, without ``keep_going``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType

import anyio

from fsm import DrvState, JobMachine, JobState
from tvixd.coordinator.graph import Node
from tvixd.journal.model import JobInfo, JobOutput, JobSpec, in_request_order

__all__ = ["JobRun"]


@dataclass(eq=False, repr=False)
class JobRun:
    """The live part of a job (see the module docstring)."""

    id: str
    spec: JobSpec
    created_ms: int
    machine: JobMachine | None = None
    nodes: set[Node] = field(default_factory=set)
    pending: int = 0
    outputs: dict[JobOutput, None] = field(default_factory=dict)
    root_keys: set[tuple[str, str]] = field(default_factory=set)
    """(attr path, drv path) of every root recorded, so a re-evaluation records each once."""
    eval_done: bool = False
    closing: bool = False
    scope: anyio.CancelScope | None = None
    """The cancel scope of the job's evaluation task."""

    @property
    def state(self) -> JobState:
        assert self.machine is not None
        return self.machine.state

    def counts(self) -> dict[str, int]:
        """Derivations of this job per state (``DrvState`` values)."""
        return dict(Counter(node.state.value for node in self.nodes))

    def info(
        self, *, state: JobState, error: str | None, updated_ms: int, last_seq: int
    ) -> JobInfo:
        """The job as the API shows it, in ``state`` (once failed or cancelled, with only the
        outputs it built)."""
        outputs: list[JobOutput] | dict[JobOutput, None] = self.outputs
        if state in (JobState.FAILED, JobState.CANCELLED):
            done = {node.key for node in self.nodes if node.state is DrvState.DONE}
            outputs = [output for output in self.outputs if output.drv_path in done]
        return JobInfo(
            id=self.id,
            state=state,
            spec=self.spec,
            created_ms=self.created_ms,
            updated_ms=updated_ms,
            last_seq=last_seq,
            counts=MappingProxyType(self.counts()),
            outputs=in_request_order(outputs, self.spec),
            error=error or "",
        )

    def __repr__(self) -> str:
        state = self.machine.state if self.machine is not None else "new"
        return f"JobRun({self.id}, {state}, {len(self.nodes)} drvs, {self.pending} pending)"
