"""What is particular to each backend and wrapper: SQLite persistence and corruption, the
cache's read-through (and what it does not do), the signing wrapper's signatures."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from clients.castore.model import Directory
from clients.errors import InvalidRequest, StorageError
from clients.store import wire
from clients.store.model import PathInfo
from nixcompat.narinfo import NarInfo
from nixcompat.signing import Signature, SigningKey, VerifyingKey
from tests.store.pathinfo_helpers import make_info, rich_infos, store_path
from tests.vectors import entries, entry_id
from tvixd.castore.directories.sqlite import SqliteDirectoryService
from tvixd.store.pathinfo import sqlite as sqlite_backend
from tvixd.store.pathinfo.cache import Cache
from tvixd.store.pathinfo.many import BatchedGet, BatchedPut, get_many, put_many
from tvixd.store.pathinfo.memory import MemoryPathInfoService
from tvixd.store.pathinfo.signing import Signing
from tvixd.store.pathinfo.sqlite import SqlitePathInfoService

# --- sqlite -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sqlite_persists_across_reopen(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "pathinfo.db"
    infos = rich_infos()
    service = await SqlitePathInfoService.open(db)
    for info in infos:
        await service.put(info)
    await service.close()
    await service.close()  # idempotent
    with pytest.raises(StorageError, match="is closed"):
        await service.get(infos[0].digest)

    reopened = await SqlitePathInfoService.from_url(f"sqlite://{db}")
    try:
        for info in infos:
            assert await reopened.get(info.digest) == info
        assert {i.store_path async for i in reopened.list()} == {i.store_path for i in infos}
    finally:
        await reopened.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("count", [0, 1, 8, 9, 10, 27])
async def test_sqlite_list_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    monkeypatch.setattr(sqlite_backend, "LIST_PAGE_SIZE", 3)
    service = await SqlitePathInfoService.open(tmp_path / "p.db")
    try:
        infos = [make_info(f"p{i}") for i in range(count)]
        for info in infos:
            await service.put(info)
        listed = [i.digest async for i in service.list()]
        assert listed == sorted(i.digest for i in infos)
    finally:
        await service.close()


def _raw(db: Path, sql: str, *args: object) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_sqlite_detects_corruption(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    service = await SqlitePathInfoService.open(db)
    good, other = make_info("good"), make_info("other")
    try:
        await service.put(good)
        await service.put(other)
        _raw(db, "UPDATE path_infos_v1 SET data = ? WHERE digest = ?", b"\x0a", good.digest)
        with pytest.raises(
            StorageError, match=f"path info {good.store_path.hash_part} .* is corrupt"
        ):
            await service.get(good.digest)
        with pytest.raises(StorageError, match="is corrupt"):
            _ = [i async for i in service.list()]
        # valid bytes under the wrong key
        _raw(
            db,
            "UPDATE path_infos_v1 SET data = ? WHERE digest = ?",
            wire.encode_path_info(other),
            good.digest,
        )
        with pytest.raises(StorageError, match=f"it is for {other.store_path.basename}"):
            await service.get(good.digest)
    finally:
        await service.close()


@pytest.mark.asyncio
async def test_sqlite_shares_a_file_with_directories(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    directories = await SqliteDirectoryService.open(db)
    path_infos = await SqlitePathInfoService.open(db)
    try:
        root = await directories.put(Directory())
        info = await path_infos.put(make_info("shared"))
        assert await directories.get(root) == Directory()
        assert await path_infos.get(info.digest) == info
    finally:
        await path_infos.close()
        await directories.close()


@pytest.mark.asyncio
async def test_sqlite_rejected_put_stores_nothing(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    service = await SqlitePathInfoService.open(db)
    try:
        bad = make_info("bad", nar_sha256=b"x")
        with pytest.raises(InvalidRequest):
            await service.put(bad)
    finally:
        await service.close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*) FROM path_infos_v1").fetchone() == (0,)
    finally:
        conn.close()


# --- cache --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_cache_reads_through_and_fills_near() -> None:
    near, far = MemoryPathInfoService(), MemoryPathInfoService()
    cache = Cache(near, far)
    info = await far.put(make_info("remote"))
    assert await near.get(info.digest) is None
    assert await cache.get(info.digest) == info
    assert await near.get(info.digest) == info  # filled
    await far.put(make_info("remote", nar_size=99))  # far changes: near keeps what it saw
    cached = await cache.get(info.digest)
    assert cached is not None
    assert cached.nar_size == info.nar_size


@pytest.mark.asyncio
async def test_cache_does_not_remember_misses() -> None:
    near, far = MemoryPathInfoService(), MemoryPathInfoService()
    cache = Cache(near, far)
    info = make_info("later")
    assert await cache.get(info.digest) is None
    await far.put(info)
    assert await cache.get(info.digest) == info


@pytest.mark.asyncio
async def test_cache_writes_and_lists_near_only() -> None:
    near, far = MemoryPathInfoService(), MemoryPathInfoService()
    cache = Cache(near, far)
    await far.put(make_info("only-far"))
    local = await cache.put(make_info("local"))
    assert await far.get(local.digest) is None
    assert await near.get(local.digest) == local
    assert [i async for i in cache.list()] == [local]


@pytest.mark.asyncio
async def test_cache_closes_both(tmp_path: Path) -> None:
    near = await SqlitePathInfoService.open(tmp_path / "near.db")
    far = await SqlitePathInfoService.open(tmp_path / "far.db")
    await Cache(near, far).close()
    for service in (near, far):
        with pytest.raises(StorageError, match="is closed"):
            await service.get(make_info("x").digest)


# --- signing ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_signing_adds_a_verifying_signature() -> None:
    key = SigningKey.generate("test-cache-1")
    inner = MemoryPathInfoService()
    signing = Signing(inner, key)
    existing = Signature("someone-else-1", bytes(64))
    info = make_info("signed", references=[store_path("dep")], signatures=[existing])
    stored = await signing.put(info)
    assert stored.signatures[0] == existing  # kept, first
    assert len(stored.signatures) == 2
    ours = stored.signatures[1]
    assert ours.name == "test-cache-1"
    assert key.to_public().verify(info.fingerprint(), ours)
    assert not VerifyingKey("test-cache-1", SigningKey.generate("x").public).verify(
        info.fingerprint(), ours
    )
    assert await inner.get(info.digest) == stored
    assert await signing.get(info.digest) == stored
    # putting the signed info again adds nothing
    assert await signing.put(stored) == stored
    assert (await signing.put(info)).signatures == stored.signatures


@pytest.mark.asyncio
async def test_signing_refuses_unfingerprintable() -> None:
    signing = Signing(MemoryPathInfoService(), SigningKey.generate("k-1"))
    with pytest.raises(InvalidRequest, match="its NAR size is 0"):
        await signing.put(make_info("zero", nar_size=0))
    assert [i async for i in signing.list()] == []


KEYS = {e["secret_key"].split(":")[0]: e["secret_key"] for e in entries("narinfo", kind="keypair")}
SIGNED_BY_NIX = [
    e
    for e in entries("narinfo", kind="narinfo")
    if "tampered" not in e and "vector-test-1:" in e["narinfo"]
]


@pytest.mark.asyncio
@pytest.mark.parametrize("entry", SIGNED_BY_NIX, ids=entry_id)
async def test_signing_matches_nix_copy(entry: dict[str, str]) -> None:
    """The signature Signing adds is the very Sig line ``nix copy --to file://...?secret-key=`` wrote."""
    narinfo = NarInfo.parse(entry["narinfo"])
    key = SigningKey.parse(KEYS["vector-test-1"])
    node = make_info("x").node
    unsigned = PathInfo.from_narinfo(narinfo, node)
    unsigned = dataclasses.replace(unsigned, signatures=())
    stored = await Signing(MemoryPathInfoService(), key).put(unsigned)
    assert stored.fingerprint() == entry["fingerprint"]
    nix_sigs = [s for s in narinfo.signatures if s.name == "vector-test-1"]
    assert list(stored.signatures) == nix_sigs


