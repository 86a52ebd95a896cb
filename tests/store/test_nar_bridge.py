"""The NAR bridge: rendering castore trees as NARs and importing NARs, byte-exact with Nix.

References: nar.json / castore_directories.json (both from real Nix 2.8 and
an independent reference), ``nix-store --dump`` of a rich tree, and
hypothesis round trips.  Bad input (the vectors' malformed NARs, truncations,
malicious names) must raise ``NarError`` and leave the store untouched.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.castore.model import B3Digest, Directory, DirectoryNode, FileNode, SymlinkNode
from clients.castore.streams import put_bytes
from clients.errors import InvalidRequest, NotFound, StorageError
from clients.store.ingest import export_node
from clients.store.nar import CastoreNarCalculator, import_nar, import_nar_file, render_nar
from nixcompat.nar import NarDirectory, NarError, NarNode, NarRegular, NarSymlink, nar_bytes
from tests.store.bridge_fixtures import (
    listdir,
    malicious_nars,
    nix_dump,
    node_from_json,
    rich_tree,
    stored,
)
from tests.vectors import entries, entry_id
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService
from tvixd.store.pathinfo.memory import MemoryPathInfoService

NAR_TREES = [e for e in entries("nar") if "tree" in e and e["nar_b64"] is not None]
INVALID = [e for e in entries("nar") if "tree" not in e]
CASTORE = {e["id"]: e for e in entries("castore_directories", kind="tree")}


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class Reader:
    """An object with ``async read(n)`` over bytes."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    async def read(self, n: int) -> bytes:
        out = self._data[self._offset : self._offset + n]
        self._offset += len(out)
        return out


async def render(node: Any, blobs: Any, directories: Any) -> bytes:
    return b"".join([chunk async for chunk in render_nar(node, blobs, directories)])


@pytest.mark.asyncio
@pytest.mark.parametrize("vector", NAR_TREES, ids=entry_id)
async def test_vector_nars_round_trip(vector: dict[str, Any], tmp_path: Path) -> None:
    nar = base64.b64decode(vector["nar_b64"])
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    result = await import_nar(chunked(nar, 7), blobs, directories, tmp_dir=tmp_path)
    assert result.nar_size == vector["nar_size"] == len(nar)
    assert result.nar_sha256.hex() == vector["nar_sha256_hex"]
    assert result.node == node_from_json(CASTORE[vector["id"]]["root_node"])
    assert await render(result.node, blobs, directories) == nar
    calculator = CastoreNarCalculator(blobs, directories)
    assert await calculator.calculate_nar(result.node) == (len(nar), result.nar_sha256)
    assert listdir(tmp_path) == []  # the spooled NAR is gone


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    path = rich_tree(tmp_path_factory.mktemp("bridge") / "rich")
    return path, nix_dump(path)


@pytest.mark.asyncio
async def test_import_nix_dump_export_dump_again(rich: tuple[Path, bytes], tmp_path: Path) -> None:
    _, nar = rich
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    result = await import_nar(Reader(nar), blobs, directories)
    assert result.nar_sha256 == hashlib.sha256(nar).digest()
    assert result.node.name == b""
    assert await render(result.node, blobs, directories) == nar
    await export_node(result.node, blobs, directories, tmp_path / "out")
    assert nix_dump(tmp_path / "out") == nar
    again = await import_nar(chunked(nar, 1 << 20), blobs, directories)
    assert again.node == result.node
    assert again.blobs_uploaded == 0  # everything deduplicated


