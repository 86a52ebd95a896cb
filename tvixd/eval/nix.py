"""The ``nix://`` evaluator: the real ``nix-instantiate``, run as async subprocesses.

* :meth:`NixEvaluator.evaluate` runs one ``nix-instantiate`` per attribute
  path (or one for the file's top-level value), at most ``max_concurrency``
  at a time across every evaluation of this evaluator, and yields each root
  as soon as its line arrives.  The first failure stops the others and
  raises :class:`EvaluationError` with Nix's stderr verbatim (minus the
  ``--add-root`` warning).  Substituters are switched off.
* ``.drv`` files are read from the local store on a dedicated thread
  (:class:`~tvixd.sqlite.SerialThread`: reads asked for together are handed
  over together), checked to hash to their own path, and kept in a bounded
  cache.
* Input sources are imported by :class:`~tvixd.eval.sources.SourceImporter`.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterable, Sequence
from pathlib import Path

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream

from clients.castore.protocols import BlobService, DirectoryService
from clients.store.model import PathInfo
from clients.store.protocols import PathInfoService
from nixcompat.derivation import Derivation
from nixcompat.errors import NixCompatError
from nixcompat.storepath import StorePath, make_store_path
from tvixd.eval.instantiate import clean_stderr, instantiate_argv, parse_output_line
from tvixd.eval.process import ToolFailed, run_lines
from tvixd.eval.protocol import (
    DerivationFileError,
    EvalRequest,
    EvaluatedRoot,
    EvaluationError,
    NixArg,
)
from tvixd.eval.roots import roots_from_drv_paths
from tvixd.eval.sources import SourceImporter
from tvixd.sqlite import SerialThread, ThreadStopped

__all__ = ["NixEvaluator", "load_derivation"]


def load_derivation(drv_path: StorePath) -> Derivation:
    """Read and parse ``drv_path`` from the local store (blocking); DerivationFileError if bad."""
    if not drv_path.is_derivation:
        raise DerivationFileError(f"{drv_path} is not a derivation (.drv) path")
    try:
        with open(drv_path.absolute, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DerivationFileError(
            f"derivation {drv_path} does not exist in the local Nix store"
        ) from None
    except OSError as exc:
        raise DerivationFileError(f"cannot read derivation {drv_path}: {exc}") from exc
    try:
        drv = Derivation.from_aterm(data)
        if _names_itself(drv, data, drv_path):
            return drv
        actual = drv.drv_path()
    except NixCompatError as exc:
        raise DerivationFileError(f"{drv_path} is not a valid derivation: {exc}") from exc
    if actual != drv_path:
        raise DerivationFileError(
            f"{drv_path} is not a valid derivation: its contents are the derivation {actual}"
        )
    return drv


def _names_itself(drv: Derivation, data: bytes, drv_path: StorePath) -> bool:
    """Whether ``data`` (parsed as ``drv``) is exactly what ``drv_path`` commits to.

    The text path over the file's own bytes, references sorted as strings
    (for valid store paths the order of ``StorePath``): no re-serialisation
    and no reference parsing.  ``False`` is not a verdict — the caller then
    checks the slow way, ``drv.drv_path()``, which names the mismatch.
    """
    if drv.name + ".drv" != drv_path.name:
        return False
    refs = sorted({*drv.input_sources, *drv.input_derivations})
    inner = hashlib.sha256(data).digest()
    return make_store_path(":".join(["text", *refs]), inner, drv_path.name) == drv_path


def _absolute_file(file: Path) -> Path:
    path = Path(os.path.abspath(file))
    if not path.exists():
        raise EvaluationError(f"the Nix file {str(file)!r} does not exist")
    return path


class NixEvaluator:
    """:class:`~tvixd.eval.protocol.Evaluator` backed by ``nix-instantiate`` (see the module docstring).

    ``timeout`` bounds each ``nix-instantiate`` run in seconds.
    """

    def __init__(
        self,
        blobs: BlobService,
        directories: DirectoryService,
        pathinfos: PathInfoService,
        *,
        nix_instantiate: str = "nix-instantiate",
        nix_store: str = "nix-store",
        max_concurrency: int | None = None,
        timeout: float = 3600.0,
        drv_cache_size: int = 16384,
    ) -> None:
        concurrency = max_concurrency if max_concurrency is not None else os.cpu_count() or 1
        if concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {concurrency}")
        self._nix_instantiate = nix_instantiate
        self._max_concurrency = concurrency
        self._slots = anyio.Semaphore(concurrency)
        self._timeout = timeout
        self._drvs: OrderedDict[StorePath, Derivation] = OrderedDict()
        self._drv_cache_size = drv_cache_size
        self._sources = SourceImporter(blobs, directories, pathinfos, nix_store=nix_store)
        self._reader = SerialThread("drv reader")
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"NixEvaluator({self._nix_instantiate!r}, max_concurrency={self._max_concurrency}, "
            f"{len(self._drvs)} derivations cached)"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the evaluator is closed")

    async def evaluate(self, request: EvalRequest) -> AsyncGenerator[EvaluatedRoot, None]:
        """See :meth:`tvixd.eval.protocol.Evaluator.evaluate`."""
        self._check_open()
        file = await anyio.to_thread.run_sync(_absolute_file, request.file)
        targets: list[str | None] = list(dict.fromkeys(request.attr_paths)) or [None]
        send, receive = anyio.create_memory_object_stream[EvaluatedRoot | EvaluationError](64)
        failure: EvaluationError | None = None
        seen: set[EvaluatedRoot] = set()
        closed = False
        async with anyio.create_task_group() as tg:
            for target in targets:
                tg.start_soon(self._run_one, file, target, request.args, send.clone())
            send.close()
            async with receive:
                async for item in receive:
                    if isinstance(item, EvaluationError):
                        failure = item
                        tg.cancel_scope.cancel()
                        break
                    if item in seen:
                        continue
                    seen.add(item)
                    try:
                        yield item
                    except GeneratorExit:  # closed early: stop the others, end quietly
                        closed = True
                        tg.cancel_scope.cancel()
                        break
        if closed:
            return
        if failure is not None:
            raise failure

    async def _run_one(
        self,
        file: Path,
        attr_path: str | None,
        args: Sequence[NixArg],
        send: MemoryObjectSendStream[EvaluatedRoot | EvaluationError],
    ) -> None:
        label = attr_path if attr_path is not None else ""
        with send:
            try:
                try:
                    await self._instantiate(file, attr_path, label, args, send)
                except EvaluationError as exc:
                    await send.send(exc)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the consumer stopped listening

    async def _instantiate(
        self,
        file: Path,
        attr_path: str | None,
        label: str,
        args: Sequence[NixArg],
        send: MemoryObjectSendStream[EvaluatedRoot | EvaluationError],
    ) -> None:
        async def on_line(line: str) -> None:
            if line:
                await send.send(await self._root(line, label))

        argv = instantiate_argv(self._nix_instantiate, file, attr_path, args)
        async with self._slots:
            try:
                result = await run_lines(argv, on_line, time_limit=self._timeout)
            except ToolFailed as exc:
                where = f"attribute {label!r} of {file}" if attr_path is not None else str(file)
                raise EvaluationError(f"evaluating {where}: {exc}", attr_path=label) from exc
        if result.returncode != 0:
            message = clean_stderr(result.stderr)
            raise EvaluationError(
                message or f"nix-instantiate exited with status {result.returncode}",
                attr_path=label,
            )

    async def _root(self, line: str, label: str) -> EvaluatedRoot:
        drv_path, output = parse_output_line(line, label)
        drv = await self.read_derivation(drv_path)
        if output is None:
            return EvaluatedRoot(label, drv_path, tuple(drv.outputs))
        if output not in drv.outputs:
            raise DerivationFileError(
                f"nix-instantiate selected output {output!r} of {drv_path}, which has only "
                f"{', '.join(drv.outputs)}",
                attr_path=label,
            )
        return EvaluatedRoot(label, drv_path, (output,))

    async def read_derivation(self, drv_path: StorePath) -> Derivation:
        """See :meth:`tvixd.eval.protocol.Evaluator.read_derivation`."""
        self._check_open()
        cached = self._drvs.get(drv_path)
        if cached is not None:
            self._drvs.move_to_end(drv_path)
            return cached
        try:
            drv = await self._reader.run(lambda: load_derivation(drv_path))
        except ThreadStopped:
            self._check_open()  # closed meanwhile
            raise
        self._drvs[drv_path] = drv
        if len(self._drvs) > self._drv_cache_size:
            self._drvs.popitem(last=False)
        return drv

    async def read_derivations(
        self, drv_paths: Sequence[StorePath]
    ) -> list[Derivation | DerivationFileError]:
        """See :meth:`tvixd.eval.protocol.Evaluator.read_derivations` (one thread call for all)."""
        self._check_open()
        known: dict[StorePath, Derivation | DerivationFileError] = {}
        for drv_path in drv_paths:
            cached = self._drvs.get(drv_path)
            if cached is not None:
                self._drvs.move_to_end(drv_path)
                known[drv_path] = cached
        missing = [path for path in dict.fromkeys(drv_paths) if path not in known]

        def load_all() -> list[Derivation | DerivationFileError]:
            out: list[Derivation | DerivationFileError] = []
            for path in missing:
                try:
                    out.append(load_derivation(path))
                except DerivationFileError as exc:
                    out.append(exc)
            return out

        if missing:
            try:
                loaded = await self._reader.run(load_all)
            except ThreadStopped:
                self._check_open()  # closed meanwhile
                raise
            for path, result in zip(missing, loaded, strict=True):
                known[path] = result
                if isinstance(result, Derivation):
                    self._drvs[path] = result
            while len(self._drvs) > self._drv_cache_size:
                self._drvs.popitem(last=False)
        return [known[path] for path in drv_paths]

    async def roots_from_drv_paths(self, paths: Iterable[str | StorePath]) -> list[EvaluatedRoot]:
        """Roots for ``.drv`` paths named directly; see :func:`tvixd.eval.roots.roots_from_drv_paths`."""
        return await roots_from_drv_paths(self, paths)

    async def ensure_source(self, path: StorePath) -> PathInfo:
        """See :meth:`tvixd.eval.protocol.Evaluator.ensure_source`."""
        self._check_open()
        return await self._sources.ensure(path)

    async def close(self) -> None:
        """Forget the caches and end the reading thread; idempotent."""
        self._closed = True
        self._drvs.clear()
        await self._reader.stop()