# --- get_many ---------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_get_many_answers_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    monkeypatch.setattr(sqlite_backend, "GET_MANY_CHUNK", 2)  # several queries for one call
    service: MemoryPathInfoService | SqlitePathInfoService = (
        MemoryPathInfoService()
        if backend == "memory"
        else await SqlitePathInfoService.open(tmp_path / "p.db")
    )
    try:
        infos = [make_info(f"p{i}") for i in range(5)]
        for info in infos[:3]:
            await service.put(info)
        absent = [info.digest for info in infos[3:]]
        wanted = [infos[2].digest, absent[0], infos[0].digest, infos[2].digest, absent[1]]
        assert await service.get_many(wanted) == [infos[2], None, infos[0], infos[2], None]
        assert await service.get_many([]) == []
        with pytest.raises(InvalidRequest, match="digest"):
            await service.get_many([infos[0].digest, b"short"])
    finally:
        await service.close()


@pytest.mark.asyncio
async def test_get_many_errors_are_per_digest(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    service = await SqlitePathInfoService.open(db)
    good, bad, absent = make_info("good"), make_info("bad"), make_info("absent")
    try:
        await service.put(good)
        await service.put(bad)
        _raw(db, "UPDATE path_infos_v1 SET data = ? WHERE digest = ?", b"\x0a", bad.digest)
        with pytest.raises(StorageError, match="is corrupt"):
            await service.get_many([good.digest, bad.digest])
        # the helper asks again one by one: only the corrupt row's lookup fails
        found = await get_many(service, [good.digest, bad.digest, absent.digest, b"short"])
        assert found[0] == good
        assert isinstance(found[1], StorageError)
        assert "is corrupt" in str(found[1])
        assert found[2] is None
        assert isinstance(found[3], InvalidRequest)
    finally:
        await service.close()


@pytest.mark.asyncio
async def test_get_many_without_a_batched_backend() -> None:
    """``Cache`` has no ``get_many``: the helper asks ``get`` for each, concurrently."""
    near, far = MemoryPathInfoService(), MemoryPathInfoService()
    infos = [make_info(f"p{i}") for i in range(4)]
    await near.put(infos[0])
    await far.put(infos[1])
    cache = Cache(near, far)
    assert not isinstance(cache, BatchedGet)
    digests = [info.digest for info in infos]
    assert await get_many(cache, digests, concurrency=2) == [infos[0], infos[1], None, None]
    assert await get_many(cache, digests[1:2]) == [infos[1]]
    assert await near.get(infos[1].digest) == infos[1]  # read through, as get does


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_put_many_is_all_or_nothing(tmp_path: Path, backend: str) -> None:
    service: MemoryPathInfoService | SqlitePathInfoService = (
        MemoryPathInfoService()
        if backend == "memory"
        else await SqlitePathInfoService.open(tmp_path / "p.db")
    )
    try:
        good = [make_info("a"), make_info("b")]
        with pytest.raises(InvalidRequest):
            await service.put_many([good[0], make_info("bad", nar_sha256=b"x"), good[1]])
        assert await service.get_many([i.digest for i in good]) == [None, None]
        assert await service.put_many(good) == good
        assert await service.put_many([]) == []
        assert await service.get_many([i.digest for i in good]) == good
        assert await put_many(service, [good[0]]) == [good[0]]
    finally:
        await service.close()


@pytest.mark.asyncio
async def test_put_many_without_a_batched_backend() -> None:
    near, far = MemoryPathInfoService(), MemoryPathInfoService()
    cache = Cache(near, far)
    assert not isinstance(cache, BatchedPut)
    infos = [make_info("a"), make_info("b")]
    assert await put_many(cache, infos) == infos
    assert await near.get_many([i.digest for i in infos]) == infos
