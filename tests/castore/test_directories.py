"""The DirectoryService conformance suite, run against every backend (see conftest.py)."""

from __future__ import annotations

import pytest

from clients.castore.model import B3Digest, Directory, DirectoryNode, FileNode, SymlinkNode
from clients.castore.protocols import DirectoryService
from clients.errors import InvalidRequest
from tests.castore.helpers import diamond, directory_from_json, file, subdir
from tests.vectors import entries, entry_id

ZERO = bytes(32)
LEAF = Directory(files=(file(b"a", b"x"),), symlinks=(SymlinkNode(b"b", b"a"),))


def _invalid_cases() -> list[tuple[str, Directory, str]]:
    """(rule, directory breaking only that rule, fragment the error must contain)."""
    f = file(b"f")
    return [
        ("unsorted", Directory(files=(file(b"b"), file(b"a"))), "not sorted"),
        ("duplicate-same-list", Directory(files=(f, f)), "duplicate name b'f' in files"),
        (
            "duplicate-across-lists",
            Directory(files=(f,), symlinks=(SymlinkNode(b"f", b"t"),)),
            "duplicate name b'f' in files and symlinks",
        ),
        ("name-dot", Directory(files=(file(b"."),)), "name b'.' is not allowed"),
        (
            "name-dotdot",
            Directory(symlinks=(SymlinkNode(b"..", b"t"),)),
            "name b'..' is not allowed",
        ),
        ("name-slash", Directory(files=(file(b"a/b"),)), "contains '/'"),
        ("name-nul", Directory(files=(file(b"a\0b"),)), "contains NUL"),
        ("name-empty", Directory(files=(file(b""),)), "name b'' is empty"),
        ("name-too-long", Directory(files=(file(b"x" * 256),)), "more than 255"),
        (
            "digest-length",
            Directory(files=(FileNode(b"f", b"\x01" * 31, 0),)),
            "digest of 31 bytes, expected 32",
        ),
        (
            "dir-digest-length",
            Directory(directories=(DirectoryNode(b"d", b"\x01" * 33, 0),)),
            "digest of 33 bytes, expected 32",
        ),
        ("symlink-empty-target", Directory(symlinks=(SymlinkNode(b"l", b""),)), "empty target"),
        ("symlink-nul-target", Directory(symlinks=(SymlinkNode(b"l", b"a\0"),)), "contains NUL"),
        (
            "wrong-child-size",
            Directory(directories=(DirectoryNode(b"d", LEAF.digest(), LEAF.size() + 1),)),
            f"has size {LEAF.size() + 1}, but directory",
        ),
        (
            "unknown-child",
            Directory(directories=(DirectoryNode(b"d", ZERO, 0),)),
            "neither sent earlier in the stream nor is stored",
        ),
        (
            "size-overflow",
            Directory(
                directories=(
                    DirectoryNode(b"a", LEAF.digest(), 2**64 - 1),
                    DirectoryNode(b"b", LEAF.digest(), 2),
                )
            ),
            "overflows uint64",
        ),
    ]


INVALID = _invalid_cases()


async def _stored(service: DirectoryService, *directories: Directory) -> list[bool]:
    return [await service.get(d.digest()) is not None for d in directories]


async def _put_stream(service: DirectoryService, *directories: Directory) -> B3Digest:
    """Send ``directories`` as one put stream and close it."""
    async with service.put_multiple() as putter:
        for directory in directories:
            await putter.put(directory)
        return await putter.close()


async def _abandon_stream(service: DirectoryService, *directories: Directory) -> None:
    """Send ``directories`` as one put stream, then fail inside the block instead of closing."""
    async with service.put_multiple() as putter:
        for directory in directories:
            await putter.put(directory)
        raise RuntimeError("changed my mind")


@pytest.mark.asyncio
async def test_put_get_leaf(directory_service: DirectoryService) -> None:
    digest = await directory_service.put(LEAF)
    assert digest == LEAF.digest()
    assert await directory_service.get(digest) == LEAF
    empty = Directory()
    assert (await directory_service.put(empty)).hex() == empty.digest().hex()
    assert await directory_service.get(empty.digest()) == empty


@pytest.mark.asyncio
async def test_absent_is_none_and_empty_stream(directory_service: DirectoryService) -> None:
    assert await directory_service.get(ZERO) is None
    assert [d async for d in directory_service.get_recursive(ZERO)] == []


@pytest.mark.asyncio
async def test_wrong_digest_length_is_invalid(directory_service: DirectoryService) -> None:
    with pytest.raises(InvalidRequest, match="32"):
        await directory_service.get(b"\x00" * 20)
    with pytest.raises(InvalidRequest, match="32"):
        async for _ in directory_service.get_recursive(b"\x00" * 33):
            pass


@pytest.mark.asyncio
async def test_put_requires_children_present(directory_service: DirectoryService) -> None:
    parent = Directory(directories=(subdir(b"leaf", LEAF),))
    with pytest.raises(InvalidRequest, match="neither sent earlier"):
        await directory_service.put(parent)
    assert await _stored(directory_service, parent) == [False]
    await directory_service.put(LEAF)
    assert await directory_service.put(parent) == parent.digest()
    assert [d async for d in directory_service.get_recursive(parent.digest())] == [parent, LEAF]


