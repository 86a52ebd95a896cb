"""runc's state on a tmpfs (``tvixd.build.oci.runcroot``): chosen, reused, refused, removed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tvixd.build.oci.runcroot import TMPFS_CANDIDATES, close_runc_root, is_tmpfs, open_runc_root

TMPFS = next((base for base in TMPFS_CANDIDATES if is_tmpfs(base)), None)
needs_tmpfs = pytest.mark.skipif(TMPFS is None, reason="no tmpfs among /run and /dev/shm")


def test_is_tmpfs_tells_them_apart(tmp_path: Path) -> None:
    assert is_tmpfs(Path("/dev/shm")) == ("tmpfs" in _fs_types("/dev/shm"))
    assert is_tmpfs(tmp_path) == ("tmpfs" in _fs_types(str(tmp_path)))
    assert not is_tmpfs(tmp_path / "missing")


def _fs_types(path: str) -> set[str]:
    """The file system type of the mount ``path`` is on, from /proc/self/mounts."""
    best, kind = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, fstype, *_ = line.split()
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fstype
    return {kind}


@needs_tmpfs
def test_a_private_tmpfs_directory_is_chosen_reused_and_removed(tmp_path: Path) -> None:
    root = open_runc_root(tmp_path)
    try:
        assert is_tmpfs(root)
        st = root.lstat()
        assert stat.S_ISDIR(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o700
        assert st.st_uid == os.geteuid()
        assert (tmp_path / "runc-root").read_text().strip() == str(root)
        assert open_runc_root(tmp_path) == root  # a restart finds the containers a crash left
        (root / "container").mkdir()
        close_runc_root(tmp_path, root)  # not empty: kept for the next start
        assert root.exists()
        assert open_runc_root(tmp_path) == root
        (root / "container").rmdir()
        close_runc_root(tmp_path, root)
        assert not root.exists()
        assert not (tmp_path / "runc-root").exists()
    finally:
        if root.exists() and root != tmp_path / "runc":
            for child in root.iterdir():
                child.rmdir()
            root.rmdir()


@needs_tmpfs
def test_a_recorded_directory_not_ours_is_not_used(tmp_path: Path) -> None:
    assert TMPFS is not None
    foreign = tmp_path / "elsewhere"  # not on a tmpfs, not a private directory of ours
    foreign.mkdir(mode=0o755)
    (tmp_path / "runc-root").write_text(f"{foreign}\n")
    root = open_runc_root(tmp_path)
    try:
        assert root != foreign
        assert root.parent == TMPFS
        assert (tmp_path / "runc-root").read_text().strip() == str(root)
    finally:
        close_runc_root(tmp_path, root)
    assert not root.exists()


def test_without_a_tmpfs_the_state_directory_holds_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "runc-root").write_text("/nonexistent/tvixd-runc-x\n")
    root = open_runc_root(state, candidates=(tmp_path / "missing",))
    assert root == state / "runc"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert not (state / "runc-root").exists()
    close_runc_root(state, root)  # never removes the state directory's own
    assert root.exists()
