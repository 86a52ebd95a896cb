"""A stand-in for the coordinator, so the daemon's shell can be tested on its own.

Only what the daemon calls: ``run`` (recovery, then ``task_status.started``),
``stop_accepting`` and ``drain``; gates let a test hold recovery or drain.
Run as a module it is ``tvixd`` with this stand-in (for subprocess tests):
``STANDIN_DRAIN=hang`` makes drain ignore its grace period (a stuck build).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from tvixd.main import main


class StandInCoordinator:
    """Records the daemon's calls; ``recover_gate`` / ``drain_gate`` hold those steps."""

    instances: list[StandInCoordinator] = []  # noqa: RUF012  # the tests find the one built
    next_recover_gate: anyio.Event | None = None

    def __init__(
        self,
        *,
        evaluator: Any,
        blobs: Any,
        directories: Any,
        pathinfos: Any,
        builder: Any,
        journal_path: Path,
        signing_key: Any,
        max_jobs: int,
    ) -> None:
        self.services = (evaluator, blobs, directories, pathinfos, builder)
        self.journal_path = journal_path
        self.signing_key = signing_key
        self.max_jobs = max_jobs
        self.calls: list[str] = []
        self.recover_gate = StandInCoordinator.next_recover_gate
        StandInCoordinator.next_recover_gate = None
        self.drain_gate: anyio.Event | None = None
        self.hang_in_drain = os.environ.get("STANDIN_DRAIN") == "hang"
        StandInCoordinator.instances.append(self)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self.calls.append("recover")
        if self.recover_gate is not None:
            await self.recover_gate.wait()
        task_status.started()
        self.calls.append("running")
        try:
            await anyio.sleep_forever()
        finally:
            self.calls.append("cancelled")

    def stop_accepting(self) -> None:
        self.calls.append("stop_accepting")

    async def drain(self, grace: float) -> None:
        self.calls.append(f"drain({grace:g})")
        if self.hang_in_drain:
            await anyio.sleep_forever()
        if self.drain_gate is not None:
            with anyio.move_on_after(grace):
                await self.drain_gate.wait()
        self.calls.append("drained")


def standin_servicers(coordinator: Any) -> list[Any]:
    """The stand-in serves no tvixd.v1.Coordinator API."""
    return []


if __name__ == "__main__":
    sys.exit(
        main(sys.argv[1:], coordinator=StandInCoordinator, coordinator_servicers=standin_servicers)
    )
