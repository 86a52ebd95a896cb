"""The work of the ``build`` and ``push`` states, without the state machine.

:meth:`Realiser.build` resolves the inputs' closure, translates the
derivation into a ``BuildRequest`` and runs it on the builder, streaming its
log to the given sink; :meth:`Realiser.push` turns the result into path
infos and puts them.  Both raise on failure (the driver classifies the
exception with :func:`tvixd.coordinator.retry.classify` and reports it to
the machine); neither knows about jobs or the journal.  Neither sets its
own deadline: the caller runs each under one (:attr:`Realiser.build_timeout`,
:attr:`Realiser.push_timeout`), in the cancel scope it keeps to cancel the
node (:class:`tvixd.coordinator.slots.BuildSlots`: one scope, not two, per
step).
"""

from __future__ import annotations

from dataclasses import dataclass

from clients.build.model import Build
from clients.build.protocols import BuildService, LogSink
from nixcompat.storepath import StorePath
from tvixd.build.translate import translate
from tvixd.coordinator.graph import Node
from tvixd.coordinator.inputs import InputResolver
from tvixd.coordinator.push import Pusher
from tvixd.eval.protocol import Evaluator

__all__ = ["BUILD_TIMEOUT", "PUSH_TIMEOUT", "Built", "Realiser"]

BUILD_TIMEOUT = 24 * 3600.0
"""Seconds one build attempt may take, as seen by the coordinator (builders have their own)."""
PUSH_TIMEOUT = 3600.0
"""Seconds pushing one derivation's outputs may take."""


@dataclass(frozen=True)
class Built:
    """A successful build and the store path behind each of its refscan needles."""

    build: Build
    candidates: tuple[StorePath, ...]


class Realiser:
    """Builds and pushes derivations (see the module docstring)."""

    def __init__(
        self,
        *,
        evaluator: Evaluator,
        builder: BuildService,
        inputs: InputResolver,
        pusher: Pusher,
        build_cores: int = 0,
        build_timeout: float = BUILD_TIMEOUT,
        push_timeout: float = PUSH_TIMEOUT,
    ) -> None:
        self._evaluator = evaluator
        self._builder = builder
        self._inputs = inputs
        self._pusher = pusher
        self._build_cores = build_cores
        self._build_timeout = build_timeout
        self._push_timeout = push_timeout

    def __repr__(self) -> str:
        return f"Realiser({self._builder!r}, {self._pusher!r})"

    @property
    def build_timeout(self) -> float:
        """Seconds :meth:`build` may take (preparing the inputs included), enforced by the caller."""
        return self._build_timeout

    @property
    def push_timeout(self) -> float:
        """Seconds :meth:`push` may take, enforced by the caller."""
        return self._push_timeout

    async def build(self, node: Node, on_log: LogSink) -> Built:
        """Build ``node`` (its inputs are done and linked in ``node.inputs``).

        Preparing the inputs and the build itself share one deadline (the caller's:
        :attr:`build_timeout`).
        """
        drv = node.drv
        assert drv is not None, f"{node.key} is not loaded"
        used: dict[StorePath, tuple[StorePath, ...]] = {}
        for child, names in node.inputs.items():
            if child.drv is None:
                child.drv = await self._evaluator.read_derivation(child.drv_path)
            outputs = child.output_paths()
            used[child.drv_path] = tuple(outputs[name] for name in names)
        closure = await self._inputs.for_derivation(drv, used)
        translation = translate(drv, closure, build_cores=self._build_cores)
        build = await self._builder.build(translation.request, on_log=on_log)
        return Built(build, translation.candidates)

    async def push(self, node: Node, built: Built) -> None:
        """Put the path infos of ``built``'s outputs (see :mod:`tvixd.coordinator.push`).

        The caller's deadline: :attr:`push_timeout`.
        """
        drv = node.drv
        assert drv is not None, f"{node.key} is not loaded"
        infos = await self._pusher.path_infos(node.drv_path, drv, built.build, built.candidates)
        await self._pusher.put(infos)
        for info in infos:
            self._inputs.remember(info)
