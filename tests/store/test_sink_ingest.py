"""The fast ingest path (a blob service offering ``open_sink``) against Nix and the general path.

The objectstore offers a sink, so ``ingest_path`` into it takes the
thread-side path of ``clients.store.sink_ingest``; memory:// does not, so it
takes the general path.  Both must give the same nodes, directories and NAR
hash as each other and as ``nix-store --dump``; the objectstore's blobs must
be named by their contents, durable (the sink was flushed) and whole; and
failures, cancellation and a file changing under the ingest leave no
directory, no temp file and no open descriptor behind.
"""

from __future__ import annotations

import mmap
import os
import queue
import random
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest

from clients.castore.model import B3Digest, DirectoryNode
from clients.errors import StorageError
from clients.store.ingest import ingest_path
from clients.store.nar import render_nar
from clients.store.sink import Buffer, HashingSink, LargeBlobWriter
from clients.store.sink_ingest import LARGE_CHUNK
from clients.store.sink_stages import BEGIN, CHUNK, END, LARGE, Hash
from nixcompat.nar import NarError
from tests.store.bridge_fixtures import (
    MiB,
    blob_files,
    corrupt_blobs,
    nix_dump,
    python_env,
    rich_tree,
)
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.blobs.objectstore import ObjectStoreBlobService
from tvixd.castore.blobs.sink import ObjectStoreSink
from tvixd.castore.directories.memory import MemoryDirectoryService
from tvixd.castore.directories.sqlite import SqliteDirectoryService

pytestmark = pytest.mark.asyncio


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def mixed_tree(root: Path, seed: int = 11) -> Path:
    """Small files (some equal), large ones across chunk boundaries, links, nesting."""
    rng = random.Random(seed)
    rich_tree(root)
    for d in range(6):
        sub = root / f"d{d}" / "inner"
        sub.mkdir(parents=True)
        for f in range(30):
            size = rng.choice([0, 1, 4095, 4096, 9000, 70_000])
            data = rng.randbytes(size) if f % 5 else b"same in many places\n"
            (sub / f"f{f:02}").write_bytes(data)
        (sub / "link").symlink_to(f"../../d{(d + 1) % 6}")
    sizes = [MiB + 1, LARGE_CHUNK, LARGE_CHUNK + 4096, 2 * LARGE_CHUNK + 7]
    for i, size in enumerate(sizes):
        (root / f"large-{i}").write_bytes(rng.randbytes(size))
    (root / "large-0").chmod(0o755)
    (root / "large-copy").write_bytes((root / "large-2").read_bytes())
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mixed_tree(tmp_path_factory.mktemp("sink") / "tree")


class Provider:
    """A memory blob service that also offers a sink made by ``make`` (to steer the fast path)."""

    def __init__(self, make: object) -> None:
        self.memory = MemoryBlobService()
        self._make = make

    def __getattr__(self, name: str) -> object:
        return getattr(self.memory, name)

    def open_sink(self) -> object:
        return self._make()  # type: ignore[operator]


async def test_same_result_as_general_path_and_nix(tree: Path, tmp_path: Path) -> None:
    general = await ingest_path(tree, MemoryBlobService(), MemoryDirectoryService())
    blobs = await ObjectStoreBlobService.open(tmp_path / "blobs")
    directories = await SqliteDirectoryService.open(tmp_path / "dirs.db")
    try:
        fast = await ingest_path(tree, blobs, directories, name=b"x")
        assert (fast.nar_sha256, fast.nar_size) == (general.nar_sha256, general.nar_size)
        assert isinstance(fast.node, DirectoryNode)
        assert isinstance(general.node, DirectoryNode)
        assert fast.node.digest == general.node.digest
        stats = ("files", "file_bytes", "directories", "symlinks")
        assert [getattr(fast, s) for s in stats] == [getattr(general, s) for s in stats]
        assert fast.blobs_uploaded == general.blobs_uploaded  # equal files stored once
        assert fast.bytes_uploaded == general.bytes_uploaded
        rendered = b"".join([c async for c in render_nar(fast.node, blobs, directories)])
        assert rendered == nix_dump(tree)
        files = blob_files(tmp_path / "blobs")
        assert len(files) == fast.blobs_uploaded
        assert corrupt_blobs(tmp_path / "blobs") == []
        assert all(f.stat().st_mode & 0o777 == 0o444 for f in files)
        assert os.listdir(tmp_path / "blobs" / "tmp") == []
        again = await ingest_path(tree, blobs, directories)
        assert (again.node.digest, again.blobs_uploaded, again.nar_sha256) == (  # type: ignore[union-attr]
            fast.node.digest,
            0,
            fast.nar_sha256,
        )
    finally:
        await directories.close()
        await blobs.close()


