"""A helper process that writes and names small blobs for an :class:`ObjectStoreSink`.

A large ingest stores tens of thousands of small blobs, and per blob the
sink's threads make four system calls (create an anonymous temp file, write,
``linkat``, close).  Each call hands the GIL over between the ingest's six
threads — on two cores those hand-overs cost about as much CPU as the calls
themselves.  So once a sink has stored :data:`START_AFTER` small blobs
itself, it starts this process (``python -m tvixd.castore.blobs.writer``),
whose own interpreter does the file system work with its own GIL, while the
ingest's threads go on walking, hashing and copying.

The two share:

* a ring buffer (a ``memfd``, :data:`RING_BYTES`): the sink copies each small
  blob's bytes in (after hashing them: the sink names every blob itself),
  from :data:`MEMMOVE_MIN` bytes up with ``ctypes.memmove``, which releases
  the GIL;
* a ``SOCK_SEQPACKET`` socket pair for messages:

  - sink → writer: ``W`` + records ``<QI32s`` (the blob's position in the ring
    as an ever-growing byte count, its size, its blake3 digest) — write these;
    ``F`` + ``<Q`` — flush: reply when every blob sent before is durable and
    named; end of file — exit (a group not yet committed is dropped: its temp
    files have no names, so nothing of it remains);
  - writer → sink: ``R`` + ``<Q`` — the ring is consumed up to here (those bytes
    are written to temp files, their space may be reused); ``D`` + ``<Q`` — this
    flush is done; ``E`` + text — a failure (nothing of the failing group was
    named; the writer exits).

The writer commits blobs exactly as the in-process sink does (groups made
durable by ``syncfs`` before any is named, see :mod:`tvixd.castore.blobs.sink`),
so a crash or ``SIGKILL`` of either process leaves at most unnamed temp
files, and then drops each committed group's pages from the page cache: the
next groups' writes reuse them (on a VM whose host reclaims free guest
memory, writing into fresh pages costs several times more).  It trusts the
digests it is sent: only the sink, in the same program, talks to it.  It
ignores ``SIGINT`` (a Ctrl-C reaches the whole process group; the program
that started it decides when its sink closes).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from clients.castore.model import B3Digest
from clients.errors import StorageError

#: Small blobs a sink stores itself before it starts a writer (a build output of a few
#: files never pays for a process start).
START_AFTER = 1024
#: The ring's size: room for a few batches of small blobs (each at most a chunk, 1 MiB).
RING_BYTES = 32 << 20
#: Blobs at least this large are copied into the ring without holding the GIL.
MEMMOVE_MIN = 16 << 10
#: Records per ``W`` message at most, and bytes.
BATCH_RECORDS, BATCH_BYTES = 64, 1 << 20
#: Seconds to wait for the exit status of a writer that closed its socket.
GONE_WAIT = 10
_RECORD = struct.Struct("<QI32s")
_POSITION = struct.Struct("<Q")
_MESSAGE_MAX = 1 + BATCH_RECORDS * _RECORD.size
_REPLY_MAX = 4096  # an ``E`` message's text is cut there


def records(body: bytes) -> Iterator[tuple[int, int, bytes]]:
    """The ``(position, size, digest)`` records of a ``W`` message's body."""
    if len(body) % _RECORD.size:
        raise ValueError(f"a write message of {len(body)} bytes is not whole records")
    return _RECORD.iter_unpack(body)


