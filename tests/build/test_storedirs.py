"""Recycled store directories: refilled to hold exactly the wanted entries, swept after a build."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tvixd.build.oci.farm import Tree, scan_tree
from tvixd.build.oci.storedirs import Entry, StoreDir, StoreDirPool, fill, sweep

GID = 100


def _cache(tmp_path: Path, count: int) -> dict[bytes, Tree]:
    """``count`` read-only cache entries: files, and every third one a directory with a file."""
    cache = tmp_path / "inputs"
    cache.mkdir()
    trees = {}
    for i in range(count):
        path = cache / f"entry-{i}"
        if i % 3 == 0:
            path.mkdir()
            (path / "f").write_text(f"{i}\n")
            os.chmod(path / "f", 0o444)
            os.chmod(path, 0o555)
        else:
            path.write_text(f"{i}\n")
            os.chmod(path, 0o444)
        trees[f"{i:02d}-input".encode()] = scan_tree(path)
    return trees


def _wanted(trees: dict[bytes, Tree], names: list[bytes]) -> dict[bytes, Entry]:
    return {n: ("link", trees[n].root, trees[n].size) for n in names}


def _inodes(store: StoreDir) -> dict[bytes, int]:
    return {n: os.lstat(os.path.join(store.path, n)).st_ino for n in os.listdir(store.path)}


def test_fill_sweep_and_refill_keep_exactly_the_wanted_entries(tmp_path: Path) -> None:
    trees = _cache(tmp_path, 9)
    names = sorted(trees)
    store = StoreDir(os.fsencode(tmp_path / "store-1"))
    fill(store, _wanted(trees, names[:6]), trees, GID)
    st = os.lstat(store.path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, GID, 0o1775)
    assert sorted(os.listdir(store.path)) == names[:6]
    data = os.path.join(store.path, names[0], b"f")
    assert os.lstat(data).st_ino == os.lstat(os.path.join(trees[names[0]].root, b"f")).st_ino
    # what a build adds is swept; the directory is then known to be exact
    os.mkdir(os.path.join(store.path, b"output"))
    os.mkdir(os.path.join(store.path, b"output", b"sub"))
    os.chmod(os.path.join(store.path, b"output", b"sub"), 0)
    with open(os.path.join(store.path, names[7]), "w") as f:  # a name a later build needs
        f.write("planted")
    sweep(store)
    assert store.exact
    assert sorted(os.listdir(store.path)) == names[:6]
    before = _inodes(store)
    # the next build: two inputs gone, three new (one of them the planted name), one changed
    wanted = _wanted(trees, names[2:9])
    wanted[names[3]] = ("link", trees[names[8]].root, trees[names[8]].size)
    fill(store, wanted, {**trees, names[3]: trees[names[8]]}, GID)
    assert sorted(os.listdir(store.path)) == names[2:9]
    assert store.entries == wanted
    after = _inodes(store)
    assert {n for n in names[2:6] if after[n] == before[n]} == {names[2], names[4], names[5]}
    with open(os.path.join(store.path, names[7]), "rb") as f:
        assert f.read() == b"7\n"
    with open(os.path.join(store.path, names[3]), "rb") as f:
        assert f.read() == b"8\n"


def test_a_directory_not_known_to_be_exact_is_listed_and_cleaned(tmp_path: Path) -> None:
    trees = _cache(tmp_path, 4)
    names = sorted(trees)
    store = StoreDir(os.fsencode(tmp_path / "store-1"))
    fill(store, _wanted(trees, names[:2]), trees, GID)
    os.symlink("/etc", os.path.join(store.path, names[2]))  # left by a build, never swept
    assert not store.exact
    fill(store, _wanted(trees, names[1:3]), trees, GID)
    assert sorted(os.listdir(store.path)) == names[1:3]
    assert not os.path.islink(os.path.join(store.path, names[2]))
    # a recorded entry that vanished (cannot happen to a build) is made again, not trusted
    os.unlink(os.path.join(store.path, names[1]))
    fill(store, _wanted(trees, names[1:3]), trees, GID)
    assert sorted(os.listdir(store.path)) == names[1:3]


def test_symlinks_and_mountpoints_are_recorded_like_links(tmp_path: Path) -> None:
    trees = _cache(tmp_path, 2)
    store = StoreDir(os.fsencode(tmp_path / "store-1"))
    dir_name, file_name = sorted(trees)  # entry 0 is a directory, entry 1 a file
    wanted: dict[bytes, Entry] = {
        b"link": ("symlink", b"/nix/store/x", 1),
        dir_name: ("mount-dir", trees[dir_name].root, 1),
        file_name: ("mount-file", trees[file_name].root, 1),
    }
    fill(store, wanted, trees, GID)
    assert os.readlink(os.path.join(store.path, b"link")) == b"/nix/store/x"
    assert os.lstat(os.path.join(store.path, b"link")).st_mtime == 1
    assert os.listdir(os.path.join(store.path, dir_name)) == []
    assert os.lstat(os.path.join(store.path, file_name)).st_size == 0
    wanted[b"link"] = ("symlink", b"/nix/store/y", 1)
    fill(store, wanted, trees, GID)
    assert os.readlink(os.path.join(store.path, b"link")) == b"/nix/store/y"


def test_the_pool_hands_out_the_closest_idle_directory(tmp_path: Path) -> None:
    pool = StoreDirPool(tmp_path)
    first, second = pool.take({}), pool.take({})
    assert first.path != second.path
    first.entries = {b"a": ("symlink", b"t", 1), b"b": ("symlink", b"t", 1)}
    second.entries = {b"c": ("symlink", b"t", 1)}
    pool.give_back(first)
    pool.give_back(second)
    assert pool.take({b"c": ("symlink", b"t", 1), b"d": ("symlink", b"t", 1)}) is second
    assert pool.take({}) is first
    assert pool.take({}).path not in (first.path, second.path)