@pytest.mark.parametrize("durability", ["syncfs", "fsync"])
async def test_durability_modes_store_the_same(tree: Path, tmp_path: Path, durability: str) -> None:
    store = await ObjectStoreBlobService.open(tmp_path / "blobs")
    provider = Provider(lambda: ObjectStoreSink(store, durability))
    result = await ingest_path(tree, provider, MemoryDirectoryService())  # type: ignore[arg-type]
    assert len(blob_files(tmp_path / "blobs")) == result.blobs_uploaded > 0
    assert corrupt_blobs(tmp_path / "blobs") == []
    with pytest.raises(ValueError, match="durability"):
        ObjectStoreSink(store, "none")


async def test_single_file_and_symlink_roots(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(random.Random(1).randbytes(LARGE_CHUNK + 1))
    (tmp_path / "link").symlink_to("big")
    store = await ObjectStoreBlobService.open(tmp_path / "blobs")
    for name in ("big", "link"):
        fast = await ingest_path(tmp_path / name, store, MemoryDirectoryService())
        general = await ingest_path(tmp_path / name, MemoryBlobService(), MemoryDirectoryService())
        assert (fast.node, fast.nar_sha256) == (general.node, general.nar_sha256)


async def test_present_large_file_makes_the_next_one_hashed_first(tmp_path: Path) -> None:
    """After a present large blob the next is hashed, then read again and written when absent."""
    rng = random.Random(2)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    (first / "a-big").write_bytes(rng.randbytes(3 * MiB))
    second.mkdir()
    (second / "a-big").write_bytes((first / "a-big").read_bytes())
    (second / "b-big").write_bytes(rng.randbytes(LARGE_CHUNK + 5))
    (second / "c-big").write_bytes(rng.randbytes(2 * MiB))
    blobs = await ObjectStoreBlobService.open(tmp_path / "blobs")
    directories = MemoryDirectoryService()
    await ingest_path(first, blobs, directories)
    result = await ingest_path(second, blobs, directories)
    assert (result.blobs_uploaded, result.bytes_uploaded) == (2, LARGE_CHUNK + 5 + 2 * MiB)
    assert corrupt_blobs(tmp_path / "blobs") == []
    assert len(blob_files(tmp_path / "blobs")) == 3


class RewritingSink:
    """An objectstore sink that changes ``victim`` when asked whether its blob is present."""

    def __init__(self, store: ObjectStoreBlobService, victim: Path, replace: bool) -> None:
        self.inner = ObjectStoreSink(store)
        self.victim, self.replace = victim, replace

    def has(self, digest: bytes) -> bool:
        data = bytearray(self.victim.read_bytes())
        if B3Digest.of(data) == digest:
            data[-1] ^= 0xFF
            if self.replace:
                self.victim.rename(self.victim.with_name("old"))
                self.victim.write_bytes(bytes(data))
            else:
                with self.victim.open("r+b") as f:
                    f.write(data)
        return self.inner.has(digest)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.parametrize(
    ("replace", "message"),
    [(False, "changed while being ingested"), (True, "was replaced while being ingested")],
)
async def test_large_file_changed_before_it_is_read_again(
    tmp_path: Path, replace: bool, message: str
) -> None:
    rng = random.Random(4)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "a-big").write_bytes(rng.randbytes(2 * MiB))
    (second / "a-big").write_bytes((first / "a-big").read_bytes())
    (second / "b-big").write_bytes(rng.randbytes(2 * MiB + 3))
    store = await ObjectStoreBlobService.open(tmp_path / "blobs")
    await ingest_path(first, store, MemoryDirectoryService())
    provider = Provider(lambda: RewritingSink(store, second / "b-big", replace))
    directories = MemoryDirectoryService()
    fds = open_fds()
    with pytest.raises(NarError, match=message):
        await ingest_path(second, provider, directories)  # type: ignore[arg-type]
    assert directories._directories == {}
    assert corrupt_blobs(tmp_path / "blobs") == []
    assert os.listdir(tmp_path / "blobs" / "tmp") == []
    assert open_fds() == fds


