"""Ingestion (file system -> castore + NAR hash) and export, against the real Nix.

The reference for every byte is ``nix-store --dump`` / ``nix-store --add``;
the castore side is checked against castore_directories.json's trees.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from clients.castore.model import B3Digest, DirectoryNode, FileNode
from clients.store.ingest import export_node, import_path_as_store_path, ingest_path
from clients.store.nar import CastoreNarCalculator, render_nar
from nixcompat.nar import NarError
from nixcompat.narinfo import CaMethod
from nixcompat.storepath import StorePath
from tests.castore.helpers import directory_from_json
from tests.store.bridge_fixtures import (
    MiB,
    materialize,
    nix_add,
    nix_dump,
    node_from_json,
    rich_tree,
    stored,
)
from tests.vectors import entries, entry_id
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.blobs.objectstore import ObjectStoreBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService
from tvixd.castore.directories.sqlite import SqliteDirectoryService
from tvixd.store.pathinfo.memory import MemoryPathInfoService

pytestmark = pytest.mark.asyncio


@dataclass(frozen=True)
class Reference:
    """A tree on disk, its ``nix-store --dump`` and ``nix-store --add`` path."""

    path: Path
    nar: bytes
    store_path: str


TREES = ["rich", "single-file", "exec-file", "symlink-root", "empty-dir"]


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Reference]:
    base = tmp_path_factory.mktemp("ingest")
    rich_tree(base / "rich")
    (base / "single-file").write_bytes(b"just one file\n")
    (base / "exec-file").write_bytes(b"#!/bin/sh\n")
    (base / "exec-file").chmod(0o755)
    (base / "symlink-root").symlink_to("rich/hello.txt")
    (base / "empty-dir").mkdir()
    paths = [base / name for name in TREES]
    added = nix_add(paths)
    return {
        name: Reference(path, nix_dump(path), store_path)
        for name, path, store_path in zip(TREES, paths, added, strict=True)
    }


@pytest.mark.parametrize("tree", TREES)
async def test_ingest_nar_equals_nix_dump(references: dict[str, Reference], tree: str) -> None:
    ref = references[tree]
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    result = await ingest_path(ref.path, blobs, directories, name=b"root")
    assert result.node.name == b"root"
    assert result.nar_size == len(ref.nar)
    assert result.nar_sha256 == hashlib.sha256(ref.nar).digest()
    rendered = b"".join([chunk async for chunk in render_nar(result.node, blobs, directories)])
    assert rendered == ref.nar
    calculator = CastoreNarCalculator(blobs, directories)
    assert await calculator.calculate_nar(result.node) == (len(ref.nar), result.nar_sha256)


async def test_rich_tree_statistics(references: dict[str, Reference]) -> None:
    ref = references["rich"]
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    result = await ingest_path(ref.path, blobs, directories)
    on_disk = [p for p in ref.path.rglob("*") if p.is_file() and not p.is_symlink()]
    links = [p for p in ref.path.rglob("*") if p.is_symlink()]
    assert result.files == len(on_disk)
    assert result.file_bytes == sum(p.stat().st_size for p in on_disk)
    assert result.symlinks == len(links)
    assert result.blobs_uploaded == len({p.read_bytes() for p in on_disk})  # dup-1/dup-2 once
    assert any(p.stat().st_size > MiB for p in on_disk)
    again = await ingest_path(ref.path, blobs, directories)
    assert again.node == result.node
    assert (again.blobs_uploaded, again.bytes_uploaded) == (0, 0)  # small and large looked up


@pytest.mark.parametrize("tree", TREES)
async def test_store_path_equals_nix_store_add(references: dict[str, Reference], tree: str) -> None:
    ref = references[tree]
    blobs, directories, infos = (
        MemoryBlobService(),
        MemoryDirectoryService(),
        MemoryPathInfoService(),
    )
    info, result = await import_path_as_store_path(ref.path, None, blobs, directories, infos)
    assert info.store_path.absolute == ref.store_path
    assert info.node.name == info.store_path.basename.encode()
    assert info.references == ()
    assert info.ca is not None
    assert info.ca.method is CaMethod.recursive
    assert info.ca.hash.digest == hashlib.sha256(ref.nar).digest() == info.nar_sha256
    assert await infos.get(info.store_path.digest) == info
    assert result.nar_size == info.nar_size == len(ref.nar)


async def test_store_path_with_explicit_name(references: dict[str, Reference]) -> None:
    ref = references["single-file"]
    infos = MemoryPathInfoService()
    info, _ = await import_path_as_store_path(
        ref.path, "renamed", MemoryBlobService(), MemoryDirectoryService(), infos
    )
    expected = StorePath.from_absolute_path(ref.store_path)
    assert info.store_path.name == "renamed"
    assert info.store_path.digest != expected.digest  # the name is part of the hash
    with pytest.raises(ValueError, match="not a valid store path name"):
        await import_path_as_store_path(
            ref.path, "bad name", MemoryBlobService(), MemoryDirectoryService(), infos
        )


@pytest.mark.parametrize("tree", TREES)
async def test_export_roundtrip(
    references: dict[str, Reference], tree: str, tmp_path: Path
) -> None:
    ref = references[tree]
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    result = await ingest_path(ref.path, blobs, directories)
    dest = tmp_path / "out"
    await export_node(result.node, blobs, directories, dest)
    assert nix_dump(dest) == ref.nar


async def test_export_modes_and_links(references: dict[str, Reference], tmp_path: Path) -> None:
    ref = references["rich"]
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    result = await ingest_path(ref.path, blobs, directories)
    dest = tmp_path / "out"
    await export_node(result.node, blobs, directories, dest)
    assert (dest / "bin" / "run.sh").stat().st_mode & 0o111 == 0o111
    assert (dest / "bin" / "empty-exec").stat().st_mode & stat.S_IXUSR
    assert not (dest / "bin" / "group-x-only").stat().st_mode & stat.S_IXUSR
    assert not (dest / "hello.txt").stat().st_mode & 0o111
    assert os.readlink(dest / "link-dangling") == "does/not/exist"
    assert os.readlink(dest / "link-dir") == "nested"
    assert (dest / "link-dir").is_symlink()
    assert (dest / "empty-dir").is_dir()
    assert not any((dest / "empty-dir").iterdir())
    assert (dest / "big.bin").read_bytes() == (ref.path / "big.bin").read_bytes()


async def test_export_refuses_to_overwrite(
    references: dict[str, Reference], tmp_path: Path
) -> None:
    ref = references["single-file"]
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    result = await ingest_path(ref.path, blobs, directories)
    existing = tmp_path / "existing"
    existing.write_bytes(b"keep me")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "would-be-created")
    for dest in (existing, dangling):
        with pytest.raises(FileExistsError, match="refusing to overwrite"):
            await export_node(result.node, blobs, directories, dest)
    assert existing.read_bytes() == b"keep me"
    assert not (tmp_path / "would-be-created").exists()


async def test_export_missing_blob_is_reported(tmp_path: Path) -> None:
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    node = FileNode(b"", B3Digest.of(b"never stored"), 12)
    with pytest.raises(LookupError, match="missing"):
        await export_node(node, blobs, directories, tmp_path / "out")


async def test_special_files_are_rejected(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a-file").write_bytes(b"x")
    os.mkfifo(tree / "fifo")
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    with pytest.raises(NarError, match=r"fifo|unsupported file type"):
        await ingest_path(tree, blobs, directories)
    assert stored(directories) == 0


async def test_persistent_backends(references: dict[str, Reference], tmp_path: Path) -> None:
    ref = references["rich"]
    blobs = await ObjectStoreBlobService.open(tmp_path / "blobs")
    directories = await SqliteDirectoryService.open(tmp_path / "dirs.db")
    try:
        result = await ingest_path(ref.path, blobs, directories)
        rendered = b"".join([c async for c in render_nar(result.node, blobs, directories)])
        assert rendered == ref.nar
    finally:
        await directories.close()
        await blobs.close()


CASTORE_TREES = entries("castore_directories", kind="tree")


@pytest.mark.parametrize("vector", CASTORE_TREES, ids=entry_id)
async def test_castore_vector_trees(vector: dict[str, object], tmp_path: Path) -> None:
    materialize(vector["tree"], tmp_path / "tree")  # type: ignore[arg-type]
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    result = await ingest_path(tmp_path / "tree", blobs, directories)
    assert result.node == node_from_json(vector["root_node"])  # type: ignore[arg-type]
    for item in vector["directories"]:  # type: ignore[attr-defined]
        expected = directory_from_json(item["directory"])
        assert expected.digest().hex() == item["digest_hex"]
        assert await directories.get(expected.digest()) == expected
    if isinstance(result.node, DirectoryNode):
        stored = [d async for d in directories.get_recursive(result.node.digest)]
        assert {d.digest().hex() for d in stored} == {
            d["digest_hex"]
            for d in vector["directories"]  # type: ignore[attr-defined]
        }
    nar_vector = next(e for e in entries("nar") if e.get("id") == vector["id"])
    assert result.nar_sha256.hex() == nar_vector["nar_sha256_hex"]
    assert result.nar_size == nar_vector["nar_size"]


class _RewritingBlobs(MemoryBlobService):
    """A memory blob service that, asked about ``victim``'s blob, changes the file first."""

    def __init__(self, victim: Path, replace: bool) -> None:
        super().__init__()
        self.victim, self.replace = victim, replace

    async def has(self, digest: bytes) -> bool:
        await anyio.to_thread.run_sync(self._rewrite, digest)
        return await super().has(digest)

    def _rewrite(self, digest: bytes) -> None:
        data = bytearray(self.victim.read_bytes())
        if digest != B3Digest.of(data):
            return
        data[-1] ^= 0xFF
        if self.replace:  # a new inode under the same name (the old one kept: not reused)
            self.victim.rename(self.victim.with_name("old"))
            self.victim.write_bytes(bytes(data))
        else:  # the same inode, same size, other bytes
            with self.victim.open("r+b") as f:
                f.write(data)


