"""A helper process that writes and names small blobs for an :class:`ObjectStoreSink`.

A large ingest stores tens of thousands of small blobs, and per blob the
sink's threads make four system calls (create an anonymous temp file, write,
``linkat``, close).  Each call hands the GIL over between the ingest's six
threads — on two cores those hand-overs cost about as much CPU as the calls
themselves.  So once a sink has stored :data:`START_AFTER` new small blobs
itself, it starts this process (``python -P -m tvixd.castore.blobs.writer``,
in ``/``, in its own process group), whose own interpreter does the file
system work with its own GIL, while the ingest's threads go on walking,
hashing and copying.  The sink keeps writing blobs itself until the writer
has said hello, and for good when the writer cannot start (see
:class:`ObjectStoreSink`); at most :data:`MAX_WRITERS` writers run at a time
in one program.

The two share:

* a ring buffer (a ``memfd`` of :data:`RING_BYTES`; the writer maps what it
  is given): the sink copies each small blob's bytes in (after hashing them:
  the sink names every blob itself), from :data:`MEMMOVE_MIN` bytes up with
  ``ctypes.memmove``, which releases the GIL;
* a ``SOCK_SEQPACKET`` socket pair for messages:

  - writer → sink, first: ``H`` + ``<I`` :data:`PROTOCOL` — ready;
  - sink → writer: ``W`` + records ``<QI32s`` (the blob's position in the ring
    as an ever-growing byte count, its size, its blake3 digest) — write these;
    ``F`` + ``<Q`` — flush: reply when every blob sent before is durable and
    named; end of file — exit (a group not yet handed to its committer is
    dropped: its temp files have no names, so nothing of it remains);
  - writer → sink: ``R`` + ``<Q`` — the ring is consumed up to here (those bytes
    are written to temp files, their space may be reused; sent when the writer
    has caught up, and at least every quarter of the ring); ``D`` + ``<Q`` —
    this flush is done; ``E`` + text — a failure, after which the writer exits
    with status 1 (a name of the failing group is given only once the group's
    contents are durable, as always).

The writer commits blobs exactly as the in-process sink does (groups made
durable by ``syncfs`` before any is named, see :mod:`tvixd.castore.blobs.sink`),
so a crash or ``SIGKILL`` of either process leaves at most unnamed temp
files, and then drops each committed group's pages from the page cache: the
next groups' writes reuse them (on a VM whose host reclaims free guest
memory, writing into fresh pages costs several times more).  It trusts the
digests it is sent: only the sink, in the same program, talks to it.  It
ignores ``SIGINT``: the program that started it decides when its sink
closes.  Its standard error goes to a temp file whose end is quoted when it
fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from clients.castore.model import B3Digest
from clients.errors import StorageError

#: New small blobs a sink stores itself before it starts a writer (a build output of a
#: few files never pays for a process start).
START_AFTER = 1024
#: The ring's size: room for a few batches of small blobs (each at most a chunk, 1 MiB).
RING_BYTES = 32 << 20
#: Blobs at least this large are copied into the ring without holding the GIL.
MEMMOVE_MIN = 16 << 10
#: Records per ``W`` message at most, and bytes.
BATCH_RECORDS, BATCH_BYTES = 64, 1 << 20
#: Writer processes running at a time in this program at most (a sink beyond it writes itself).
MAX_WRITERS = 4
#: Seconds to wait for the exit status of a writer that closed its socket.
GONE_WAIT = 10
#: The message format; a writer that says another one (an upgrade under a running
#: program) is not used.
PROTOCOL = 1
_RECORD = struct.Struct("<QI32s")
_POSITION = struct.Struct("<Q")
_HELLO = b"H" + struct.pack("<I", PROTOCOL)
_MESSAGE_MAX = 1 + BATCH_RECORDS * _RECORD.size
_REPLY_MAX = 4096  # an ``E`` message's text is cut there
_STDERR_QUOTED = 1000  # bytes of a failed writer's standard error quoted in the error
_slots = threading.BoundedSemaphore(MAX_WRITERS)


def records(body: bytes) -> Iterator[tuple[int, int, bytes]]:
    """The ``(position, size, digest)`` records of a ``W`` message's body."""
    if len(body) % _RECORD.size:
        raise ValueError(f"a write message of {len(body)} bytes is not whole records")
    return _RECORD.iter_unpack(body)


