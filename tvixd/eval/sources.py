"""Input sources from the local Nix store into our castore and path-info service.

Evaluation writes sources into the local ``/nix/store`` (``builtins.toFile``,
``./path``, ``builtins.path``).  A builder only sees our store, so each source
a derivation needs is *imported*: its tree ingested into the castore (the NAR
hash and size come from the same pass) and a path info put, under exactly the
store path Nix gave it — never recomputed.

What Nix knows about the path (references, registered NAR hash and size,
deriver) comes from ``nix-store --dump-db PATH...``: the same references as
``nix-store --query --references``, but per path and for many paths in one
call, so concurrent imports share one process (:class:`~tvixd.eval.batch.Batcher`).
The ingested NAR must hash to what Nix registered, or the import fails.

The content address is filled in when the path is one (``text:`` for
``builtins.toFile``, ``fixed:r:sha256`` for ``./path`` and ``builtins.path``,
``fixed:<algo>`` for flat ones): recomputing the store path from the
candidate address and comparing proves it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio
import anyio.to_thread

from clients.castore.model import FileNode, Node
from clients.castore.protocols import BlobService, DirectoryService
from clients.store.ingest import ingest_path
from clients.store.model import PathInfo
from clients.store.protocols import PathInfoService
from nixcompat.errors import NixCompatError
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.narinfo import CaMethod, ContentAddress
from nixcompat.storepath import StorePath, make_fixed_output_path, make_text_path
from tvixd.eval.batch import Batcher, SingleFlight
from tvixd.eval.process import ToolFailed, run_lines
from tvixd.eval.protocol import SourceError

__all__ = ["Registration", "SourceImporter", "content_address", "parse_dump_db"]

#: Flat files up to this size are read again to find a text / flat content address.
_MAX_CA_FILE = 64 << 20


@dataclass(frozen=True)
class Registration:
    """What Nix's database holds for a valid path (one record of ``nix-store --dump-db``)."""

    path: StorePath
    nar_hash: NixHash
    nar_size: int
    deriver: StorePath | None
    references: tuple[StorePath, ...]