@pytest.mark.asyncio
@pytest.mark.parametrize(("rule", "directory", "fragment"), INVALID, ids=[c[0] for c in INVALID])
async def test_each_rule_rejected_and_nothing_stored(
    directory_service: DirectoryService, rule: str, directory: Directory, fragment: str
) -> None:
    with pytest.raises(InvalidRequest) as single:
        await directory_service.put(directory)
    # alone, the wrong-size child is not even known; after LEAF (below) its size is checked
    alone = "neither sent earlier" if rule == "wrong-child-size" else fragment
    assert alone in str(single.value), rule
    # The same directory at the end of a stream that starts valid: the whole stream is rejected.
    with pytest.raises(InvalidRequest) as stream:
        await _put_stream(directory_service, LEAF, directory)
    assert fragment in str(stream.value), rule
    assert await _stored(directory_service, LEAF, directory) == [False, False]


@pytest.mark.asyncio
async def test_recursive_get_is_breadth_first_each_once(
    directory_service: DirectoryService,
) -> None:
    leaf, shared, left, right, root = diamond()
    async with directory_service.put_multiple() as putter:
        for directory in (leaf, shared, left, right, root):
            await putter.put(directory)
        assert await putter.close() == root.digest()
    got = [d async for d in directory_service.get_recursive(root.digest())]
    assert got == [root, left, right, shared, leaf]
    assert [d async for d in directory_service.get_recursive(shared.digest())] == [shared, leaf]
    assert await directory_service.get(left.digest()) == left


@pytest.mark.asyncio
async def test_put_stream_accepts_duplicates_and_stored_children(
    directory_service: DirectoryService,
) -> None:
    leaf, shared, left, right, root = diamond()
    await directory_service.put(leaf)
    async with directory_service.put_multiple() as putter:
        for directory in (shared, shared, left, right, root):
            await putter.put(directory)
        assert await putter.close() == root.digest()
    assert len([d async for d in directory_service.get_recursive(root.digest())]) == 5


@pytest.mark.asyncio
async def test_put_stream_not_closed_stores_nothing(directory_service: DirectoryService) -> None:
    leaf, shared, *_ = diamond()
    async with directory_service.put_multiple() as putter:
        await putter.put(leaf)
        await putter.put(shared)
    with pytest.raises(RuntimeError, match="changed my mind"):
        await _abandon_stream(directory_service, leaf)
    assert await _stored(directory_service, leaf, shared) == [False, False]


@pytest.mark.asyncio
async def test_put_stream_rules_as_a_whole(directory_service: DirectoryService) -> None:
    with pytest.raises(InvalidRequest, match="no directories"):
        await _put_stream(directory_service)
    leaf, shared, *_ = diamond()
    other = Directory(files=(file(b"unrelated"),))
    with pytest.raises(InvalidRequest, match="not reachable from the root"):
        await _put_stream(directory_service, other, leaf, shared)
    assert await _stored(directory_service, other, leaf, shared) == [False, False, False]


@pytest.mark.asyncio
async def test_root_first_sent_last_is_rejected(directory_service: DirectoryService) -> None:
    leaf, shared, *_ = diamond()
    with pytest.raises(InvalidRequest, match="neither sent earlier"):
        await _put_stream(directory_service, shared, leaf)
    assert await _stored(directory_service, leaf, shared) == [False, False]


@pytest.mark.asyncio
async def test_upstream_head_size_variant_is_rejected(directory_service: DirectoryService) -> None:
    """Upstream HEAD's double-counted child sizes are recognised as wrong, not emulated."""
    by_id = {
        e["id"]: directory_from_json(e["directory"])
        for e in entries("castore_directories", kind="directory")
    }
    await directory_service.put(by_id["DIRECTORY_WITH_KEEP"])
    with pytest.raises(InvalidRequest, match="has size 2, but directory"):
        await directory_service.put(by_id["DIRECTORY_COMPLICATED@upstream-HEAD-size"])
    assert await directory_service.put(by_id["DIRECTORY_COMPLICATED"]) == B3Digest(
        by_id["DIRECTORY_COMPLICATED"].digest()
    )


TREES = [e for e in entries("castore_directories", kind="tree") if e["directories"]]


@pytest.mark.asyncio
@pytest.mark.parametrize("entry", TREES, ids=[entry_id(e) for e in TREES])
async def test_tree_vectors_round_trip(
    directory_service: DirectoryService, entry: dict[str, object]
) -> None:
    specs = entry["directories"]
    assert isinstance(specs, list)
    directories = [directory_from_json(spec["directory"]) for spec in specs]
    for spec, directory in zip(specs, directories, strict=True):
        assert directory.digest().hex() == spec["digest_hex"]
        assert directory.size() == spec["size"]
    async with directory_service.put_multiple() as putter:
        for directory in directories:
            await putter.put(directory)
        root = await putter.close()
    root_node = entry["root_node"]
    assert isinstance(root_node, dict)
    assert root.hex() == root_node["digest"]
    walked = [d async for d in directory_service.get_recursive(root)]
    assert walked[0].digest() == root
    assert {d.digest() for d in walked} == {d.digest() for d in directories}
    assert len(walked) == len({d.digest() for d in directories})


@pytest.mark.asyncio
async def test_early_rejection_in_a_long_stream(directory_service: DirectoryService) -> None:
    bad = Directory(files=(file(b".."),))
    # ~600 KB: more than HTTP/2 flow control lets a client send to a server that stopped reading
    fillers = [Directory(files=(file(b"n" * 250, str(i).encode()),)) for i in range(2000)]
    with pytest.raises(InvalidRequest, match=r"b'\.\.' is not allowed"):
        await _put_stream(directory_service, bad, *fillers)
    assert await _stored(directory_service, bad, fillers[0], fillers[-1]) == [False, False, False]
