"""The objectstore sink's writer process (``tvixd.castore.blobs.writer``).

Past ``START_AFTER`` small blobs, a sink hands new small blobs to a child
process through a shared ring; after ``flush`` they are named with their
exact contents, exactly as when the sink writes them itself.  A writer that
dies or refuses a message fails the sink with an error that says so, and
never leaves a blob under a wrong name; a writer whose sink goes away exits.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import blake3
import pytest

from clients.errors import StorageError
from tests.store.bridge_fixtures import (
    WRITER_READY_AT_START,
    blob_files,
    blob_writer_pids,
    corrupt_blobs,
    python_env,
)
from tvixd.castore.blobs import writer
from tvixd.castore.blobs.objectstore import ObjectStoreBlobService
from tvixd.castore.blobs.sink import ObjectStoreSink

WRITER_MODULE = "tvixd.castore.blobs.writer"


def is_writer(pid: int | None) -> bool:
    """Whether ``pid`` is a live writer process (waiting out the end of its ``exec``:
    ``Popen`` returns when the close-on-exec pipe closes, before the new command line
    is in place)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except FileNotFoundError:
            return False
        if argv != [b""] or time.monotonic() > deadline:
            return WRITER_MODULE.encode() in argv
        time.sleep(0.001)


def open_store(root: Path) -> ObjectStoreBlobService:
    return anyio.run(ObjectStoreBlobService.open, root)


@contextlib.contextmanager
def sink_on(
    root: Path, durability: str = "syncfs"
) -> Iterator[tuple[ObjectStoreBlobService, ObjectStoreSink]]:
    """A store at ``root`` and a sink on it, both closed at the end (the store's
    files stay readable through ``store.path``)."""
    store = open_store(root)
    try:
        sink = ObjectStoreSink(store, durability)
        try:
            yield store, sink
        finally:
            sink.close()
    finally:
        anyio.run(store.close)


def blobs(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.choice([0, 1, 100, 4096, 5000, 70_000])) for _ in range(count)]


def assert_stored(store: ObjectStoreBlobService, data: list[bytes]) -> None:
    """Every blob of ``data`` is stored under its digest with exactly its contents."""
    for d in data:
        assert store.path(blake3.blake3(d).digest()).read_bytes() == d


def put_all_and_flush(sink: ObjectStoreSink, data: list[bytes]) -> None:
    for d in data:
        sink.put(d)
    sink.flush()


HELLO = b"H" + struct.pack("<I", writer.PROTOCOL)