def parse_dump_db(text: str) -> dict[StorePath, Registration]:
    """Parse ``nix-store --dump-db`` output: per path its NAR hash (hex), size, deriver, references.

    Raises ``ValueError`` naming the line when the output is not in that format.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    records: dict[StorePath, Registration] = {}
    i = 0
    try:
        while i < len(lines):
            start = i
            path = StorePath.from_absolute_path(lines[i])
            nar_hash = NixHash.parse(lines[i + 1], HashAlgo.sha256)
            nar_size = int(lines[i + 2])
            deriver = StorePath.from_absolute_path(lines[i + 3]) if lines[i + 3] else None
            count = int(lines[i + 4])
            if count < 0 or i + 5 + count > len(lines):
                raise ValueError(f"reference count {count} exceeds the output")
            refs = tuple(StorePath.from_absolute_path(r) for r in lines[i + 5 : i + 5 + count])
            records[path] = Registration(path, nar_hash, nar_size, deriver, refs)
            i += 5 + count
    except (IndexError, ValueError, NixCompatError) as exc:
        raise ValueError(
            f"unexpected nix-store --dump-db output in the record at line {start + 1}: {exc}"
        ) from exc
    return records


def content_address(
    path: StorePath, node: Node, nar_hash: NixHash, references: Sequence[StorePath]
) -> ContentAddress | None:
    """The content address that reproduces ``path``, if it is content-addressed; None otherwise.

    Blocking (reads a flat file again): run it on a worker thread.
    """
    refs = [r for r in references if r != path]
    self_ref = len(refs) != len(references)
    try:
        if make_fixed_output_path(path.name, nar_hash, True, refs, self_ref) == path:
            return ContentAddress(CaMethod.recursive, nar_hash)
    except NixCompatError:
        pass
    if not isinstance(node, FileNode) or node.size > _MAX_CA_FILE or self_ref:
        return None
    with open(path.absolute, "rb") as f:
        data = f.read(_MAX_CA_FILE + 1)
    if make_text_path(path.name, data, refs) == path:
        return ContentAddress(CaMethod.text, NixHash.compute(HashAlgo.sha256, data))
    if not refs:
        for algo in (HashAlgo.sha256, HashAlgo.sha1, HashAlgo.sha512, HashAlgo.md5):
            flat = NixHash.compute(algo, data)
            if make_fixed_output_path(path.name, flat, False) == path:
                return ContentAddress(CaMethod.flat, flat)
    return None


class SourceImporter:
    """Imports local-store paths into our store (see the module docstring).

    ``nix_store`` is the ``nix-store`` binary; each call of it gets
    ``timeout`` seconds.
    """

    def __init__(
        self,
        blobs: BlobService,
        directories: DirectoryService,
        pathinfos: PathInfoService,
        *,
        nix_store: str = "nix-store",
        timeout: float = 300.0,
        max_batch: int = 256,
    ) -> None:
        self._blobs = blobs
        self._directories = directories
        self._pathinfos = pathinfos
        self._nix_store = nix_store
        self._timeout = timeout
        self._registrations: Batcher[StorePath, Registration] = Batcher(
            self._query, max_batch=max_batch, cache_size=16384
        )
        self._imports: SingleFlight[StorePath] = SingleFlight()

    def __repr__(self) -> str:
        return f"SourceImporter({self._nix_store!r}, into {self._pathinfos!r})"

    async def registration(self, path: StorePath) -> Registration:
        """What the local Nix store registered for ``path`` (batched, cached); SourceError if invalid."""
        return await self._registrations.get(path)

    async def ensure(self, path: StorePath) -> PathInfo:
        """See :meth:`tvixd.eval.protocol.Evaluator.ensure_source`."""
        existing = await self._existing(path)
        if existing is not None:
            return existing
        async with self._imports.hold(path) as waited:
            if waited and (existing := await self._existing(path)) is not None:
                return existing
            return await self._import(path)

    async def _existing(self, path: StorePath) -> PathInfo | None:
        info = await self._pathinfos.get(path.digest)
        return info if info is not None and info.store_path == path else None

    async def _import(self, path: StorePath) -> PathInfo:
        registration = await self.registration(path)
        try:
            result = await ingest_path(
                path.absolute, self._blobs, self._directories, name=path.basename.encode()
            )
        except (OSError, NixCompatError) as exc:
            raise SourceError(
                f"cannot import input source {path} from the local store: {exc}"
            ) from exc
        nar_hash = NixHash(HashAlgo.sha256, result.nar_sha256)
        if nar_hash != registration.nar_hash or result.nar_size != registration.nar_size:
            raise SourceError(
                f"input source {path} in the local store does not match Nix's database: "
                f"its NAR has {nar_hash.to_nix_string()} ({result.nar_size} bytes), "
                f"Nix registered {registration.nar_hash.to_nix_string()} "
                f"({registration.nar_size} bytes); run nix-store --verify --check-contents"
            )
        ca = await anyio.to_thread.run_sync(
            content_address, path, result.node, nar_hash, registration.references
        )
        info = PathInfo(
            store_path=path,
            node=result.node,
            references=registration.references,
            nar_size=result.nar_size,
            nar_sha256=result.nar_sha256,
            deriver=registration.deriver,
            ca=ca,
        )
        return await self._pathinfos.put(info)

    async def _query(
        self, paths: Sequence[StorePath]
    ) -> Mapping[StorePath, Registration | Exception]:
        out: list[str] = []

        async def collect(line: str) -> None:
            out.append(line)

        argv = [self._nix_store, "--dump-db", *(p.absolute for p in paths)]
        try:
            result = await run_lines(argv, collect, time_limit=self._timeout)
        except ToolFailed as exc:
            raise SourceError(f"cannot query the local Nix store: {exc}") from exc
        if result.returncode != 0:
            if len(paths) == 1:
                detail = result.stderr.strip() or f"exit status {result.returncode}"
                return {
                    paths[0]: SourceError(
                        f"input source {paths[0]} is not available in the local Nix store "
                        f"({detail})"
                    )
                }
            answers: dict[StorePath, Registration | Exception] = {}
            for path in paths:  # find out which one Nix rejected
                answers.update(await self._query([path]))
            return answers
        try:
            records = parse_dump_db("\n".join(out))
        except ValueError as exc:
            raise SourceError(str(exc)) from exc
        return {
            p: records.get(p) or SourceError(f"nix-store --dump-db did not describe {p}")
            for p in paths
        }
