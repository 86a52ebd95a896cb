"""The PathInfoService conformance suite, run against every backend and wrapper.

``grpc-inprocess``: our adapter talking to our server through
``grpclib.testing.ChannelFor``; ``grpc-unix``: the same over a real unix
socket.  ``cache``: ``Cache(memory, memory)``; ``signing``: ``Signing(memory)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import anyio
import pytest
import pytest_asyncio
from grpclib.testing import ChannelFor

from clients.castore.model import B3Digest, FileNode, SymlinkNode
from clients.errors import InvalidRequest
from clients.store.grpc import GrpcPathInfoService
from clients.store.model import PathInfo
from clients.store.protocols import PathInfoService
from nixcompat.signing import SigningKey
from tests.store.pathinfo_helpers import make_info, rich_infos, serve_store_unix, store_path
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService
from tvixd.store.pathinfo.cache import Cache
from tvixd.store.pathinfo.memory import MemoryPathInfoService
from tvixd.store.pathinfo.signing import Signing
from tvixd.store.pathinfo.sqlite import SqlitePathInfoService
from tvixd.store.server import PathInfoServiceServicer

BACKENDS = ["memory", "sqlite", "grpc-inprocess", "grpc-unix", "cache", "signing"]
KEY = SigningKey.generate("conformance-1")


@pytest_asyncio.fixture(params=BACKENDS)
async def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[PathInfoService]:
    kind = request.param
    if kind == "memory":
        yield MemoryPathInfoService()
    elif kind == "sqlite":
        db = await SqlitePathInfoService.open(tmp_path_factory.mktemp("db") / "pathinfo.db")
        yield db
        await db.close()
    elif kind == "grpc-inprocess":
        async with ChannelFor([PathInfoServiceServicer(MemoryPathInfoService())]) as channel:
            yield GrpcPathInfoService(channel, target="in-process")
    elif kind == "grpc-unix":
        socket = tmp_path_factory.mktemp("sock") / "store.sock"
        async with serve_store_unix(
            socket, MemoryPathInfoService(), MemoryBlobService(), MemoryDirectoryService()
        ):
            client = GrpcPathInfoService.from_url(f"grpc+unix://{socket}")
            yield client
            await client.close()
    elif kind == "cache":
        yield Cache(MemoryPathInfoService(), MemoryPathInfoService())
    else:
        yield Signing(MemoryPathInfoService(), KEY)


def _same_apart_from_added_signatures(stored: PathInfo, sent: PathInfo) -> None:
    """A backend stores what was sent; a wrapper may only add signatures."""
    assert set(sent.signatures) <= set(stored.signatures)
    assert stored.signatures[: len(sent.signatures)] == sent.signatures
    assert dataclasses.replace(stored, signatures=sent.signatures) == sent


@pytest.mark.asyncio
async def test_absent_is_none(service: PathInfoService) -> None:
    assert await service.get(store_path("absent").digest) is None
    assert [info async for info in service.list()] == []


@pytest.mark.asyncio
@pytest.mark.parametrize("info", rich_infos(), ids=lambda i: i.store_path.name)
async def test_put_get_roundtrip(service: PathInfoService, info: PathInfo) -> None:
    stored = await service.put(info)
    _same_apart_from_added_signatures(stored, info)
    assert await service.get(info.digest) == stored
    assert [i async for i in service.list()] == [stored]


@pytest.mark.asyncio
async def test_put_replaces(service: PathInfoService) -> None:
    first = make_info("pkg", nar_size=10)
    second = make_info("pkg", nar_size=20, node=SymlinkNode(b"", b"target"))
    await service.put(first)
    stored = await service.put(second)
    assert await service.get(first.digest) == stored
    assert stored.nar_size == 20
    assert len([i async for i in service.list()]) == 1


@pytest.mark.asyncio
async def test_list_everything_once(service: PathInfoService) -> None:
    infos = [make_info(f"p{i}") for i in range(40)]
    async with anyio.create_task_group() as tg:  # concurrent puts
        for info in infos:
            tg.start_soon(service.put, info)
    listed = [i async for i in service.list()]
    assert sorted(i.store_path for i in listed) == sorted(i.store_path for i in infos)
    for info in infos:
        got = await service.get(info.digest)
        assert got is not None
        _same_apart_from_added_signatures(got, info)


@pytest.mark.asyncio
@pytest.mark.parametrize("length", [0, 19, 21, 32])
async def test_get_rejects_digest_length(service: PathInfoService, length: int) -> None:
    with pytest.raises(InvalidRequest, match=f"20-byte store path digest, got {length} bytes"):
        await service.get(b"\x01" * length)


def _invalid_cases() -> list[tuple[str, PathInfo, str]]:
    """(rule, a path info breaking only that rule, fragment the error must contain)."""
    ok = make_info("valid-1.0")
    other = store_path("other-1.0")
    return [
        (
            "name-mismatch",
            dataclasses.replace(ok, node=FileNode(other.basename.encode(), bytes(32), 1)),
            f"root node name '{other.basename}' does not match the store path",
        ),
        (
            "name-not-basename",
            dataclasses.replace(ok, node=FileNode(b"valid-1.0", bytes(32), 1)),
            "root node name b'valid-1.0' is not a store path basename",
        ),
        (
            "name-not-ascii",
            dataclasses.replace(ok, node=FileNode("é".encode(), bytes(32), 1)),
            "is not a store path basename",
        ),
        (
            "nar-sha256-short",
            dataclasses.replace(ok, nar_sha256=bytes(31)),
            "nar_sha256 has 31 bytes",
        ),
        ("nar-sha256-empty", dataclasses.replace(ok, nar_sha256=b""), "nar_sha256 has 0 bytes"),
        (
            "nar-size-overflow",
            dataclasses.replace(ok, nar_size=2**64),
            f"nar_size {2**64} is outside the uint64 range",
        ),
        ("nar-size-negative", dataclasses.replace(ok, nar_size=-1), "nar_size -1 is outside"),
        (
            "deriver-not-drv",
            dataclasses.replace(ok, deriver=store_path("hello")),
            f"deriver '{store_path('hello').basename}' does not end in .drv",
        ),
        (
            "file-digest-length",
            dataclasses.replace(ok, node=FileNode(ok.node.name, bytes(31), 1)),
            "file node",
        ),
        (
            "symlink-empty-target",
            dataclasses.replace(ok, node=SymlinkNode(ok.node.name, b"")),
            "has an empty target",
        ),
        (
            "symlink-nul-target",
            dataclasses.replace(ok, node=SymlinkNode(ok.node.name, b"a\0b")),
            "contains NUL",
        ),
    ]


INVALID = _invalid_cases()


@pytest.mark.asyncio
@pytest.mark.parametrize(("rule", "info", "fragment"), INVALID, ids=[c[0] for c in INVALID])
async def test_put_rejects_invalid(
    service: PathInfoService, rule: str, info: PathInfo, fragment: str
) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        await service.put(info)
    assert fragment in str(excinfo.value)
    assert info.store_path.basename in str(excinfo.value)
    assert await service.get(info.digest) is None
    assert [i async for i in service.list()] == []


@pytest.mark.asyncio
async def test_rejected_put_keeps_previous(service: PathInfoService) -> None:
    good = await service.put(make_info("keep-me"))
    bad = dataclasses.replace(good, nar_sha256=b"short")
    with pytest.raises(InvalidRequest, match="nar_sha256 has 5 bytes"):
        await service.put(bad)
    assert await service.get(good.digest) == good


@pytest.mark.asyncio
async def test_many_references(service: PathInfoService) -> None:
    refs = [store_path(f"ref-{i}") for i in range(500)]
    info = make_info("many-refs", references=refs, node=FileNode(b"", B3Digest.of(b"m"), 1))
    stored = await service.put(info)
    got = await service.get(info.digest)
    assert got is not None
    assert got.references == tuple(refs)  # order kept
    assert got == stored