def wait_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a started writer take blobs at once (a sink goes on writing itself until
    the writer said hello, ~0.1 s: a short test would be over by then)."""
    start = writer.WriterProcess.__init__

    def started_and_ready(self: writer.WriterProcess, root: str, durability: str) -> None:
        start(self, root, durability)
        deadline = time.monotonic() + 30
        while not self.ready():
            assert time.monotonic() < deadline, "the writer did not say hello"
            time.sleep(0.002)

    monkeypatch.setattr(writer.WriterProcess, "__init__", started_and_ready)


@pytest.fixture
def few(monkeypatch: pytest.MonkeyPatch) -> int:
    """A writer process after this many small blobs (instead of START_AFTER), taking
    blobs as soon as it is started."""
    monkeypatch.setattr(writer, "START_AFTER", 8)
    wait_ready(monkeypatch)
    return 8


@pytest.mark.parametrize("durability", ["syncfs", "fsync"])
def test_blobs_past_the_threshold_are_written_by_the_writer(
    tmp_path: Path, few: int, durability: str
) -> None:
    data = blobs(300, seed=1)
    data += data[:20]  # present ones are skipped, also those the writer holds
    with sink_on(tmp_path / "blobs", durability) as (store, sink):
        digests = [sink.put(d) for d in data]
        pid = sink.writer_pid
        assert is_writer(pid)
        assert sink.writer_ready
        sink.flush()
        unique = {bytes(d): d for d in digests}
        assert sink.blobs_written == len(unique)
        assert sink.bytes_written == sum(len(d) for d in {bytes(x): x for x in data}.values())
        for payload, digest in zip(data, digests, strict=True):
            assert digest == blake3.blake3(payload).digest()
            assert store.path(digest).read_bytes() == payload
        assert len(blob_files(tmp_path / "blobs")) == len(unique)
        assert all(f.stat().st_mode & 0o777 == 0o444 for f in blob_files(tmp_path / "blobs"))
        # more after a flush, through the same writer, which a Ctrl-C did not end
        assert pid is not None
        os.kill(pid, signal.SIGINT)
        more = blobs(40, seed=2)
        for d in more:
            sink.put(d)
        sink.flush()
        assert all(store.path(blake3.blake3(d).digest()).read_bytes() == d for d in more)
        assert sink.writer_pid == pid
    assert not is_writer(pid)  # close waits for it
    assert os.listdir(tmp_path / "blobs" / "tmp") == []


def test_the_writer_starts_after_start_after_new_small_blobs(tmp_path: Path) -> None:
    rng = random.Random(3)
    data = [rng.randbytes(100) for _ in range(writer.START_AFTER + 1)]
    with sink_on(tmp_path / "blobs") as (store, sink):
        for d in data[:-1]:
            sink.put(d)
        for d in data[:10]:
            sink.put(d)  # present: not counted
        assert sink.writer_pid is None
        sink.put(data[-1])
        assert is_writer(sink.writer_pid)
        # the sink goes on writing itself until the writer said hello, then hands it blobs
        deadline = time.monotonic() + 30
        while not sink.writer_ready:
            assert time.monotonic() < deadline, "the writer was never used"
            data.append(rng.randbytes(100))
            sink.put(data[-1])
            time.sleep(0.001)
        data += [rng.randbytes(100) for _ in range(50)]
        for d in data[-50:]:
            sink.put(d)
        sink.flush()
    assert_stored(store, data)


@pytest.mark.parametrize("how", ["killed", "no interpreter"])
def test_a_writer_that_never_says_hello_is_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    monkeypatch.setattr(writer, "START_AFTER", 8)
    if how == "no interpreter":
        monkeypatch.setattr(sys, "executable", "/bin/false")
    rng = random.Random(9)
    data = [rng.randbytes(300) for _ in range(300)]
    with sink_on(tmp_path / "blobs") as (store, sink):
        for d in data[:9]:
            sink.put(d)
        pid = sink.writer_pid
        assert pid is not None
        if how == "killed":
            os.kill(pid, signal.SIGKILL)  # long before it could import anything
        for d in data[9:]:
            sink.put(d)
            time.sleep(0.001)
        assert sink.writer_pid is None
        sink.flush()
    assert_stored(store, data)
    status = "-9" if how == "killed" else "1"
    assert (
        f"blob writer process failed to start (the blob writer process exited (status {status})"
        in (caplog.text)
    )


def test_a_small_ring_wraps_and_large_blobs_stay_here(
    tmp_path: Path, few: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "RING_BYTES", 256 << 10)  # blobs over 64 KiB: written here
    rng = random.Random(10)
    data = [rng.randbytes(rng.randrange(0, 100_000)) for _ in range(600)]
    with sink_on(tmp_path / "blobs", "fsync") as (store, sink):
        for i, d in enumerate(data):
            sink.put(d)
            if i % 200 == 199:
                sink.flush()
        assert sink.writer_ready
        sink.flush()
    assert_stored(store, data)
    assert len(blob_files(tmp_path / "blobs")) == len({bytes(d) for d in data})


def test_a_killed_writer_fails_the_sink(tmp_path: Path, few: int) -> None:
    with sink_on(tmp_path / "blobs") as (_, sink):
        for d in blobs(few + 50, seed=4):
            sink.put(d)
        pid = sink.writer_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        more = blobs(3000, seed=5)  # more than the ring holds: the sink must wait for the writer
        with pytest.raises(StorageError, match=r"blob writer process exited \(status -9\)"):
            put_all_and_flush(sink, more)
        with pytest.raises(StorageError, match="blob writer process exited"):
            sink.flush()  # stays failed
    assert corrupt_blobs(tmp_path / "blobs") == []


def test_the_writer_exits_when_its_sink_is_gone(tmp_path: Path) -> None:
    """SIGKILL the sink's process: its writer sees the socket close and exits."""
    script = (
        WRITER_READY_AT_START
        + """
import random, sys, anyio
from pathlib import Path
from tvixd.castore.blobs import writer
from tvixd.castore.blobs.objectstore import ObjectStoreBlobService
from tvixd.castore.blobs.sink import ObjectStoreSink
writer.START_AFTER = 8
store = anyio.run(ObjectStoreBlobService.open, Path(sys.argv[1]))
sink = ObjectStoreSink(store)
rng = random.Random(6)
for _ in range(200):
    sink.put(rng.randbytes(3000))
sink.flush()
print("flushed", flush=True)
for _ in range(2000):
    sink.put(rng.randbytes(3000))
print("put", flush=True)
sys.stdin.read()
"""
    )
    root = tmp_path / "blobs"
    env = python_env()
    with subprocess.Popen(
        [sys.executable, "-c", script, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    ) as owner:
        assert owner.stdout is not None
        try:
            assert owner.stdout.readline() == b"flushed\n"
            assert owner.stdout.readline() == b"put\n"
            (child,) = blob_writer_pids(root)
            owner.kill()
            assert owner.wait(timeout=10) == -signal.SIGKILL
        finally:
            owner.kill()
    deadline = time.monotonic() + 30
    while child in blob_writer_pids(root):  # gone, or a zombie (no command line)
        assert time.monotonic() < deadline, "the writer outlived its sink"
        time.sleep(0.02)
    assert corrupt_blobs(root) == []
    assert len(blob_files(root)) >= 200  # the flushed ones, at least


class RawWriter:
    """The writer process driven by hand: its ring and its socket."""

    def __init__(self, root: Path) -> None:
        anyio.run(ObjectStoreBlobService.open, root)  # the directories
        self.ring_fd = os.memfd_create("test-ring")
        os.ftruncate(self.ring_fd, writer.RING_BYTES)
        self.ring = mmap.mmap(self.ring_fd, writer.RING_BYTES)
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = python_env()
        argv = [str(root), "syncfs", str(self.ring_fd), str(theirs.fileno())]
        self.process = subprocess.Popen(
            [sys.executable, "-m", WRITER_MODULE, *argv],
            pass_fds=(self.ring_fd, theirs.fileno()),
            env=env,
        )
        theirs.close()
        self.sock.settimeout(30)
        assert self.sock.recv(4096) == HELLO

    def write(self, position: int, data: bytes, digest: bytes | None = None) -> bytes:
        start = position % writer.RING_BYTES
        self.ring[start : start + len(data)] = data
        digest = digest if digest is not None else blake3.blake3(data).digest()
        return struct.pack("<QI32s", position, len(data), digest)

    def close(self) -> int:
        self.sock.close()
        code = self.process.wait(timeout=30)
        self.ring.close()
        os.close(self.ring_fd)
        return code


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"X", b"malformed message"),
        (b"F12", b"malformed message"),
        (b"W" + b"\0" * 43, b"not whole records"),
        (b"W" + struct.pack("<QI32s", writer.RING_BYTES - 10, 20, b"\0" * 32), b"outside the ring"),
    ],
)
def test_the_writer_refuses_bad_messages_and_names_nothing(
    tmp_path: Path, message: bytes, error: bytes
) -> None:
    raw = RawWriter(tmp_path / "blobs")
    try:
        good = raw.write(0, b"a blob that must not be named")
        raw.sock.sendall(b"W" + good)  # written to a temp file, in the group not yet committed
        raw.sock.sendall(message)
        replies = []
        while reply := raw.sock.recv(4096):  # the writer exits after its error
            replies.append(reply)
        # the good record may be answered first, or the bad message read before answering
        assert replies[-1].startswith(b"E"), replies
        assert error in replies[-1], replies
        assert replies[:-1] in ([], [b"R" + struct.pack("<Q", 29)]), replies
    finally:
        assert raw.close() == 1  # a failure
    assert blob_files(tmp_path / "blobs") == []
    assert os.listdir(tmp_path / "blobs" / "tmp") == []


