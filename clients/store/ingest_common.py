"""What both ingest paths share: the result type and careful file reading."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from clients.castore.model import Node
from nixcompat.nar import NarError

#: How files are opened for ingestion (never following a symlink swapped in, never blocking).
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True)
class IngestResult:
    """The root node (named as requested), the NAR's size and sha256, and statistics.

    ``blobs_uploaded`` / ``bytes_uploaded`` count the blobs actually sent
    (blobs the blob service already had are not).
    """

    node: Node
    nar_size: int
    nar_sha256: bytes
    files: int = 0
    file_bytes: int = 0
    directories: int = 0
    symlinks: int = 0
    blobs_uploaded: int = 0
    bytes_uploaded: int = 0


def open_regular(path: bytes) -> tuple[int, int, bool, tuple[int, int]]:
    """Open ``path`` (met as a regular file by the walk) for reading: ``(fd, size, executable,
    (dev, inode))``; :class:`NarError` when it is not a regular file any more."""
    fd = os.open(path, READ_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NarError(f"{os.fsdecode(path)!r} changed type while being ingested")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size, bool(st.st_mode & stat.S_IXUSR), (st.st_dev, st.st_ino)


def shrank(path: bytes, size: int, remaining: int) -> NarError:
    return NarError(
        f"{os.fsdecode(path)!r} shrank while being ingested: got {size - remaining} of {size} bytes"
    )


def read_exactly(fd: int, size: int, path: bytes) -> bytes:
    data = os.read(fd, size) if size else b""
    while len(data) < size:  # short reads are rare (regular files), but possible
        more = os.read(fd, size - len(data))
        if not more:
            raise shrank(path, size, size - len(data))
        data += more
    return data
