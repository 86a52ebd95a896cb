"""Push: a successful build's outputs become path infos in the path-info service.

For each output of the build (the builder already put its contents into the
castore and scanned it for the request's refscan needles):

* ``references``: the store paths behind the needles found in it
  (``tvixd.build.translate.refscan_candidates`` gives the path of each
  needle: this derivation's outputs, its input sources and input paths), in
  Nix's order (sorted, unique);
* ``nar_size`` / ``nar_sha256``: computed by the ``NarCalculator`` over the
  castore tree (the NAR is rendered and hashed, never stored);
* ``deriver``: the ``.drv`` path;
* ``ca``: for a fixed-output derivation, ``fixed:r:<algo>:<hash>`` (recursive)
  or ``fixed:<algo>:<hash>`` (flat), after checking that the output has that
  hash — a mismatch fails the push, as Nix fails such a build;
* a signature by ``signing_key`` over the fingerprint, when configured.

Every output's path info is computed before any is put, so a failure leaves
no partial set of outputs behind.
"""

from __future__ import annotations

import hashlib

import anyio
import anyio.to_thread

from clients.build.model import Build
from clients.castore.model import FileNode, Node
from clients.castore.protocols import BlobService, DirectoryService
from clients.errors import InvalidRequest, NotFound
from clients.store.model import PathInfo, references_of, with_name
from clients.store.nar import render_nar
from clients.store.protocols import NarCalculator, PathInfoService
from nixcompat.derivation import Derivation
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.narinfo import CaMethod, ContentAddress
from nixcompat.signing import SigningKey
from nixcompat.storepath import StorePath
from tvixd.store.pathinfo.many import put_many

__all__ = ["HashMismatch", "Pusher"]

_THREAD_HASH = 64 << 10


class HashMismatch(InvalidRequest):
    """A fixed-output derivation's output does not have the declared hash."""


class Pusher:
    """Turns builds into path infos (see the module docstring)."""

    def __init__(
        self,
        *,
        blobs: BlobService,
        directories: DirectoryService,
        pathinfos: PathInfoService,
        nar: NarCalculator,
        signing_key: SigningKey | None,
    ) -> None:
        self._blobs = blobs
        self._directories = directories
        self._pathinfos = pathinfos
        self._nar = nar
        self._key = signing_key

    def __repr__(self) -> str:
        signing = f", signing as {self._key.name}" if self._key is not None else ""
        return f"Pusher({self._pathinfos!r}{signing})"

    async def path_infos(
        self,
        drv_path: StorePath,
        drv: Derivation,
        build: Build,
        candidates: tuple[StorePath, ...],
    ) -> list[PathInfo]:
        """The path infos of ``build``'s outputs; ``candidates[i]`` is the path of needle ``i``."""
        by_path = {out.path: name for name, out in drv.outputs.items()}
        infos = []
        for i, relative in enumerate(build.request.outputs):
            path = StorePath.from_absolute_path("/" + relative)
            name = by_path.get(path.absolute)
            if name is None:
                raise InvalidRequest(
                    f"the build of {drv_path} produced {path}, not an output of it"
                )
            node = with_name(build.outputs[i], path.basename.encode())
            nar_size, nar_sha256 = await self._nar.calculate_nar(node)
            info = PathInfo(
                store_path=path,
                node=node,
                references=references_of(candidates[j] for j in build.outputs_needles[i]),
                nar_size=nar_size,
                nar_sha256=nar_sha256,
                deriver=drv_path,
                ca=await self._content_address(drv, name, node, nar_sha256),
            )
            info.validate()
            infos.append(info.signed(self._key) if self._key is not None else info)
        return infos

    async def put(self, infos: list[PathInfo]) -> None:
        """Put every path info (in one transaction when the backend can: see ``put_many``)."""
        await put_many(self._pathinfos, infos)

    async def _content_address(
        self, drv: Derivation, name: str, node: Node, nar_sha256: bytes
    ) -> ContentAddress | None:
        if not drv.is_fixed_output():
            return None
        out = drv.outputs[name]
        expected = out.nix_hash
        assert expected is not None
        if out.recursive:
            if expected.algo is HashAlgo.sha256:
                actual = nar_sha256
            else:
                actual = await self._hash_nar(node, expected.algo)
            method = CaMethod.recursive
        else:
            if not isinstance(node, FileNode):
                raise HashMismatch(
                    f"fixed-output derivation output {out.path} must be a regular file "
                    "for flat hashing"
                )
            actual = await self._hash_blob(node, expected.algo)
            method = CaMethod.flat
        if actual != expected.digest:
            got = NixHash(expected.algo, actual)
            raise HashMismatch(
                f"hash mismatch in fixed-output derivation output {out.path}:\n"
                f"  specified: {expected.to_sri()}\n     got:    {got.to_sri()}"
            )
        return ContentAddress(method, expected)

    async def _hash_nar(self, node: Node, algo: HashAlgo) -> bytes:
        hasher = hashlib.new(algo.value)
        async for chunk in render_nar(node, self._blobs, self._directories):
            await _update(hasher, chunk)
        return hasher.digest()

    async def _hash_blob(self, node: FileNode, algo: HashAlgo) -> bytes:
        hasher = hashlib.new(algo.value)
        reader = await self._blobs.open_read(node.digest)
        if reader is None:
            raise NotFound(f"blob {node.digest.hex()} of output {node.name!r} is missing")
        async with reader:
            async for chunk in reader:
                await _update(hasher, chunk)
        return hasher.digest()


async def _update(hasher: hashlib._Hash, chunk: bytes) -> None:
    """Hash ``chunk``; large chunks on a worker thread (nothing blocks the loop)."""
    if len(chunk) >= _THREAD_HASH:
        await anyio.to_thread.run_sync(hasher.update, chunk)
    else:
        hasher.update(chunk)