def test_the_writer_flushes_on_request(tmp_path: Path) -> None:
    raw = RawWriter(tmp_path / "blobs")
    try:
        first, second = b"one", b"two" * 1000
        records = raw.write(0, first) + raw.write(len(first), second)
        raw.sock.sendall(b"W" + records)
        raw.sock.sendall(b"F" + struct.pack("<Q", 7))
        assert raw.sock.recv(4096) == b"R" + struct.pack("<Q", len(first) + len(second))
        assert raw.sock.recv(4096) == b"D" + struct.pack("<Q", 7)
        names = sorted(p.name for p in blob_files(tmp_path / "blobs"))
        assert names == sorted(blake3.blake3(d).hexdigest() for d in (first, second))
    finally:
        assert raw.close() == 0


def test_a_store_the_writer_cannot_open_is_reported(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    # a writer pointed at a path below a regular file cannot create its directories
    ring_fd = os.memfd_create("test-ring")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = python_env()
    fds = [str(ring_fd), str(theirs.fileno())]
    process = subprocess.Popen(
        [sys.executable, "-m", WRITER_MODULE, str(tmp_path / "file" / "x"), "syncfs", *fds],
        pass_fds=(ring_fd, theirs.fileno()),
        env=env,
    )
    theirs.close()
    try:
        ours.settimeout(30)
        reply = ours.recv(4096)
        assert reply.startswith(b"Ecannot open blob store at ")
        assert b"file/x" in reply
    finally:
        ours.close()
        process.wait(timeout=30)
        os.close(ring_fd)


def test_records_parser() -> None:
    body = struct.pack("<QI32s", 5, 7, b"d" * 32) * 2
    assert list(writer.records(body)) == [(5, 7, b"d" * 32)] * 2
    assert list(writer.records(b"")) == []
    with pytest.raises(ValueError, match="not whole records"):
        writer.records(body[:-1])


def test_a_writer_that_cannot_start_leaves_the_sink_writing(
    tmp_path: Path, few: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "RING_BYTES", 1 << 62)  # no memfd can be that large
    data = blobs(100, seed=7)
    with sink_on(tmp_path / "blobs") as (store, sink):
        for d in data:
            sink.put(d)
        assert sink.writer_pid is None
        sink.flush()
    assert_stored(store, data)


def test_a_failure_in_the_writer_is_raised_with_its_own_message(tmp_path: Path, few: int) -> None:
    rng = random.Random(8)
    with sink_on(tmp_path / "blobs") as (_, sink):
        for _ in range(few + 20):
            sink.put(rng.randbytes(500))
        sink.flush()
        stored = len(blob_files(tmp_path / "blobs"))
        assert stored == few + 20
        (tmp_path / "blobs" / "tmp").rmdir()  # empty: temp files there have no names
        more = [rng.randbytes(20_000) for _ in range(3000)]  # more than the ring holds
        with pytest.raises(StorageError, match=r"cannot create a temp file in .*blobs/tmp"):
            put_all_and_flush(sink, more)
    assert len(blob_files(tmp_path / "blobs")) == stored
    assert corrupt_blobs(tmp_path / "blobs") == []


def test_at_most_max_writers_run_and_a_closed_one_frees_its_place(
    tmp_path: Path, few: int, caplog: pytest.LogCaptureFixture
) -> None:
    count = writer.MAX_WRITERS + 2
    data = [blobs(few + 30, seed=20 + i) for i in range(count)]
    with contextlib.ExitStack() as stack:
        opened = [stack.enter_context(sink_on(tmp_path / f"blobs{i}")) for i in range(count)]
        stores = [store for store, _ in opened]
        sinks = [sink for _, sink in opened]
        for sink, d in zip(sinks[:-1], data[:-1], strict=True):
            put_all_and_flush(sink, d)
        pids = [sink.writer_pid for sink in sinks[:-1]]
        assert all(is_writer(pid) for pid in pids[:-1])
        assert pids[-1] is None  # one too many: that sink wrote everything itself
        assert "blob writer processes are running" in caplog.text
        sinks[0].close()  # its writer exits and gives its place up
        assert not is_writer(pids[0])
        put_all_and_flush(sinks[-1], data[-1])
        assert is_writer(sinks[-1].writer_pid)
    for store, d in zip(stores, data, strict=True):
        assert_stored(store, d)
