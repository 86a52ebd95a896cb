"""The NAR memo: single-file NARs byte-exact with Nix, the LRU bound, the calculator's use of it."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from clients.castore.model import B3Digest, FileNode, SymlinkNode
from clients.errors import NotFound
from clients.store.nar import CastoreNarCalculator, NarMemo, file_nar, import_nar
from tests.conftest import require_tool
from tests.store.bridge_fixtures import nix_dump, rich_tree
from tests.store.test_nar_bridge import Reader
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService

CONTENTS = [b"", b"x", b"dummy output /nix/store/abc-node\n", bytes(range(256)) * 9]


def test_file_nar_matches_nix_store_dump(tmp_path: Path) -> None:
    nix_store = require_tool("nix-store")
    cases = [(data, executable) for data in CONTENTS for executable in (False, True)]
    for i, (data, executable) in enumerate(cases):
        path = tmp_path / f"f{i}"
        path.write_bytes(data)
        os.chmod(path, 0o755 if executable else 0o644)
        nar = subprocess.run(
            [nix_store, "--dump", str(path)], check=True, capture_output=True
        ).stdout
        assert file_nar(data, executable) == (len(nar), hashlib.sha256(nar).digest()), i


def test_memo_ignores_names_and_is_bounded() -> None:
    memo = NarMemo(capacity=2)
    nodes = [FileNode(b"a", B3Digest.of(data), len(data)) for data in CONTENTS[:3]]
    for node, data in zip(nodes, CONTENTS, strict=False):
        memo.put_file(node, data)
    assert len(memo) == 2
    assert memo.get(nodes[0]) is None  # the least recently used went first
    renamed = FileNode(b"other", nodes[2].digest, nodes[2].size)
    assert memo.get(renamed) == file_nar(CONTENTS[2])
    executable = FileNode(b"a", nodes[2].digest, nodes[2].size, executable=True)
    assert memo.get(executable) is None  # another NAR: not the same entry
    memo.put(SymlinkNode(b"s", b"target"), 1, b"x" * 32)
    assert memo.get(SymlinkNode(b"s", b"target")) is None  # symlinks are not memoised
    with pytest.raises(ValueError, match="3 bytes, the contents 1"):
        memo.put_file(FileNode(b"a", nodes[1].digest, 3), b"x")
    with pytest.raises(ValueError, match="capacity"):
        NarMemo(capacity=0)


@pytest.fixture(scope="module")
def rich_nar(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return nix_dump(rich_tree(tmp_path_factory.mktemp("memo") / "rich"))


@pytest.mark.asyncio
async def test_calculator_fills_and_answers_from_the_memo(rich_nar: bytes) -> None:
    nar = rich_nar
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    node = (await import_nar(Reader(nar), blobs, directories)).node
    expected = (len(nar), hashlib.sha256(nar).digest())
    memo = NarMemo()
    calculator = CastoreNarCalculator(blobs, directories, memo)
    assert await calculator.calculate_nar(node) == expected
    assert memo.get(node) == expected
    # answered from the memo: an empty castore would have raised NotFound
    empty = CastoreNarCalculator(MemoryBlobService(), MemoryDirectoryService(), memo)
    assert await empty.calculate_nar(node) == expected
    with pytest.raises(NotFound):
        await CastoreNarCalculator(MemoryBlobService(), MemoryDirectoryService()).calculate_nar(
            node
        )
