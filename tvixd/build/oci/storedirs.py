"""Per-build store directories, recycled: a build's store directory is refilled, not rebuilt.

A build sees its input closure as a hardlink farm in its own store directory
(:mod:`~tvixd.build.oci.farm`).  Creating ~500 entries and removing them
again costs ~1000 syscalls per build, although consecutive builds of a
package set share most of their closures.  So the builder keeps one store
directory per concurrent build under ``<builds>/store-<n>`` and, for the
next build, only removes what that build must not see and adds what is
missing (:func:`fill`):

* a :class:`StoreDir` records every entry this module created
  (``entries``: name → :data:`Entry`, what the name holds).  The directory
  is root-owned, ``1775`` (sticky) and every recorded entry is root-owned
  and read-only throughout (see :mod:`~tvixd.build.oci.farm`): the build
  user, without capabilities, can neither remove, rename, replace nor
  modify a recorded entry, only create new names next to them;
* :func:`sweep` removes every unrecorded name after a build (its outputs,
  once ingested, and whatever else it created), so nothing a build wrote
  outlives it; the directory is then *exact* (holds the recorded entries
  and nothing else);
* :func:`fill` removes every recorded name that this build does not want
  (or wants with other contents) and creates the wanted names that are
  missing.  A directory that is not known to be exact is listed first and
  every unrecorded name removed too.  Afterwards the directory holds
  exactly the wanted entries, as a fresh farm would.

A store directory whose filling or sweeping failed is removed whole
(:meth:`StoreDirPool.give_back` with ``ok=False``); the pool directory is
emptied when the builder opens (``builds/`` is cleared), so nothing
depends on what a crashed process left.  :meth:`StoreDirPool.take` hands
out the idle directory that needs the fewest changes.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tvixd.build.oci.farm import Tree, link_tree

__all__ = ["Entry", "StoreDir", "StoreDirPool", "fill", "remove_entry", "sweep"]

Entry = tuple[str, bytes, int]
"""What a store directory entry holds: ``(kind, source, size)``.

``kind`` is ``"link"`` (a hardlink farm of the cache entry ``source``),
``"mount-dir"`` / ``"mount-file"`` (an empty mountpoint for the cache entry
``source``, bind-mounted by the bundle) or ``"symlink"`` (``source`` is the
target); ``size`` counts the entries creating it takes.
"""


@dataclass
class StoreDir:
    """A store directory at ``path`` and the entries this module created in it.

    ``exact``: the directory is known to hold the recorded entries and
    nothing else (it was just swept, or created), so :func:`fill` need not
    list it; any other names it holds are then left alone.
    """

    path: bytes
    entries: dict[bytes, Entry] = field(default_factory=dict)
    exact: bool = False

    def cost(self, wanted: Mapping[bytes, Entry]) -> int:
        """Entries to remove plus entries to create to turn this directory into ``wanted``."""
        kept = 0
        for name, entry in self.entries.items():
            if wanted.get(name) == entry:
                kept += entry[2]
        present = sum(entry[2] for entry in self.entries.values())
        return present - kept + sum(entry[2] for entry in wanted.values()) - kept


def remove_entry(path: bytes) -> None:
    """Remove ``path`` whatever it is (blocking; as root read-only directories are no obstacle)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _create(path: bytes, entry: Entry, tree: Tree | None) -> None:
    kind, source, _ = entry
    if kind == "symlink":
        os.symlink(source, path)
        os.utime(path, (1, 1), follow_symlinks=False)
        return
    if tree is None:
        raise ValueError(f"no cache entry given for {os.fsdecode(path)} ({kind})")
    if kind == "link":
        link_tree(tree, path)
    elif kind == "mount-dir":
        os.mkdir(path, 0o555)
    elif kind == "mount-file":
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444))
    else:
        raise ValueError(f"unknown store entry kind {kind!r}")


def fill(
    store: StoreDir,
    wanted: Mapping[bytes, Entry],
    trees: Mapping[bytes, Tree],
    gid: int,
) -> None:
    """Make ``store`` hold exactly ``wanted`` (see the module docstring; blocking).

    ``trees`` gives the cache entry of every ``link`` / ``mount-*`` name.
    Creates the directory (``root:gid``, ``1775``) when it does not exist.
    ``store.entries`` is updated entry by entry, so after a failure it
    still describes what is there (sweep or remove the directory then).
    """
    entries = store.entries
    join = os.path.join
    if store.exact:  # nothing but the recorded entries: no need to list it
        for name in [n for n, e in entries.items() if wanted.get(n) != e]:
            del entries[name]
            remove_entry(join(store.path, name))
    else:
        try:
            names = os.listdir(store.path)
        except FileNotFoundError:
            os.mkdir(store.path, 0o700)
            os.chown(store.path, 0, gid)
            os.chmod(store.path, 0o1775)
            names = []
        for name in names:
            entry = entries.get(name)
            if entry is None or wanted.get(name) != entry:
                entries.pop(name, None)
                remove_entry(join(store.path, name))
        present = set(names)
        for name in [n for n in entries if n not in present]:  # recorded but gone: recreate it
            del entries[name]
    store.exact = False  # from now on the build may add names
    for name, entry in wanted.items():
        if name not in entries:
            _create(join(store.path, name), entry, trees.get(name))
            entries[name] = entry


def sweep(store: StoreDir) -> None:
    """Remove every name in ``store`` that this module did not create (blocking)."""
    entries = store.entries
    store.exact = False
    for name in os.listdir(store.path):
        if name not in entries:
            remove_entry(os.path.join(store.path, name))
    store.exact = True


class StoreDirPool:
    """Idle store directories under ``directory`` (``store-<n>``); event-loop side only."""

    def __init__(self, directory: Path) -> None:
        self._dir = os.fsencode(directory)
        self._idle: list[StoreDir] = []
        self._next = 0

    def __repr__(self) -> str:
        return f"StoreDirPool({os.fsdecode(self._dir)}, {len(self._idle)} idle)"

    def take(self, wanted: Mapping[bytes, Entry]) -> StoreDir:
        """The idle directory closest to ``wanted``, or a new one (not created yet: :func:`fill` does)."""
        if not self._idle:
            self._next += 1
            return StoreDir(os.path.join(self._dir, b"store-%d" % self._next))
        best = min(range(len(self._idle)), key=lambda i: self._idle[i].cost(wanted))
        return self._idle.pop(best)

    @property
    def idle(self) -> tuple[StoreDir, ...]:
        """The directories waiting for a build."""
        return tuple(self._idle)

    def give_back(self, store: StoreDir) -> None:
        """Make ``store`` available again (it must have been swept)."""
        self._idle.append(store)
