"""Materialising a NAR on disk, safely.

:func:`restore_nar` creates the NAR's root at ``dest`` (which must not exist;
its parent must).  Everything is created relative to directory file
descriptors with ``O_NOFOLLOW``/``O_EXCL``, so neither a symlink the NAR
itself creates nor one planted in the way is ever followed, and names can't
escape (the reader rejects ``/``, ``.``, ``..``).  Modes are fixed regardless
of the umask: regular files 0o644 (0o755 when executable), directories
0o755 (Nix would make store paths read-only later; that is up to the caller).
Timestamps are left alone.

On error (``NarError`` for a bad NAR, ``OSError`` from the file system) the
partial tree is left in place: restore into a fresh temporary path and
remove it on failure.
"""

from __future__ import annotations

import os

from nixcompat.nar.reader import MAX_DEPTH, NarEntry, NarKind, Readable, read_nar

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIRS = 64  # directory descriptors kept open at most (besides the root)


class _DirFds:
    """Descriptors of the open directory chain, by depth; evicted ones reopen on demand."""

    def __init__(self) -> None:
        self.fds: list[int | None] = []

    def truncate(self, depth: int) -> None:
        while len(self.fds) > depth:
            fd = self.fds.pop()
            if fd is not None:
                os.close(fd)

    def get(self, path: tuple[bytes, ...], depth: int) -> int:
        """The descriptor of the directory ``path[:depth]`` (depth 0 is the root)."""
        base = depth
        while self.fds[base] is None:  # the root (depth 0) is never evicted
            base -= 1
        fd = self.fds[base]
        assert fd is not None
        for i in range(base + 1, depth + 1):
            fd = os.open(path[i - 1], _DIR_FLAGS, dir_fd=fd)
            self.fds[i] = fd
            self._evict(i)
        return fd

    def push(self, fd: int) -> None:
        self.fds.append(fd)
        self._evict(len(self.fds) - 1)

    def _evict(self, deepest: int) -> None:
        """Closes the descriptor just out of the window above ``deepest`` (not the root)."""
        stale = deepest - _OPEN_DIRS
        if stale >= 1:
            fd = self.fds[stale]
            if fd is not None:
                os.close(fd)
                self.fds[stale] = None

    def close(self) -> None:
        self.truncate(0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _create(entry: NarEntry, name: bytes, dir_fd: int | None) -> int | None:
    """Creates one node; returns the descriptor of a created directory."""
    if entry.kind is NarKind.DIRECTORY:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        os.fchmod(fd, 0o755)
        return fd
    if entry.kind is NarKind.SYMLINK:
        assert entry.target is not None
        os.symlink(entry.target, name, dir_fd=dir_fd)
        return None
    assert entry.contents is not None
    fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        for chunk in entry.contents.chunks():
            _write_all(fd, chunk)
        os.fchmod(fd, 0o755 if entry.executable else 0o644)
    finally:
        os.close(fd)
    return None


def restore_nar(
    source: Readable | bytes | bytearray | memoryview,
    dest: str | os.PathLike[str] | bytes,
    *,
    reject_trailing: bool = True,
    max_depth: int = MAX_DEPTH,
) -> None:
    """Create the file-system object of the NAR read from ``source`` at ``dest``."""
    dest_b = os.fsencode(dest)
    dirs = _DirFds()
    try:
        for entry in read_nar(source, reject_trailing=reject_trailing, max_depth=max_depth):
            depth = len(entry.path)
            if depth == 0:
                fd = _create(entry, dest_b, None)
            else:
                dirs.truncate(depth)
                fd = _create(entry, entry.path[-1], dirs.get(entry.path, depth - 1))
            if fd is not None:
                dirs.push(fd)
    finally:
        dirs.close()