class FailingSink(HashingSink):
    """Fails the ``fail_at``-th small put (counting from 1)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at

    def put(self, data: Buffer) -> B3Digest:
        self.fail_at -= 1
        if self.fail_at == 0:
            raise StorageError("disk on fire")
        return super().put(data)

    def begin(self) -> LargeBlobWriter:
        return super().begin()


@pytest.mark.parametrize("fail_at", [1, 150])
async def test_sink_failure_is_raised_and_stores_no_directory(tree: Path, fail_at: int) -> None:
    directories = MemoryDirectoryService()
    fds = open_fds()
    with pytest.raises(StorageError, match="disk on fire"):
        await ingest_path(tree, Provider(lambda: FailingSink(fail_at)), directories)  # type: ignore[arg-type]
    assert directories._directories == {}
    assert open_fds() == fds


async def test_walker_failure_leaves_no_temp_file(tmp_path: Path) -> None:
    tree = mixed_tree(tmp_path / "tree")
    os.mkfifo(tree / "d5" / "zz-fifo")  # late in NAR order: blobs are in flight by then
    await fails_leaving_nothing(tree, tmp_path / "blobs")


async def fails_leaving_nothing(tree: Path, store: Path) -> None:
    """Ingesting ``tree`` (with a fifo in it) into an objectstore at ``store`` fails on the
    fifo, and leaves no directory, no corrupt blob, no temp file and no open descriptor."""
    blobs = await ObjectStoreBlobService.open(store)
    directories = MemoryDirectoryService()
    fds = open_fds()
    with pytest.raises(NarError, match="unsupported file type 'p'"):
        await ingest_path(tree, blobs, directories)
    assert directories._directories == {}
    assert corrupt_blobs(store) == []
    assert os.listdir(store / "tmp") == []
    assert open_fds() == fds


class CancellingSink:
    """An objectstore sink that cancels ``scope`` (from its thread) at the ``at``-th put."""

    def __init__(self, store: ObjectStoreBlobService, scope: anyio.CancelScope, at: int) -> None:
        self.inner = ObjectStoreSink(store)
        self.scope, self.at = scope, at

    def put(self, data: Buffer) -> B3Digest:
        self.at -= 1
        if self.at == 0:
            anyio.from_thread.run_sync(self.scope.cancel)
        return self.inner.put(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_cancelled_ingest_cleans_up(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    rng = random.Random(5)
    for d in range(30):
        (tree / f"d{d:02}").mkdir(parents=True)
        for i in range(100):
            (tree / f"d{d:02}" / f"f{i:02}").write_bytes(rng.randbytes(rng.randrange(1, 3000)))
    (tree / "d15" / "big").write_bytes(rng.randbytes(2 * LARGE_CHUNK))
    store = await ObjectStoreBlobService.open(tmp_path / "blobs")
    directories = MemoryDirectoryService()
    fds = open_fds()
    with anyio.CancelScope() as scope:
        provider = Provider(lambda: CancellingSink(store, scope, 1500))
        await ingest_path(tree, provider, directories)  # type: ignore[arg-type]
    assert scope.cancelled_caught
    assert directories._directories == {}
    assert corrupt_blobs(tmp_path / "blobs") == []
    assert os.listdir(tmp_path / "blobs" / "tmp") == []
    assert open_fds() == fds
    done = await ingest_path(tree, store, directories)  # and the store is still usable
    assert done.files == 3001
    assert corrupt_blobs(tmp_path / "blobs") == []


async def test_sink_writes_unaligned_and_aligned_chunks(tmp_path: Path) -> None:
    """Direct-I/O-friendly and unfriendly chunks mixed in one blob, read back whole."""
    store = await ObjectStoreBlobService.open(tmp_path / "blobs")
    await anyio.to_thread.run_sync(sink_roundtrip, store, tmp_path)


def sink_roundtrip(store: ObjectStoreBlobService, tmp_path: Path) -> None:
    sink = ObjectStoreSink(store)
    try:
        aligned = mmap.mmap(-1, 8192)
        aligned.write(os.urandom(8192))
        parts: list[Buffer] = [memoryview(aligned), b"x" * 100, memoryview(aligned)[:4096]]
        writer = sink.begin()
        for part in parts:
            writer.write(part)
        digest = writer.finish()
        small = sink.put(b"tiny")
        assert sink.has(digest)
        assert sink.has(small)
        sink.flush()
        assert store.path(digest).read_bytes() == b"".join(bytes(p) for p in parts)
        assert store.path(small).read_bytes() == b"tiny"
        assert (sink.blobs_written, sink.put(b"tiny"), sink.blobs_written) == (2, small, 2)
        discarded = sink.begin()
        discarded.write(b"never stored")
        discarded.discard()
        sink.flush()
        assert len(blob_files(tmp_path / "blobs")) == 2
    finally:
        sink.close()
        sink.close()  # idempotent
    assert os.listdir(tmp_path / "blobs" / "tmp") == []


LOW_FD_LIMIT = """
import resource, sys
from pathlib import Path
import anyio
from clients.store.ingest import ingest_path
from tvixd.castore.blobs.objectstore import ObjectStoreBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService

