"""Inputs: materialized once per builder, shared read-only; every kind of store path works."""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import AsyncIterable
from pathlib import Path

import anyio
import pytest

from clients.castore.model import B3Digest, DirectoryNode, FileNode, SymlinkNode
from clients.castore.protocols import BlobService
from clients.castore.streams import BlobReader, put_bytes
from clients.errors import NotFound
from clients.store.model import with_name
from nixcompat.storepath import StorePath, make_text_path
from tests.build.helpers import Store, read_output_file, sh_derivation
from tvixd.build.oci.materialize import InputCache
from tvixd.build.oci.service import OciBuildService, OciConfig

pytestmark = [pytest.mark.asyncio, pytest.mark.runc]


class CountingBlobs:
    """A BlobService wrapper counting reads per digest."""

    def __init__(self, inner: BlobService) -> None:
        self.inner = inner
        self.reads: Counter[bytes] = Counter()

    async def has(self, digest: bytes) -> bool:
        return await self.inner.has(digest)

    async def stat(self, digest: bytes) -> int | None:
        return await self.inner.stat(digest)

    async def open_read(self, digest: bytes) -> BlobReader | None:
        self.reads[bytes(digest)] += 1
        return await self.inner.open_read(digest)

    async def put(self, chunks: AsyncIterable[bytes]) -> B3Digest:
        return await self.inner.put(chunks)

    async def close(self) -> None:
        await self.inner.close()


async def test_inputs_are_materialized_once_and_reused(
    store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    counting = CountingBlobs(store.blobs)
    state = tmp_path / "state"
    builder = await OciBuildService.open(
        state, counting, store.directories, OciConfig(max_builds=4)
    )
    drvs = [sh_derivation(f"same-input-{i}", "sleep 0.2; mkdir $out", busybox) for i in range(4)]
    async with anyio.create_task_group() as tg:
        for drv in drvs:
            tg.start_soon(store.build, builder, drv)
    await builder.close()
    assert counting.reads == {(await _busybox_file(store, busybox)).digest: 1}
    entries = await anyio.to_thread.run_sync(lambda: sorted(os.listdir(state / "inputs")))
    assert len(entries) == 1
    assert not entries[0].startswith(".tmp-")

    def modes() -> tuple[int, int, int, float]:
        root = state / "inputs" / entries[0]
        st_dir, st_file = os.lstat(root / "bin"), os.lstat(root / "bin" / "busybox")
        return (
            stat.S_IMODE(st_dir.st_mode),
            stat.S_IMODE(st_file.st_mode),
            st_file.st_uid,
            st_file.st_mtime,
        )

    assert await anyio.to_thread.run_sync(modes) == (0o555, 0o555, 0, 1.0)

    # a new builder over the same state directory reuses what is there
    counting.reads.clear()
    again = await OciBuildService.open(state, counting, store.directories)
    await store.build(again, sh_derivation("after-restart", "mkdir $out", busybox))
    await again.close()
    assert counting.reads == {}


async def _busybox_file(store: Store, busybox: StorePath) -> FileNode:
    root = store.nodes[busybox]
    assert isinstance(root, DirectoryNode)
    top = await store.directories.get(root.digest)
    assert top is not None
    bin_dir = await store.directories.get(top.directories[0].digest)
    assert bin_dir is not None
    return bin_dir.files[0]


async def test_file_symlink_and_directory_inputs(
    builder: OciBuildService, store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    text = b"a text file\n"
    file_path = make_text_path("note.txt", text, [])
    store.nodes[file_path] = FileNode(
        file_path.basename.encode(), await put_bytes(store.blobs, text), len(text)
    )
    store.references[file_path] = frozenset()
    link_path = StorePath.from_absolute_path("/nix/store/" + "3" * 32 + "-link")
    store.nodes[link_path] = with_name((await _symlink_node(busybox)), link_path.basename.encode())
    store.references[link_path] = frozenset({busybox})
    script = (
        f"mkdir $out; cat {file_path.absolute} > $out/file; readlink {link_path.absolute} > $out/link;"
        f" {link_path.absolute}/busybox true && echo through-link > $out/via; ls {busybox.absolute}/bin > $out/dir; echo {link_path.absolute} > $out/name"
    )
    drv = sh_derivation("kinds", script, busybox)
    drv = type(drv)(
        outputs=drv.outputs,
        input_derivations={},
        input_sources=(busybox.absolute, file_path.absolute, link_path.absolute),
        system=drv.system,
        builder=drv.builder,
        arguments=drv.arguments,
        environment=drv.environment,
    )
    build = await store.build(builder, drv)
    out = StorePath.from_absolute_path(drv.outputs["out"].path)
    assert store.references[out] == frozenset({busybox, link_path})
    assert await read_output_file(store, build, b"file") == text
    assert await read_output_file(store, build, b"link") == f"{busybox.absolute}/bin\n".encode()
    assert await read_output_file(store, build, b"via") == b"through-link\n"
    assert await read_output_file(store, build, b"dir") == b"busybox\n"


async def _symlink_node(busybox: StorePath) -> SymlinkNode:
    return SymlinkNode(b"x", f"{busybox.absolute}/bin".encode())


async def test_missing_blob_caches_nothing(store: Store, tmp_path: Path) -> None:
    cache = await InputCache.open(tmp_path / "inputs", store.blobs, store.directories)
    absent = FileNode(b"x", B3Digest.of(b"not in the store"), 16)
    with pytest.raises(NotFound, match="is missing"):
        await cache.get(absent)
    assert await anyio.to_thread.run_sync(lambda: os.listdir(tmp_path / "inputs")) == []
