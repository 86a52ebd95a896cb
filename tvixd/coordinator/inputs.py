"""What a build sees: the closure of its inputs, as castore root nodes by store path.

A derivation's direct inputs are the outputs it uses of its input
derivations (all done by the time it builds) and its input sources.  Input
sources are made available through ``evaluator.ensure_source`` first
(memoised here, concurrent callers share one call).  The build gets the
*closure*: every path reachable through path-info references, so that what
an input refers to at run time is in the sandbox too, as in Nix.

Path infos are immutable for a given store path, so they are cached (bounded
LRU); a path absent from the path-info service that is not a source Nix can
provide fails the build with ``NotFound``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import anyio

from clients.castore.model import Node
from clients.errors import NotFound
from clients.store.model import PathInfo
from clients.store.protocols import PathInfoService
from nixcompat.derivation import Derivation
from nixcompat.storepath import StorePath
from tvixd.eval.protocol import Evaluator

__all__ = ["InputResolver"]

CACHE_SIZE = 65536


class InputResolver:
    """Resolves build inputs (see the module docstring)."""

    def __init__(
        self, evaluator: Evaluator, pathinfos: PathInfoService, *, cache_size: int = CACHE_SIZE
    ) -> None:
        self._evaluator = evaluator
        self._pathinfos = pathinfos
        self._cache: OrderedDict[StorePath, PathInfo] = OrderedDict()
        self._cache_size = cache_size
        self._sources_in_flight: dict[StorePath, anyio.Event] = {}

    def __repr__(self) -> str:
        return f"InputResolver({len(self._cache)} path infos cached)"

    def remember(self, info: PathInfo) -> PathInfo:
        """Cache ``info`` (e.g. a path info just pushed)."""
        self._cache[info.store_path] = info
        self._cache.move_to_end(info.store_path)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return info

    async def source(self, path: StorePath) -> PathInfo:
        """``evaluator.ensure_source(path)``, once per path while cached."""
        while True:
            cached = self._cache.get(path)
            if cached is not None:
                return cached
            pending = self._sources_in_flight.get(path)
            if pending is None:
                break
            await pending.wait()  # the other caller's result is cached, or it failed: try again
        done = self._sources_in_flight[path] = anyio.Event()
        try:
            return self.remember(await self._evaluator.ensure_source(path))
        finally:
            del self._sources_in_flight[path]
            done.set()

    async def path_info(self, path: StorePath, *, source: bool = False) -> PathInfo:
        """The path info of ``path``; sources are imported when absent."""
        cached = self._cache.get(path)
        if cached is not None:
            self._cache.move_to_end(path)
            return cached
        if source:
            return await self.source(path)
        info = await self._pathinfos.get(path.digest)
        if info is None:
            raise NotFound(f"{path} is not in the store (needed as a build input)")
        return self.remember(info)

    async def closure(
        self, outputs: Iterable[StorePath], sources: Iterable[StorePath]
    ) -> dict[StorePath, Node]:
        """Root nodes of the reference closure of ``outputs`` and ``sources``.

        Paths reached from a source (a source's references are sources too)
        are imported when absent; anything else must be in the store.
        """
        todo = [(path, False) for path in outputs] + [(path, True) for path in sources]
        seen = {path for path, _ in todo}
        nodes: dict[StorePath, Node] = {}
        while todo:
            path, from_source = todo.pop()
            info = await self.path_info(path, source=from_source)
            nodes[path] = info.node
            for ref in info.references:
                if ref not in seen:
                    seen.add(ref)
                    todo.append((ref, from_source))
        return nodes

    async def for_derivation(
        self, drv: Derivation, inputs: dict[StorePath, tuple[StorePath, ...]]
    ) -> dict[StorePath, Node]:
        """The closure of ``drv``'s inputs; ``inputs`` maps each input ``.drv`` to its used outputs' paths."""
        outputs = [path for paths in inputs.values() for path in paths]
        sources = [StorePath.from_absolute_path(src) for src in drv.input_sources]
        return await self.closure(outputs, sources)