resource.setrlimit(resource.RLIMIT_NOFILE, (160, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


async def main() -> None:
    store = await ObjectStoreBlobService.open(Path(sys.argv[2]))
    result = await ingest_path(sys.argv[1], store, MemoryDirectoryService())
    print(result.blobs_uploaded)


anyio.run(main)
"""


async def test_low_open_file_limit(tmp_path: Path) -> None:
    """Groups shrink to fit the open-file limit (here 160 descriptors for 1500 new blobs)."""
    tree = tmp_path / "tree"
    for d in range(256):  # every fan-out directory is likely touched
        (tree / f"{d:03}").mkdir(parents=True)
    for i in range(1500):
        (tree / f"{i % 256:03}" / f"f{i}").write_bytes(b"%d\n" % i)
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-c", LOW_FD_LIMIT, str(tree), str(tmp_path / "blobs")],
            env=python_env(),
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    assert int(done.stdout) == 1500
    assert len(blob_files(tmp_path / "blobs")) == 1500
    assert corrupt_blobs(tmp_path / "blobs") == []


async def test_directories_closed_around_large_files_and_batches(tmp_path: Path) -> None:
    """The directories are built on the store thread as the walker closes them: directories
    holding only large files, large files after a closed subdirectory, directories closed in
    the middle of a small-file batch and across full batches, empty ones — the same graph
    as the general path builds, and Nix's NAR."""
    rng = random.Random(3)
    root = tmp_path / "tree"
    (root / "a" / "only-large").mkdir(parents=True)
    (root / "a" / "only-large" / "big").write_bytes(rng.randbytes(MiB + 3))
    (root / "a" / "z-after").write_bytes(rng.randbytes(2 * MiB))  # after a closed directory
    (root / "b" / "c" / "d").mkdir(parents=True)  # only subdirectories, an empty one at the end
    for d in range(3):  # 300 small files each: batches of 256 end inside directories
        sub = root / "b" / "c" / f"many-{d}"
        sub.mkdir()
        for f in range(300):
            (sub / f"{f:03}").write_bytes(rng.randbytes(rng.choice([0, 10, 5000])))
        (sub / "zz-large").write_bytes(rng.randbytes(MiB + 1 + d))
    general = await ingest_path(root, MemoryBlobService(), MemoryDirectoryService())
    blobs = await ObjectStoreBlobService.open(tmp_path / "blobs")
    directories = MemoryDirectoryService()
    try:
        fast = await ingest_path(root, blobs, directories)
        assert isinstance(fast.node, DirectoryNode)
        assert isinstance(general.node, DirectoryNode)
        assert fast.node.digest == general.node.digest
        assert fast.directories == general.directories == 9
        rendered = b"".join([c async for c in render_nar(fast.node, blobs, directories)])
        assert rendered == nix_dump(root)
    finally:
        await blobs.close()


async def test_walker_failure_with_large_files_queued(tmp_path: Path) -> None:
    """Large files handed to the hasher as open descriptors when the walker fails: each is
    read or only closed, and nothing is left behind."""
    tree = tmp_path / "tree"
    tree.mkdir()
    rng = random.Random(8)
    for i in range(6):
        (tree / f"a-big-{i}").write_bytes(rng.randbytes(2 * LARGE_CHUNK + 1))
    os.mkfifo(tree / "z-fifo")
    await fails_leaving_nothing(tree, tmp_path / "blobs")


async def test_hasher_reads_large_files_and_closes_them(tmp_path: Path) -> None:
    """The hasher thread reads a large file handed over as a descriptor: a file shorter than
    its size is a NarError naming it, and the descriptors of the items after the error are
    closed unread; every chunk buffer goes back to the pool."""
    path = tmp_path / "big"
    path.write_bytes(random.Random(2).randbytes(LARGE_CHUNK + 10))
    inbox: queue.Queue[Any] = queue.Queue()
    outbox: queue.Queue[Any] = queue.Queue()
    pool: queue.Queue[mmap.mmap] = queue.Queue()
    for _ in range(2):
        pool.put(mmap.mmap(-1, LARGE_CHUNK))
    fds = open_fds()
    size = path.stat().st_size
    for claimed in (size, size + 5, size):  # the second one shrank after its fstat
        inbox.put((LARGE, os.open(path, os.O_RDONLY), bytes(path), (0, 0), claimed))
    inbox.put(None)
    hasher = Hash(inbox, outbox, pool)
    taken: list[tuple[Any, ...]] = []

    def store() -> None:  # gives the chunk buffers back, as the store thread does
        while (item := outbox.get()) is not None:
            taken.append(item[:1] + item[2:] if item[0] == CHUNK else item)
            if item[0] == CHUNK:
                pool.put(item[1])

    helper = threading.Thread(target=store)
    helper.start()
    await anyio.to_thread.run_sync(hasher.run)
    helper.join()
    assert isinstance(hasher.error, NarError)
    assert "shrank while being ingested" in str(hasher.error)
    assert str(path) in str(hasher.error)
    assert open_fds() == fds
    assert pool.qsize() == 2
    head = (BEGIN, bytes(path), (0, 0), size)
    assert taken[:4] == [head, (CHUNK, LARGE_CHUNK), (CHUNK, 10), (END,)]
    assert taken[4] == (BEGIN, bytes(path), (0, 0), size + 5)
    assert all(item[0] == CHUNK for item in taken[5:])  # no END for it, nothing after it
