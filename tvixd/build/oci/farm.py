"""Input closures as hardlink farms: a build's store directory holds exactly its inputs.

Instead of one read-only bind mount per input (runc's cost per mount grows
with the number of mounts), each input is recreated inside the build's own
store directory (the ``inputs_dir`` scratch path: root-owned, group-writable
for the build user, sticky) from the builder's materialized-input cache:

* regular files are **hard links** to the cache's files, which are
  root-owned and have no write bits (:func:`scan_tree` checks it), so the
  build user (not root, no capabilities) can read and execute them but not
  write, chmod, chown or utime them (all need ownership or write access),
  and with ``fs.protected_hardlinks`` cannot even link them elsewhere;
* directories are recreated root-owned, mode ``0555``, mtime 1: nothing can
  be added, removed or renamed inside them;
* symlinks are recreated (root-owned, mtime 1).

The top-level entries live in the sticky store directory and are
root-owned, so the build cannot delete or rename them either; it can only
create new entries (its outputs).  Only the closure is there: nothing else
of the cache is reachable.  Hard links need the cache and the bundles on one
file system (:func:`same_file_system`).

The cost is one ``mkdir``/``link``/``symlink`` per entry of the closure
(plus a ``utime`` per directory and symlink), paid on a worker thread.
"""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Tree", "UnsafeCacheEntry", "link_tree", "same_file_system", "scan_tree"]


class UnsafeCacheEntry(ValueError):
    """A cache entry that a build could modify through a hard link (or of an unknown type)."""


@dataclass(frozen=True)
class Tree:
    """A checked cache entry and its contents, as paths relative to ``root``.

    ``dirs`` is top-down (``b""`` is the root itself when it is a directory);
    ``files`` and ``symlinks`` (path, target) are below those directories.  A
    file entry is ``files == (b"",)``.
    """

    root: bytes
    dirs: tuple[bytes, ...]
    files: tuple[bytes, ...]
    symlinks: tuple[tuple[bytes, bytes], ...]

    @functools.cached_property
    def size(self) -> int:
        """Entries to create when linking this tree."""
        return len(self.dirs) + len(self.files) + len(self.symlinks)


def _check(path: bytes, st: os.stat_result, owner: int) -> None:
    if stat.S_ISLNK(st.st_mode):
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise UnsafeCacheEntry(f"{os.fsdecode(path)} is neither a file, a directory nor a symlink")
    if st.st_uid != owner:
        raise UnsafeCacheEntry(f"{os.fsdecode(path)} is owned by uid {st.st_uid}, not {owner}")
    if st.st_mode & 0o7222:
        raise UnsafeCacheEntry(
            f"{os.fsdecode(path)} has mode {stat.S_IMODE(st.st_mode):04o} "
            "(write, setuid, setgid or sticky bits)"
        )


def scan_tree(root: str | os.PathLike[str]) -> Tree:
    """Walk the cache entry ``root`` and check it can be shared by hard links (blocking).

    Every file and directory must be owned by this process's user and have
    no write, setuid, setgid or sticky bit; only files, directories and
    symlinks may occur.  Raises :class:`UnsafeCacheEntry` naming the first
    offending path.
    """
    top = os.fsencode(root)
    owner = os.geteuid()
    st = os.lstat(top)
    _check(top, st, owner)
    if stat.S_ISREG(st.st_mode):
        return Tree(top, (), (b"",), ())
    if stat.S_ISLNK(st.st_mode):
        return Tree(top, (), (), ((b"", os.readlink(top)),))
    dirs, files, links = [b""], [], []
    todo = [b""]
    while todo:
        rel = todo.pop()
        with os.scandir(os.path.join(top, rel) if rel else top) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            child = os.path.join(rel, entry.name) if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            _check(entry.path, st, owner)
            if stat.S_ISDIR(st.st_mode):
                dirs.append(child)
                todo.append(child)
            elif stat.S_ISLNK(st.st_mode):
                links.append((child, os.readlink(entry.path)))
            else:
                files.append(child)
    return Tree(top, tuple(dirs), tuple(files), tuple(links))


def link_tree(tree: Tree, dest: bytes) -> None:
    """Recreate ``tree`` at ``dest`` (must not exist): files hard-linked, see the module docstring.

    Blocking.  Directories end up ``0555`` with mtime 1, symlinks with mtime 1.
    """
    src = tree.root
    join = os.path.join
    for rel in tree.dirs:
        os.mkdir(join(dest, rel) if rel else dest, 0o555)
    link = os.link
    for rel in tree.files:
        link(join(src, rel) if rel else src, join(dest, rel) if rel else dest)
    for rel, target in tree.symlinks:
        path = join(dest, rel) if rel else dest
        os.symlink(target, path)
        os.utime(path, (1, 1), follow_symlinks=False)
    for rel in reversed(tree.dirs):  # after their children: creating those set the mtime
        path = join(dest, rel) if rel else dest
        os.chmod(path, 0o555)  # mkdir's mode went through the umask
        os.utime(path, (1, 1))


def same_file_system(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` (existing) are on one file system, so hard links work between them."""
    return os.stat(a).st_dev == os.stat(b).st_dev
