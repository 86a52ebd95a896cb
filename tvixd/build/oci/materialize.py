"""Inputs materialized from the castore once per builder, shared read-only by every build.

A store path used by many builds is written to disk once, under
``<dir>/<key>`` where ``key`` identifies the content (node kind, digest,
executable bit: the name does not matter, builds mount it under their own),
and every build links it into its store directory (:mod:`~tvixd.build.oci.farm`)
or bind-mounts it read-only.  Trees are written to a temporary
``.tmp-*`` sibling, made read-only like a Nix store path (files ``0444`` or
``0555``, directories ``0555``, mtime 1), and renamed into place, so a
``<key>`` entry is always complete; leftovers of a crash are removed by
:meth:`InputCache.open`.  Concurrent requests for the same content wait for
the one export in flight instead of repeating it.

Because builds see the cache's files through hard links, every entry is
checked (:func:`~tvixd.build.oci.farm.scan_tree`: root-owned, no write bits)
once per process, when it is exported or first found on disk; an entry
found unsafe is removed and exported again.

Symlink nodes are not materialized (the bundle creates them).  Nothing is ever evicted: the cache grows with the set
of distinct inputs (delete the directory while the builder is stopped to
reclaim space).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import uuid
from dataclasses import replace
from pathlib import Path

import anyio
import anyio.to_thread

from clients.castore.model import DirectoryNode, FileNode
from clients.castore.protocols import BlobService, DirectoryService
from clients.store.ingest import export_node
from tvixd.build.oci.farm import Tree, UnsafeCacheEntry, scan_tree

__all__ = ["InputCache", "content_key"]

log = logging.getLogger(__name__)


def content_key(node: DirectoryNode | FileNode) -> str:
    """The cache key of a node's content (its name is irrelevant)."""
    kind = b"d" if isinstance(node, DirectoryNode) else (b"x" if node.executable else b"f")
    return hashlib.sha256(kind + node.digest).hexdigest()[:40]


def _identity(node: DirectoryNode | FileNode) -> tuple[bool, bool, bytes]:
    """What :func:`content_key` hashes, as a dictionary key."""
    return (
        isinstance(node, DirectoryNode),
        isinstance(node, FileNode) and node.executable,
        node.digest,
    )


def _make_read_only(root: Path) -> None:
    """Store-path permissions below ``root``: no writes, mtime 1 (children before parents)."""

    def fix(path: str, st: os.stat_result) -> None:
        if stat.S_ISLNK(st.st_mode):
            os.utime(path, (1, 1), follow_symlinks=False)
            return
        mode = 0o555 if stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IXUSR else 0o444
        os.chmod(path, mode)
        os.utime(path, (1, 1))

    if root.is_dir() and not root.is_symlink():
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            for name in filenames + dirnames:
                path = os.path.join(dirpath, name)
                fix(path, os.lstat(path))
    fix(str(root), os.lstat(root))


def _remove(path: Path) -> None:
    """Remove a tree whose directories may be read-only."""
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, _ in os.walk(path):
            os.chmod(dirpath, 0o700)
            for name in dirnames:
                child = os.path.join(dirpath, name)
                if not os.path.islink(child):
                    os.chmod(child, 0o700)
        shutil.rmtree(path)
    else:
        path.unlink()


class InputCache:
    """Materialized inputs under one directory (see the module docstring)."""

    def __init__(self, directory: Path, blobs: BlobService, directories: DirectoryService) -> None:
        self._dir = directory
        self._blobs = blobs
        self._directories = directories
        self._ready: dict[str, Tree] = {}
        self._by_node: dict[tuple[bool, bool, bytes], Tree] = {}  # _ready without the hashing
        self._inflight: dict[str, anyio.Event] = {}

    def __repr__(self) -> str:
        return f"InputCache({self._dir}, {len(self._ready)} known)"

    @classmethod
    async def open(
        cls, directory: Path, blobs: BlobService, directories: DirectoryService
    ) -> InputCache:
        """The cache in ``directory`` (created if needed), without leftovers of interrupted exports."""

        def prepare() -> None:
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            for entry in directory.iterdir():
                if entry.name.startswith(".tmp-"):
                    _remove(entry)

        await anyio.to_thread.run_sync(prepare)
        return cls(directory, blobs, directories)

    @property
    def directory(self) -> Path:
        return self._dir

    def known(self, node: DirectoryNode | FileNode) -> Tree | None:
        """``node``'s checked cache entry if this process has it already (no I/O)."""
        return self._by_node.get(_identity(node))

    async def get(self, node: DirectoryNode | FileNode) -> Tree:
        """``node``'s content on disk (checked, see the module docstring), materializing it if needed.

        Raises :class:`~clients.errors.NotFound` when a blob or directory is
        absent from the castore (then nothing is cached).
        """
        key = content_key(node)
        path = self._dir / key
        while (tree := self._ready.get(key)) is None:
            event = self._inflight.get(key)
            if event is not None:
                await event.wait()  # the export in flight may fail: then check again
                continue
            event = self._inflight[key] = anyio.Event()  # before any await: one exporter per key
            try:
                self._ready[key] = await self._existing(path) or await self._export(node, path)
            finally:
                del self._inflight[key]
                event.set()
        self._by_node[_identity(node)] = tree
        return tree

    async def _existing(self, path: Path) -> Tree | None:
        """The entry already on disk (from an earlier run), if it is there and safe."""

        def check() -> Tree | None:
            if not os.path.lexists(path):
                return None
            try:
                return scan_tree(path)
            except UnsafeCacheEntry as exc:
                log.warning("removing unsafe input cache entry %s: %s", path, exc)
                _remove(path)
                return None

        return await anyio.to_thread.run_sync(check)

    async def _export(self, node: DirectoryNode | FileNode, path: Path) -> Tree:
        tmp = self._dir / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"

        def finish() -> Tree:
            _make_read_only(tmp)
            tree = scan_tree(tmp)  # raises if the export could be modified through a link
            os.rename(tmp, path)
            return replace(tree, root=os.fsencode(path))

        try:
            await export_node(node, self._blobs, self._directories, tmp)
            return await anyio.to_thread.run_sync(finish)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove, tmp)
            raise
