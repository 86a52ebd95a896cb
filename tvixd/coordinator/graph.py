"""The derivation graph all jobs share: one node per derivation path.

A :class:`Node` holds what the coordinator knows about one derivation:

* its parsed ``.drv`` (``None`` until loaded) and its latest
  ``fsm.DerivationRecord`` — its whole state: the driver sends events through
  one compiled ``DerivationMachine`` shared by every node (``fsm.CompiledMachine``;
  a machine per node would cost ~0.5 ms and ~67 KiB, see docs/fsm.md);
* ``jobs``: the *running* jobs that need it (the reference count ``cancel``
  uses: a node no running job needs is cancelled);
* ``inputs`` (input node → output names used) and ``dependents``, linked when
  the node enters ``waiting`` (lookup is top-down: a node whose outputs are
  present never gets its inputs linked);
* ``pending_inputs``: how many linked inputs are not final yet;
* ``generation``: bumped when the node is cancelled or restarted, so a
  lookup or build started for an earlier generation knows it is stale;
* ``scope``: the cancel scope of its running build, if any;
* ``fresh_log``: its next build starts a new series of attempts and replaces
  the stored log (set when started in ``eval``; a build resumed after a restart
  appends to the log of the interrupted one);
* ``started``: whether the driver has set it going (a node is created,
  then its first job is attached, then it starts, so that its first
  journaled transition already reaches that job's event log).

Invariant kept by :meth:`Graph.attach`: a job in ``node.jobs`` of a node in
``waiting`` is in the ``jobs`` of each of its inputs, so when no running job
needs a node, none needs its waiting dependents either.  The graph is plain
data; the coordinator's driver changes it on the event loop only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from fsm import FINAL_DRV_STATES, UNSUCCESSFUL_DRV_STATES, DerivationRecord, DrvState
from nixcompat.derivation import Derivation
from nixcompat.storepath import StorePath

__all__ = ["Graph", "Node"]


@dataclass(eq=False, repr=False)
class Node:
    """One derivation of the shared graph (see the module docstring)."""

    drv_path: StorePath
    record: DerivationRecord
    drv: Derivation | None = None
    jobs: set[str] = field(default_factory=set)
    inputs: dict[Node, tuple[str, ...]] = field(default_factory=dict)
    dependents: set[Node] = field(default_factory=set)
    pending_inputs: int = 0
    generation: int = 0
    scope: anyio.CancelScope | None = None
    started: bool = False
    fresh_log: bool = False
    _outputs: dict[str, StorePath] | None = field(default=None, init=False)

    @property
    def key(self) -> str:
        """The absolute ``.drv`` path (the journal's key)."""
        return self.record.drv_path

    @property
    def state(self) -> DrvState:
        return self.record.state

    @property
    def is_final(self) -> bool:
        return self.record.state in FINAL_DRV_STATES

    @property
    def is_unsuccessful(self) -> bool:
        return self.record.state in UNSUCCESSFUL_DRV_STATES

    def is_stale(self, generation: int, state: DrvState) -> bool:
        """Whether work started for ``generation`` in ``state`` no longer applies."""
        return self.generation != generation or self.record.state is not state

    def output_paths(self) -> dict[str, StorePath]:
        """Output name → store path (the ``.drv`` must be loaded; parsed once, do not modify)."""
        if self._outputs is None:
            assert self.drv is not None, f"{self.key} is not loaded"
            self._outputs = {
                name: StorePath.from_absolute_path(out.path)
                for name, out in self.drv.outputs.items()
            }
        return self._outputs

    def __repr__(self) -> str:
        return f"Node({self.drv_path.basename}, {self.state}, jobs={sorted(self.jobs)})"


class Graph:
    """Nodes by ``.drv`` path; membership of jobs in nodes."""

    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        return f"Graph({len(self._nodes)} nodes)"

    def get(self, key: str) -> Node | None:
        """The node of absolute ``.drv`` path ``key``, or None."""
        return self._nodes.get(key)

    def nodes(self) -> list[Node]:
        """Every node (a snapshot)."""
        return list(self._nodes.values())

    def add(self, node: Node) -> Node:
        """Insert ``node``; its path must not be present."""
        assert node.key not in self._nodes, f"{node.key} is already in the graph"
        self._nodes[node.key] = node
        return node

    def link(self, parent: Node, child: Node, outputs: tuple[str, ...]) -> None:
        """Record that ``parent`` uses ``outputs`` of ``child``."""
        parent.inputs[child] = outputs
        child.dependents.add(parent)

    def attach(self, job_id: str, node: Node) -> list[Node]:
        """Add ``job_id`` to ``node`` and, through waiting nodes, to their linked inputs.

        Returns the nodes that did not have the job yet (in visiting order).
        """
        added: list[Node] = []
        stack = [node]
        while stack:
            current = stack.pop()
            if job_id in current.jobs:
                continue
            current.jobs.add(job_id)
            added.append(current)
            if current.state is DrvState.WAITING:
                stack.extend(current.inputs)
        return added

    def evict(self, node: Node) -> None:
        """Drop a final node no running job needs (its record stays in the journal)."""
        assert node.is_final, f"cannot evict {node!r}: not final"
        assert not node.jobs, f"cannot evict {node!r}: jobs need it"
        if self._nodes.get(node.key) is node:
            del self._nodes[node.key]
        for child in node.inputs:
            child.dependents.discard(node)