class WriterProcess:
    """The sink's side: start the writer, pass it blobs, flush, close (one thread at a time)."""

    def __init__(self, root: str, durability: str) -> None:
        """Start a writer for the objectstore at ``root``; raises OSError when it cannot."""
        with contextlib.ExitStack() as undo:  # closes what was opened when a step fails
            self._ring_fd = os.memfd_create("tvixd-blob-ring", os.MFD_CLOEXEC)
            undo.callback(os.close, self._ring_fd)
            os.ftruncate(self._ring_fd, RING_BYTES)
            self._ring = mmap.mmap(self._ring_fd, RING_BYTES)
            undo.callback(self._ring.close)
            # an exported buffer keeps the mapping from closing: dropped first
            self._ring_array = (ctypes.c_char * RING_BYTES).from_buffer(self._ring)
            undo.callback(self._drop_array)
            self._ring_address = ctypes.addressof(self._ring_array)
            self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            undo.callback(self._sock.close)
            with theirs:
                argv = [root, durability, str(self._ring_fd), str(theirs.fileno())]
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "tvixd.castore.blobs.writer", *argv],
                    pass_fds=(self._ring_fd, theirs.fileno()),
                    stdin=subprocess.DEVNULL,
                    env=_child_env(),
                )
            self._undo = undo.pop_all()
        self._head = 0  # bytes of the ring handed out (positions only grow)
        self._tail = 0  # bytes the writer has consumed
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._flushes = 0
        self._failure: StorageError | None = None

    def _drop_array(self) -> None:
        del self._ring_array

    @property
    def pid(self) -> int:
        """The writer's process id."""
        return self._process.pid

    def put(self, data: bytes | bytearray | memoryview, digest: bytes) -> None:
        """Hand a new blob (``digest`` its blake3) to the writer; raises an earlier failure."""
        size = len(data)
        position = self._reserve(size)
        start = position % RING_BYTES
        if size >= MEMMOVE_MIN and isinstance(data, bytes):
            ctypes.memmove(self._ring_address + start, data, size)  # without the GIL
        else:
            self._ring[start : start + size] = data
        self._batch.append(_RECORD.pack(position, size, digest))
        self._batch_bytes += size
        if len(self._batch) >= BATCH_RECORDS or self._batch_bytes >= BATCH_BYTES:
            self._send_batch()

    def _reserve(self, size: int) -> int:
        """The position of ``size`` contiguous bytes of ring space, waiting for the writer."""
        if size > RING_BYTES // 4:
            raise ValueError(f"a blob of {size} bytes is too large for the writer's ring")
        position = self._head
        if position % RING_BYTES + size > RING_BYTES:  # no wrapping inside a blob
            position += RING_BYTES - position % RING_BYTES
        while position + size - self._tail > RING_BYTES:
            self._send_batch()  # the writer cannot free what it was not sent
            self._receive()
        self._head = position + size
        return position

    def _send_batch(self) -> None:
        if self._batch:
            message = b"W" + b"".join(self._batch)
            self._batch, self._batch_bytes = [], 0
            self._send(message)

    def _send(self, message: bytes) -> None:
        """Send ``message``, taking in the writer's replies first.

        The writer answers every batch; were those answers left unread, its
        sends would block once our receive buffer is full, and then ours.
        """
        while self._receive(block=False) is not None:
            pass
        try:
            self._sock.sendall(message)
        except OSError as exc:
            self._gone(exc)

    def _receive(self, *, block: bool = True) -> tuple[bytes, int] | None:
        """One message from the writer (``R`` ones are applied here), or None when
        there is none and not ``block``; raises the writer's failure."""
        self._check()
        try:
            message = self._sock.recv(_REPLY_MAX, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            self._gone(exc)
        if not message:
            self._gone(None)
        kind, body = message[:1], message[1:]
        if kind == b"E":
            self._fail(body.decode(errors="replace"))
        if kind not in (b"R", b"D") or len(body) != _POSITION.size:
            self._fail(f"the blob writer process sent a malformed message {message[:16]!r}")
        (value,) = _POSITION.unpack(body)
        if kind == b"R":
            self._tail = max(self._tail, value)
        return kind, value

    def _gone(self, exc: OSError | None) -> NoReturn:
        """The writer closed its socket (it exits then) or it cannot be reached.

        Its last words come first: a writer that failed sent an ``E`` before it
        exited, which a send that was blocked when it exited has not read yet.
        """
        with contextlib.suppress(OSError):
            while message := self._sock.recv(_REPLY_MAX, socket.MSG_DONTWAIT):
                if message[:1] == b"E":
                    self._fail(message[1:].decode(errors="replace"))
        try:
            code: int | None = self._process.wait(timeout=GONE_WAIT)
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            self._fail(f"cannot reach the blob writer process: {exc or 'it closed its socket'}")
        self._fail(f"the blob writer process exited (status {code}) before finishing")

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _fail(self, what: str) -> NoReturn:
        self._failure = StorageError(what)
        raise self._failure

    def flush(self) -> None:
        """Block until every blob put so far is durable and named; raise a failure."""
        self._send_batch()
        self._flushes += 1
        self._send(b"F" + _POSITION.pack(self._flushes))
        while self._receive() != (b"D", self._flushes):
            pass

    def close(self) -> None:
        """End the writer: it drops what was not flushed (never a partial name) and exits."""
        if self._sock.fileno() < 0:
            return
        self._sock.close()  # end of file for the writer
        try:
            self._process.wait()
        finally:
            self._undo.close()


def _child_env() -> dict[str, str]:
    """Our environment, with the directory this package was imported from first on the path."""
    env = dict(os.environ)
    packages = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (packages, env.get("PYTHONPATH")) if p)
    return env


# -- the writer process


def _serve(root: str, durability: str, ring_fd: int, sock: socket.socket) -> None:
    from tvixd.castore.blobs.objectstore import ObjectStoreBlobService
    from tvixd.castore.blobs.sink import ObjectStoreSink

    store = ObjectStoreBlobService(Path(root))
    try:
        store.prepare()
        sink = ObjectStoreSink(store, durability, writer_process=False, drop_cache=True)
    except OSError as exc:
        sock.sendall(b"E" + f"cannot open blob store at {root}: {exc}".encode()[: _REPLY_MAX - 1])
        return
    ring = mmap.mmap(ring_fd, RING_BYTES)
    view = memoryview(ring)
    try:
        flags = 0  # block for the first message, then take what is there before answering
        consumed = reported = 0
        while True:
            try:
                message = sock.recv(_MESSAGE_MAX, flags)
            except BlockingIOError:
                if consumed > reported:
                    sock.sendall(b"R" + _POSITION.pack(consumed))
                    reported = consumed
                flags = 0
                continue
            if not message:
                break  # the sink closed: what was not flushed is dropped
            flags = socket.MSG_DONTWAIT
            kind, body = message[:1], message[1:]
            if kind == b"W":
                for position, size, digest in records(body):
                    start = position % RING_BYTES
                    if size > RING_BYTES - start or position < consumed:
                        raise StorageError(f"a blob record outside the ring: {position}+{size}")
                    sink.put_named(view[start : start + size], B3Digest(digest).hex())
                    consumed = position + size
            elif kind == b"F" and len(body) == _POSITION.size:
                if consumed > reported:
                    sock.sendall(b"R" + _POSITION.pack(consumed))
                    reported = consumed
                sink.flush()
                sock.sendall(b"D" + body)
            else:
                raise StorageError(f"the blob writer got a malformed message {message[:16]!r}")
    except (StorageError, ValueError) as exc:
        with contextlib.suppress(OSError):
            sock.sendall(b"E" + str(exc).encode()[: _REPLY_MAX - 1])
    finally:
        sink.close()
        view.release()
        ring.close()


def main(argv: list[str]) -> int:
    root, durability, ring_fd, sock_fd = argv
    # a Ctrl-C meant for the program that started us: it closes its sink (our end of file)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sock_fd))
    try:
        _serve(root, durability, int(ring_fd), sock)
    except (BrokenPipeError, ConnectionResetError):
        return 1  # the sink is gone
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
