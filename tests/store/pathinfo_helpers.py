"""Test data and plumbing for the path-info suites.

* :func:`make_info` — a valid path info with every field settable;
* :func:`ingest_tree` — a declarative tree (vectors' form) put into a castore;
* :class:`ReferenceNarCalculator` — a ``NarCalculator`` built the obvious way
  (castore -> ``nixcompat.nar`` tree -> ``nar_hash_node``), independent of
  the production one;
* :func:`serve_store_unix` — our castore + path-info gRPC server on a socket.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from grpclib.server import Server

from clients.castore.model import B3Digest, Directory, DirectoryNode, FileNode, Node, SymlinkNode
from clients.castore.protocols import BlobService, DirectoryService
from clients.castore.streams import put_bytes, read_blob
from clients.errors import NotFound
from clients.store.model import PathInfo, with_name
from clients.store.protocols import NarCalculator, PathInfoService
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.nar import NarDirectory, NarRegular, NarSymlink, nar_hash_node
from nixcompat.nar.model import NarNode
from nixcompat.narinfo import CaMethod, ContentAddress
from nixcompat.signing import Signature
from nixcompat.storepath import StorePath
from tests.grpcserver import closing_connections
from tvixd.castore.server import castore_servicers
from tvixd.store.server import PathInfoServiceServicer


def store_path(name: str, seed: str | None = None) -> StorePath:
    """A store path called ``name`` with a digest derived from ``seed`` (default: the name)."""
    return StorePath(hashlib.sha1((seed or name).encode()).digest(), name)


def make_info(
    name: str = "hello-2.12",
    *,
    node: Node | None = None,
    references: Iterable[StorePath] = (),
    nar_size: int = 1234,
    nar_sha256: bytes | None = None,
    signatures: Iterable[Signature] = (),
    deriver: StorePath | None = None,
    ca: ContentAddress | None = None,
    seed: str | None = None,
) -> PathInfo:
    """A valid path info for ``name`` (a file node unless ``node`` is given; renamed to fit)."""
    path = store_path(name, seed)
    root = node if node is not None else FileNode(b"", B3Digest.of(name.encode()), 42)
    return PathInfo(
        store_path=path,
        node=with_name(root, path.basename.encode()),
        references=tuple(references),
        nar_size=nar_size,
        nar_sha256=nar_sha256 if nar_sha256 is not None else hashlib.sha256(name.encode()).digest(),
        signatures=tuple(signatures),
        deriver=deriver,
        ca=ca,
    )


def rich_infos() -> list[PathInfo]:
    """Path infos exercising every field: node kinds, references, deriver, CA kinds, signatures."""
    dep = store_path("dep-1.0")
    drv = store_path("hello-2.12.drv")
    sig = Signature("cache.example.com-1", bytes(range(64)))
    infos = [
        make_info("file-only"),
        make_info("exec", node=FileNode(b"", B3Digest.of(b"x"), 1, executable=True)),
        make_info("dir", node=DirectoryNode(b"", B3Digest.of(b"d"), 7), references=[dep]),
        make_info("link", node=SymlinkNode(b"", b"/nix/store/elsewhere")),
        make_info(
            "everything",
            references=[dep, store_path("everything")],  # a self reference
            signatures=[sig, Signature("other-1", bytes(64))],
            deriver=drv,
        ),
    ]
    for index, (method, algo) in enumerate(
        (m, a)
        for m in CaMethod
        for a in HashAlgo
        if not (m is CaMethod.text and a is not HashAlgo.sha256)
    ):
        digest = hashlib.new(algo.value, str(index).encode()).digest()
        infos.append(
            make_info(
                f"ca-{method.value}-{algo.value}", ca=ContentAddress(method, NixHash(algo, digest))
            )
        )
    return infos


def _tree_contents(spec: dict[str, Any]) -> bytes:
    if "contents_b64" in spec:
        return base64.b64decode(spec["contents_b64"])
    return str(spec["contents"]).encode()


async def ingest_tree(
    spec: dict[str, Any], blobs: BlobService, directories: DirectoryService
) -> Node:
    """Put a vectors' declarative tree into the castore; its root node (with an empty name)."""
    collected: list[Directory] = []

    async def visit(name: bytes, node: dict[str, Any]) -> Node:
        if node["type"] == "regular":
            data = _tree_contents(node)
            digest = await put_bytes(blobs, data)
            return FileNode(name, digest, len(data), bool(node["executable"]))
        if node["type"] == "symlink":
            return SymlinkNode(name, str(node["target"]).encode())
        children = [await visit(n.encode(), child) for n, child in node["entries"].items()]
        directory = Directory.from_nodes(children)
        collected.append(directory)
        return DirectoryNode(name, directory.digest(), directory.size())

    root = await visit(b"", spec)
    if collected:
        async with directories.put_multiple() as putter:
            for directory in collected:  # children are visited (and appended) before parents
                await putter.put(directory)
            await putter.close()
    return root


class ReferenceNarCalculator:
    """``NarCalculator`` the obvious way: load the tree into memory, hash it with ``nixcompat.nar``."""

    def __init__(self, blobs: BlobService, directories: DirectoryService) -> None:
        self.blobs = blobs
        self.directories = directories

    async def _load(self, node: Node) -> NarNode:
        if isinstance(node, SymlinkNode):
            return NarSymlink(node.target)
        if isinstance(node, FileNode):
            data = await read_blob(self.blobs, node.digest)
            if data is None:
                raise NotFound(f"blob {node.digest.hex()} not found")
            return NarRegular.from_bytes(data, executable=node.executable)
        directory = await self.directories.get(node.digest)
        if directory is None:
            raise NotFound(f"directory {node.digest.hex()} not found")
        return NarDirectory(tuple([(n.name, await self._load(n)) for n in directory.nodes()]))

    async def calculate_nar(self, node: Node) -> tuple[int, bytes]:
        digest, size = nar_hash_node(await self._load(node))
        return size, digest


@asynccontextmanager
async def serve_store_unix(
    path: Path,
    path_infos: PathInfoService,
    blobs: BlobService,
    directories: DirectoryService,
    calculator: NarCalculator | None = None,
) -> AsyncIterator[Server]:
    """Our castore and path-info gRPC servers on a unix socket for the duration of the block."""
    server = Server(
        [*castore_servicers(blobs, directories), PathInfoServiceServicer(path_infos, calculator)]
    )
    async with closing_connections(server):
        await server.start(path=str(path))
        try:
            yield server
        finally:
            server.close()
            await server.wait_closed()