@pytest.mark.parametrize(
    ("replace", "message"),
    [(False, "changed while being ingested"), (True, "was replaced while being ingested")],
)
async def test_large_file_changed_before_upload(
    tmp_path: Path, replace: bool, message: str
) -> None:
    """A large file is read again for its upload; if it changed meanwhile, ingestion fails."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(os.urandom(2 * MiB + 3))
    (tree / "small").write_bytes(b"small\n")
    blobs = _RewritingBlobs(tree / "big", replace)
    directories = MemoryDirectoryService()
    with pytest.raises(NarError, match=message):
        await ingest_path(tree, blobs, directories)
    assert stored(directories) == 0


async def test_many_small_files_into_persistent_backends(tmp_path: Path) -> None:
    """Hundreds of small files (grouped puts), duplicates and a few large ones, as Nix sees them."""
    rng = random.Random(3)
    tree = tmp_path / "tree"
    for d in range(12):
        (tree / f"dir-{d:02}").mkdir(parents=True)
        for f in range(40):
            size = rng.choice([0, 1, 200, 5000, 70_000])
            data = rng.randbytes(size) if f % 7 else b"shared contents\n"
            (tree / f"dir-{d:02}" / f"file-{f:02}").write_bytes(data)
    for i in range(3):
        (tree / f"large-{i}").write_bytes(rng.randbytes(MiB + 1 + i))
    on_disk = [p for p in tree.rglob("*") if p.is_file()]
    blobs = await ObjectStoreBlobService.open(tmp_path / "blobs")
    directories = await SqliteDirectoryService.open(tmp_path / "dirs.db")
    try:
        result = await ingest_path(tree, blobs, directories)
        rendered = b"".join([c async for c in render_nar(result.node, blobs, directories)])
        assert rendered == nix_dump(tree)
        assert result.blobs_uploaded == len({p.read_bytes() for p in on_disk})
        again = await ingest_path(tree, blobs, directories)
        assert (again.node, again.blobs_uploaded) == (result.node, 0)
    finally:
        await directories.close()
        await blobs.close()