class WriterProcess:
    """The sink's side: start the writer, pass it blobs, flush, close (one thread at a time)."""

    def __init__(self, root: str, durability: str) -> None:
        """Start a writer for the objectstore at ``root`` (it is ready once :meth:`ready`).

        Raises OSError (or another ``Exception``: no ``memfd_create``, no
        ``sys.executable``) when it cannot be started, also when
        :data:`MAX_WRITERS` are running.
        """
        with contextlib.ExitStack() as undo:  # closes what was opened when a step fails
            if not _slots.acquire(blocking=False):
                raise OSError(errno.EAGAIN, f"{MAX_WRITERS} blob writer processes are running")
            undo.callback(_slots.release)
            self._ring_fd = os.memfd_create("tvixd-blob-ring", os.MFD_CLOEXEC)
            undo.callback(os.close, self._ring_fd)
            self._ring_bytes = RING_BYTES
            os.ftruncate(self._ring_fd, self._ring_bytes)
            self._ring = mmap.mmap(self._ring_fd, self._ring_bytes)
            undo.callback(self._ring.close)
            # an exported buffer keeps the mapping from closing: dropped first
            self._ring_array = (ctypes.c_char * self._ring_bytes).from_buffer(self._ring)
            undo.callback(self._drop_array)
            self._ring_address = ctypes.addressof(self._ring_array)
            self._stderr = undo.enter_context(tempfile.TemporaryFile(prefix="tvixd-writer-"))
            self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            undo.callback(self._sock.close)
            with theirs:
                argv = [root, durability, str(self._ring_fd), str(theirs.fileno())]
                self._process = subprocess.Popen(
                    [sys.executable, "-P", "-m", "tvixd.castore.blobs.writer", *argv],
                    pass_fds=(self._ring_fd, theirs.fileno()),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=self._stderr,
                    cwd="/",
                    env=_child_env(),
                    process_group=0,  # a Ctrl-C to our process group is not for it
                )
            self._undo = undo.pop_all()
        self._ready = False
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

    @property
    def max_blob(self) -> int:
        """The largest blob this writer takes (a quarter of its ring)."""
        return self._ring_bytes // 4

    def ready(self) -> bool:
        """Whether the writer said hello (does not wait); raises StorageError when it never will."""
        if not self._ready:
            message = self._message(block=False)
            if message is None:
                return False
            if message != _HELLO:
                self._fail(f"the blob writer process answered {message[:16]!r}, not hello")
            self._ready = True
        return True

    def put(self, data: bytes | bytearray | memoryview, digest: bytes) -> None:
        """Hand a new blob (``digest`` its blake3, at most :attr:`max_blob` bytes) to the
        ready writer; raises an earlier failure."""
        size = len(data)
        if not self._ready or size > self.max_blob:
            raise ValueError(f"a blob of {size} bytes for a writer (ready: {self._ready})")
        position = self._reserve(size)
        start = position % self._ring_bytes
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
        ring = self._ring_bytes
        position = self._head
        if position % ring + size > ring:  # no wrapping inside a blob
            position += ring - position % ring
        while position + size - self._tail > ring:
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
        message = self._message(block=block)
        if message is None:
            return None
        kind, body = message[:1], message[1:]
        if kind not in (b"R", b"D") or len(body) != _POSITION.size:
            self._fail(f"the blob writer process sent a malformed message {message[:16]!r}")
        (value,) = _POSITION.unpack(body)
        if kind == b"R":
            self._tail = max(self._tail, value)
        return kind, value

    def _message(self, *, block: bool) -> bytes | None:
        """The writer's next message (None: none yet, not ``block``); raises its failure
        (``E``, or its end) and an earlier one."""
        self._check()
        try:
            message = self._sock.recv(_REPLY_MAX, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            self._gone(exc)
        if not message:
            self._gone(None)
        self._raise_reported(message)
        return message

    def _raise_reported(self, message: bytes) -> None:
        """Raise the failure an ``E`` message reports."""
        if message[:1] == b"E":
            self._fail(message[1:].decode(errors="replace"))

    def _gone(self, exc: OSError | None) -> NoReturn:
        """The writer closed its socket (it exits then) or it cannot be reached.

        Its last words come first: a writer that failed sent an ``E`` before it
        exited, which a send that was blocked when it exited has not read yet
        (a reset may be reported before the messages queued: read on once).
        """
        for _ in range(2):
            try:
                while message := self._sock.recv(_REPLY_MAX, socket.MSG_DONTWAIT):
                    self._raise_reported(message)
                break
            except ConnectionResetError:
                continue
            except OSError:
                break
        try:
            code: int | None = self._process.wait(timeout=GONE_WAIT)
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            self._fail(f"cannot reach the blob writer process: {exc or 'it closed its socket'}")
        self._fail(f"the blob writer process exited (status {code}) before finishing{self._said()}")

    def _said(self) -> str:
        """The end of the writer's standard error, quoted (empty when it wrote nothing)."""
        try:
            size = os.fstat(self._stderr.fileno()).st_size
            said = os.pread(self._stderr.fileno(), _STDERR_QUOTED, max(0, size - _STDERR_QUOTED))
        except OSError:
            return ""
        text = said.decode(errors="replace").strip()
        return f"; it said: {text}" if text else ""

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _fail(self, what: str) -> NoReturn:
        self._failure = StorageError(what)
        raise self._failure

    def flush(self) -> None:
        """Block until every blob put so far is durable and named; raise a failure."""
        if not self._ready:
            return  # nothing was put
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


def _report_failure(sock: socket.socket, text: str) -> None:
    """Send the sink an ``E`` message (cut to what it reads)."""
    sock.sendall(b"E" + text.encode()[: _REPLY_MAX - 1])


def _serve(root: str, durability: str, ring_fd: int, sock: socket.socket) -> bool:
    """Write what the sink sends until it closes; False after a failure (reported with ``E``)."""
    from tvixd.castore.blobs.objectstore import ObjectStoreBlobService
    from tvixd.castore.blobs.sink import ObjectStoreSink

    store = ObjectStoreBlobService(Path(root))
    try:
        store.prepare()
        sink = ObjectStoreSink(store, durability, writer_process=False, drop_cache=True)
    except OSError as exc:
        _report_failure(sock, f"cannot open blob store at {root}: {exc}")
        return False
    try:
        ring_bytes = os.fstat(ring_fd).st_size
        ring = mmap.mmap(ring_fd, ring_bytes)
    except (OSError, ValueError) as exc:
        sink.close()
        _report_failure(sock, f"cannot map the blob ring: {exc}")
        return False
    view = memoryview(ring)
    consumed = reported = 0

    def report() -> None:
        """Tell the sink how far the ring is consumed, if further than last told."""
        nonlocal reported
        if consumed > reported:
            sock.sendall(b"R" + _POSITION.pack(consumed))
            reported = consumed

    try:
        sock.sendall(_HELLO)
        flags = 0  # block for the first message, then take what is there before answering
        while True:
            try:
                message = sock.recv(_MESSAGE_MAX, flags)
            except BlockingIOError:  # caught up: say how far
                report()
                flags = 0
                continue
            if not message:
                return True  # the sink closed: what was not flushed is dropped
            flags = socket.MSG_DONTWAIT
            kind, body = message[:1], message[1:]
            if kind == b"W":
                for position, size, digest in records(body):
                    start = position % ring_bytes
                    if size > ring_bytes - start or position < consumed:
                        raise StorageError(f"a blob record outside the ring: {position}+{size}")
                    sink.put_named(view[start : start + size], B3Digest(digest).hex())
                    consumed = position + size
                if consumed - reported >= ring_bytes // 4:  # the sink may be waiting for room
                    report()
            elif kind == b"F" and len(body) == _POSITION.size:
                report()
                sink.flush()
                sock.sendall(b"D" + body)
            else:
                raise StorageError(f"the blob writer got a malformed message {message[:16]!r}")
    except (StorageError, ValueError) as exc:
        with contextlib.suppress(OSError):
            _report_failure(sock, str(exc))
        return False
    finally:
        sink.close()
        view.release()
        ring.close()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the sink decides when we end
    root, durability, ring_fd, sock_fd = argv
    sock = socket.socket(fileno=int(sock_fd))
    try:
        return 0 if _serve(root, durability, int(ring_fd), sock) else 1
    except (BrokenPipeError, ConnectionResetError):
        return 1  # the sink is gone
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
