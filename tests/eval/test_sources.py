"""``ensure_source``: local-store sources into the castore, with Nix's hashes and references."""

from __future__ import annotations

import stat
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from clients.castore.model import DirectoryNode
from clients.store.model import PathInfo
from clients.store.nar import CastoreNarCalculator
from nixcompat.hash import HashAlgo, NixHash
from nixcompat.narinfo import ContentAddress
from nixcompat.signing import SigningKey
from nixcompat.storepath import StorePath
from tests.conftest import require_tool
from tests.eval.conftest import Stores, path_info_json, run_nix
from tvixd.eval import NixEvaluator, SourceError
from tvixd.eval.sources import SourceImporter, parse_dump_db


async def top_sources(evaluator: NixEvaluator, project: Path) -> list[StorePath]:
    (line,) = await anyio.to_thread.run_sync(
        lambda: run_nix("nix-instantiate", str(project), "-A", "top").stdout.split()
    )
    drv = await evaluator.read_derivation(StorePath.from_absolute_path(line))
    return [StorePath.from_absolute_path(s) for s in drv.input_sources]


def nix_hashes(paths: list[StorePath]) -> list[str]:
    """``nix-store --query --hash`` of each path (one call)."""
    return run_nix("nix-store", "--query", "--hash", *(p.absolute for p in paths)).stdout.split()


@pytest.mark.asyncio
async def test_sources_match_nix(evaluator: NixEvaluator, stores: Stores, project: Path) -> None:
    sources = await top_sources(evaluator, project)
    assert len(sources) == 5
    async with anyio.create_task_group() as tg:  # concurrently, as the coordinator would
        for source in sources:
            tg.start_soon(evaluator.ensure_source, source)
    hashes = await anyio.to_thread.run_sync(nix_hashes, sources)
    registered = await anyio.to_thread.run_sync(lambda: path_info_json(*map(str, sources)))
    calculator = CastoreNarCalculator(stores.blobs, stores.directories)
    for source, nix_hash in zip(sources, hashes, strict=True):
        info = await stores.pathinfos.get(source.digest)
        assert info is not None
        assert info.store_path == source
        assert info.node.name == source.basename.encode()
        assert info.nar_hash() == NixHash.parse(nix_hash)
        want = registered[source.absolute]
        assert info.nar_size == want["narSize"]
        assert sorted(str(r) for r in info.references) == sorted(want["references"])
        assert str(info.ca) == want["ca"]
        assert ContentAddress.parse(want["ca"]) == info.ca
        # the castore really holds the contents: its NAR hashes to Nix's
        assert await calculator.calculate_nar(info.node) == (info.nar_size, info.nar_sha256)
    pointer = next(s for s in sources if s.name == "pointer.txt")
    note = next(s for s in sources if s.name == "note.txt")
    info = await stores.pathinfos.get(pointer.digest)
    assert info is not None
    assert info.references == (note,)
    data = await stores.pathinfos.get(next(s for s in sources if s.name == "data").digest)
    assert data is not None
    assert isinstance(data.node, DirectoryNode)
    mode = (await anyio.Path(data.store_path.absolute, "run.sh").stat()).st_mode
    assert mode & stat.S_IXUSR


@pytest.mark.asyncio
async def test_ensure_source_is_idempotent(
    evaluator: NixEvaluator, stores: Stores, project: Path
) -> None:
    note = next(s for s in await top_sources(evaluator, project) if s.name == "note.txt")
    first = await evaluator.ensure_source(note)
    assert await evaluator.ensure_source(note) == first
    # what the path-info service holds wins, unchanged (e.g. already signed)
    signed = first.signed(SigningKey.generate("test-1"))
    await stores.pathinfos.put(signed)
    assert await evaluator.ensure_source(note) == signed


@pytest.mark.asyncio
async def test_missing_source(evaluator: NixEvaluator) -> None:
    missing = StorePath.from_absolute_path("/nix/store/00000000000000000000000000000000-gone")
    with pytest.raises(SourceError, match=f"input source {missing} is not available .*not valid"):
        await evaluator.ensure_source(missing)


@pytest.mark.asyncio
async def test_lookups_are_batched(stores: Stores, project: Path, tmp_path: Path) -> None:
    """Concurrent imports share nix-store calls; a bad path in a batch only fails its own caller."""
    nix_store = require_tool("nix-store")
    log = tmp_path / "calls.log"
    wrapper = tmp_path / "nix-store"
    await anyio.Path(wrapper).write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {nix_store} "$@"\n')
    await anyio.Path(wrapper).chmod(0o755)
    helper = NixEvaluator(stores.blobs, stores.directories, stores.pathinfos)
    sources = await top_sources(helper, project)
    importer = SourceImporter(
        stores.blobs, stores.directories, stores.pathinfos, nix_store=str(wrapper)
    )
    missing = StorePath.from_absolute_path("/nix/store/11111111111111111111111111111111-gone")
    results: dict[StorePath, PathInfo | Exception] = {}

    async def one(path: StorePath) -> None:
        try:
            results[path] = await importer.ensure(path)
        except SourceError as exc:
            results[path] = exc

    async with anyio.create_task_group() as tg:
        for path in [*sources, missing]:
            tg.start_soon(one, path)
    assert all(isinstance(results[s], PathInfo) for s in sources)
    assert isinstance(results[missing], SourceError)
    calls = (await anyio.Path(log).read_text()).splitlines()
    individual = [c for c in calls if len(c.split()) == 2]
    assert len(calls) - len(individual) < len(sources), calls  # batches, not one call per path
    assert f"--dump-db {missing}" in individual  # the failing batch was split to find the culprit
    await helper.close()


def test_parse_dump_db() -> None:
    text = (
        "/nix/store/m0iyz1rzcgxw68h6skk8b9sg0p0napwc-foo.txt\n"
        f"{'0a' * 32}\n120\n\n1\n/nix/store/6jafijq49jx6z5087h390d15ps3qvhdj-a.nix\n"
        "/nix/store/6jafijq49jx6z5087h390d15ps3qvhdj-a.nix\n"
        f"{'ff' * 32}\n584\n/nix/store/03qwxk3i4f5l5ip0qdm79yrc1zsjijmh-c.drv\n0\n"
    )
    records = parse_dump_db(text)
    foo, nix = records.values()
    assert foo.nar_hash == NixHash(HashAlgo.sha256, bytes([10]) * 32)
    assert foo.nar_size == 120
    assert foo.deriver is None
    assert foo.references == (nix.path,)
    assert nix.deriver == StorePath.from_absolute_path(
        "/nix/store/03qwxk3i4f5l5ip0qdm79yrc1zsjijmh-c.drv"
    )
    for broken, message in [
        ("/nix/store/x\n", "line 1"),
        (text.replace("\n120\n", "\nmany\n"), "line 1: invalid literal"),
        (text.replace("\n0\n", "\n3\n"), "line 7: reference count 3"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_dump_db(broken)