@pytest.mark.asyncio
async def test_import_from_file_checks_expected_hash(
    rich: tuple[Path, bytes], tmp_path: Path
) -> None:
    _, nar = rich
    (tmp_path / "x.nar").write_bytes(nar)
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    with pytest.raises(InvalidRequest, match="expected"):
        await import_nar_file(tmp_path / "x.nar", blobs, directories, expected_nar_sha256=bytes(32))
    with pytest.raises(InvalidRequest, match="bytes, expected"):
        await import_nar_file(
            tmp_path / "x.nar", blobs, directories, expected_nar_size=len(nar) + 1
        )
    assert stored(blobs, directories) == 0
    result = await import_nar_file(
        tmp_path / "x.nar",
        blobs,
        directories,
        expected_nar_sha256=hashlib.sha256(nar).digest(),
        expected_nar_size=len(nar),
    )
    assert result.nar_size == len(nar)


def truncations(nar: bytes, count: int = 12) -> list[tuple[str, bytes]]:
    step = max(1, len(nar) // count)
    return [(f"truncated-at-{n}", nar[:n]) for n in range(0, len(nar), step)]


def bad_nars() -> list[tuple[str, bytes]]:
    vectors = [(e["id"], base64.b64decode(e["nar_b64"])) for e in INVALID]
    complicated = base64.b64decode(
        next(e for e in NAR_TREES if e["id"] == "complicated")["nar_b64"]
    )
    return vectors + malicious_nars() + truncations(complicated)


@pytest.mark.asyncio
@pytest.mark.parametrize(("name", "nar"), bad_nars(), ids=[n for n, _ in bad_nars()])
async def test_bad_nars_are_rejected_and_nothing_is_stored(
    name: str, nar: bytes, tmp_path: Path
) -> None:
    blobs, directories, infos = (
        MemoryBlobService(),
        MemoryDirectoryService(),
        MemoryPathInfoService(),
    )
    with pytest.raises(NarError) as caught:
        await import_nar(chunked(nar, 5), blobs, directories, tmp_dir=tmp_path)
    assert "offset" in str(caught.value)
    assert stored(blobs, directories, infos) == 0
    assert listdir(tmp_path) == []


@pytest.mark.asyncio
async def test_render_reports_missing_and_corrupt_contents() -> None:
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    present = await put_bytes(blobs, b"present")
    missing = B3Digest.of(b"absent")
    leaf = Directory(files=(FileNode(b"gone", missing, 6),))
    root = Directory(
        directories=(DirectoryNode(b"sub", leaf.digest(), leaf.size()),),
        files=(FileNode(b"ok", present, 7),),
    )
    await directories.put(leaf)
    await directories.put(root)
    with pytest.raises(NotFound, match=r"/sub/gone"):
        await render(DirectoryNode(b"", root.digest(), root.size()), blobs, directories)
    wrong_size = FileNode(b"", present, 9)
    with pytest.raises(StorageError, match="does not have the 9 bytes"):
        await render(wrong_size, blobs, directories)
    with pytest.raises(NotFound, match="directory"):
        await render(DirectoryNode(b"", B3Digest.of(b"no dir"), 1), blobs, directories)
    with pytest.raises(InvalidRequest, match="empty target"):
        await render(SymlinkNode(b"", b""), blobs, directories)


@st.composite
def nar_trees(draw: st.DrawFn, depth: int = 0) -> NarNode:
    kinds = ["regular", "symlink"] + (["directory"] if depth < 3 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "regular":
        data = draw(st.binary(max_size=300))
        return NarRegular.from_bytes(data, executable=draw(st.booleans()))
    if kind == "symlink":
        return NarSymlink(draw(st.binary(min_size=1, max_size=40).filter(lambda t: b"\0" not in t)))
    names = draw(
        st.lists(
            st.binary(min_size=1, max_size=12).filter(
                lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
            ),
            max_size=5,
            unique=True,
        )
    )
    return NarDirectory.of({name: draw(nar_trees(depth + 1)) for name in names})


@pytest.mark.asyncio
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=nar_trees())
async def test_round_trip_property(tree: NarNode) -> None:
    nar = nar_bytes(tree)
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    result = await import_nar(chunked(nar, 64), blobs, directories)
    assert result.nar_sha256 == hashlib.sha256(nar).digest()
    assert await render(result.node, blobs, directories) == nar
