"""Helpers for the builder tests: busybox in the store, derivations, a tiny build driver.

Test derivations follow nixpkgs' bootstrap style: a static busybox imported
as a store path (``…-busybox/bin/busybox``), called by its path with ``sh``
as the first argument (busybox picks the applet from ``argv[0]``, then from
``argv[1]`` when ``argv[0]`` is ``busybox``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clients.build.model import Build
from clients.build.protocols import BuildService, LogSink
from clients.castore.model import DirectoryNode, FileNode, Node
from clients.castore.protocols import BlobService, DirectoryService
from clients.castore.streams import read_blob
from clients.store.ingest import ingest_path
from clients.store.model import with_name
from nixcompat.derivation import Derivation, Output, calculate_output_paths
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.storepath import StorePath, make_fixed_output_path
from tvixd.build.oci.storedirs import StoreDir
from tvixd.build.references import output_references
from tvixd.build.translate import derivation_to_build_request

SYSTEM = "x86_64-linux"


def make_busybox_tree(parent: Path) -> Path:
    """``parent/busybox/bin/busybox``, a copy of Debian's static busybox; returns ``parent/busybox``."""
    if not os.path.exists("/bin/busybox"):
        import pytest

        pytest.fail("/bin/busybox (busybox-static) is not installed")
    tree = parent / "busybox"
    (tree / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", tree / "bin" / "busybox")
    os.chmod(tree / "bin" / "busybox", 0o555)
    return tree


@dataclass
class Store:
    """A castore plus what a coordinator would know: store path → root node and references."""

    blobs: BlobService
    directories: DirectoryService
    nodes: dict[StorePath, Node] = field(default_factory=dict)
    references: dict[StorePath, frozenset[StorePath]] = field(default_factory=dict)
    output_paths: dict[str, dict[str, StorePath]] = field(default_factory=dict)

    async def add_tree(self, path: Path, name: str) -> StorePath:
        """``nix-store --add``: ingest ``path`` as a ``source`` store path called ``name``."""
        result = await ingest_path(path, self.blobs, self.directories)
        store_path = make_fixed_output_path(
            name, NixHash(HashAlgo.sha256, result.nar_sha256), recursive=True
        )
        self.nodes[store_path] = with_name(result.node, store_path.basename.encode())
        self.references[store_path] = frozenset()
        return store_path

    def closure(self, roots: set[StorePath]) -> dict[StorePath, Node]:
        """The nodes of ``roots`` and everything they reference, transitively."""
        todo, seen = list(roots), set()
        while todo:
            path = todo.pop()
            if path not in seen:
                seen.add(path)
                todo.extend(self.references[path])
        return {p: self.nodes[p] for p in seen}

    async def build(
        self, builder: BuildService, drv: Derivation, *, on_log: LogSink | None = None
    ) -> Build:
        """Build ``drv`` (its inputs already built) and record its outputs like a coordinator."""
        roots = {StorePath.from_absolute_path(p) for p in drv.input_sources}
        for drv_path, names in drv.input_derivations.items():
            roots |= set(self.output_paths[drv_path][n] for n in names)
        inputs = self.closure(roots)
        request = derivation_to_build_request(drv, dict(inputs.items()))
        build = await builder.build(request, on_log=on_log)
        references = output_references(drv, inputs, build)
        for i, output in enumerate(request.outputs):
            path = StorePath.from_absolute_path("/" + output)
            self.nodes[path] = with_name(build.outputs[i], path.basename.encode())
        for name, out in drv.outputs.items():
            self.references[StorePath.from_absolute_path(out.path)] = references[name]
        self.output_paths[str(drv.drv_path())] = {
            name: StorePath.from_absolute_path(out.path) for name, out in drv.outputs.items()
        }
        return build


async def read_output_file(store: Store, build: Build, name: bytes, output: int = 0) -> bytes:
    """The contents of the file ``name`` at the top of a (directory) output of ``build``."""
    root = build.outputs[output]
    assert isinstance(root, DirectoryNode)
    directory = await store.directories.get(root.digest)
    assert directory is not None
    node = next(n for n in directory.nodes() if n.name == name)
    assert isinstance(node, FileNode)
    data = await read_blob(store.blobs, node.digest)
    assert data is not None
    return data


def sh_derivation(
    name: str,
    script: str,
    busybox: StorePath,
    *,
    outputs: tuple[str, ...] = ("out",),
    env: Mapping[str, str] | None = None,
    fixed: tuple[str, str, str] | None = None,
    input_derivations: Mapping[str, tuple[str, ...]] | None = None,
    output_hashes: Mapping[str, bytes] | None = None,
) -> Derivation:
    """A derivation running ``busybox sh -c script`` with busybox as an input source.

    ``fixed`` is ``(outputHashMode, outputHashAlgo, outputHash)``;
    ``output_hashes`` maps input drv paths to their hash modulo (for
    dependants).
    """
    bb = f"{busybox.absolute}/bin/busybox"
    environment = {"name": name, "builder": bb, "system": SYSTEM, **(env or {})}
    outs = {o: Output("") for o in outputs}
    if fixed is not None:
        mode, algo, digest = fixed
        environment |= {"outputHashMode": mode, "outputHashAlgo": algo, "outputHash": digest}
        nix_hash = NixHash.parse(digest, HashAlgo.parse(algo))
        outs = {"out": Output.fixed(nix_hash, mode == "recursive")}
    else:
        environment["outputs"] = " ".join(outputs)
    drv = Derivation(
        outputs=outs,
        input_derivations=dict(input_derivations or {}),
        input_sources=(busybox.absolute,),
        system=SYSTEM,
        builder=bb,
        arguments=(b"sh", b"-c", script.encode()),
        environment={k: v.encode() for k, v in environment.items()} | {o: b"" for o in outs},
    )
    hashes = dict(output_hashes or {})
    return calculate_output_paths(drv, hashes.__getitem__)


def leftovers(builds: Path, idle: Sequence[StoreDir]) -> list[str]:
    """What a finished build left in ``builds`` (blocking): every path but the idle store
    directories and the shared root file systems, every name in those store directories that
    the builder did not create (an output, ...), and every file in a shared root but the /etc
    files and empty mountpoints."""
    stores = {os.fsdecode(s.path): s for s in idle}
    left = []
    for path in sorted(builds.iterdir()):
        if path.name.startswith("root-"):
            for dirpath, _, files in os.walk(path):
                for name in files:
                    file = Path(dirpath) / name
                    if file.parent != path / "etc" and file.lstat().st_size:
                        left.append(str(file))
            continue
        store = stores.get(str(path))
        if store is None:
            left.append(str(path))
            continue
        names = os.listdir(os.fsencode(path))
        left += [str(path / os.fsdecode(n)) for n in names if n not in store.entries]
    return left
