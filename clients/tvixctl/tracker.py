"""The state of a job as its events tell it: :class:`Tracker`, read by the progress displays."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from clients.tvixctl.formats import drv_name, drv_state_name, job_state_name, line_text, oneof

__all__ = ["GROUPS", "TAIL_LINES", "DrvProgress", "Tracker"]

GROUPS: dict[str, str] = {
    "eval": "waiting",
    "lookup": "waiting",
    "waiting": "waiting",
    "build": "building",
    "push": "building",
    "done": "done",
    "failed": "failed",
    "dependency_failed": "dependency failed",
    "cancelled": "cancelled",
}
"""Derivation state → the group the status line counts it in."""
TAIL_LINES = 5
"""Log lines kept per derivation (and shown under the live status line)."""


@dataclass
class DrvProgress:
    """Where one derivation of the job is (mutable: the tracker updates it)."""

    drv_path: str
    state: str = "eval"
    attempt: int = 0
    since_ms: int = 0
    detail: str = ""
    built: bool = False  # went through a build (not answered by lookup)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    @property
    def name(self) -> str:
        return drv_name(self.drv_path)


class Tracker:
    """The state of one job and its derivations, from the job's events (it does no output)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.job_state = "queued"
        self.error = ""
        self.last_seq = 0
        self.started_ms: int | None = None
        self.finished_ms: int | None = None
        self.drvs: dict[str, DrvProgress] = {}

    def __repr__(self) -> str:
        return f"Tracker({self.job_id}, {self.job_state}, seq {self.last_seq})"

    def apply(self, event: Any) -> None:
        """Take one ``JobEvent`` into account (events must come in sequence order)."""
        self.last_seq = int(event.seq)
        at = int(event.time_unix_ms)
        if self.started_ms is None:
            self.started_ms = at
        which, body = oneof(event, "event")
        if which == "job_state":
            self.job_state = job_state_name(body.state)
            self.error = body.error
            if self.job_state in ("succeeded", "failed", "cancelled"):
                self.finished_ms = at
        elif which == "derivation_state":
            drv = self.drvs.setdefault(body.drv_path, DrvProgress(body.drv_path))
            drv.state = drv_state_name(body.state)
            drv.attempt = int(body.attempt)
            drv.detail = body.detail
            drv.since_ms = at
            drv.built = drv.built or drv.state == "build"
            if drv.state == "build" and drv.attempt > 1:
                drv.tail.clear()
        elif which == "log":
            text = line_text(body.line)
            drv = self.drvs.setdefault(body.drv_path, DrvProgress(body.drv_path, state="build"))
            drv.tail.append(text)

    @property
    def final(self) -> bool:
        return self.finished_ms is not None

    def groups(self) -> dict[str, int]:
        """Derivations per group (``done``, ``building``, ``waiting`` always; others when > 0)."""
        counts = {"done": 0, "building": 0, "waiting": 0}
        for drv in self.drvs.values():
            group = GROUPS.get(drv.state, drv.state)
            counts[group] = counts.get(group, 0) + 1
        return counts

    def in_state(self, *states: str) -> list[DrvProgress]:
        return [drv for drv in self.drvs.values() if drv.state in states]

    def summary(self) -> str:
        """``4 derivations: 3 built, 1 present`` (plus failures), for the last line."""
        built = sum(1 for d in self.drvs.values() if d.state == "done" and d.built)
        present = sum(1 for d in self.drvs.values() if d.state == "done" and not d.built)
        parts = [f"{built} built", f"{present} present"]
        for group, n in self.groups().items():
            if group not in ("done", "building", "waiting") and n:
                parts.append(f"{n} {group}")
        total = len(self.drvs)
        return f"{total} derivation{'s' if total != 1 else ''}: " + ", ".join(parts)

    def elapsed(self, now_ms: int | None = None) -> float:
        """Seconds from the first event to the final one (or to now)."""
        if self.started_ms is None:
            return 0.0
        end = self.finished_ms or now_ms or time.time_ns() // 1_000_000
        return max(0, end - self.started_ms) / 1000
