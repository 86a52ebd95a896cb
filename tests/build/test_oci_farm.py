"""Inputs as a hardlink farm: a build cannot change, remove or look past its input closure."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import pytest_asyncio

from clients.build.model import Build
from clients.castore.model import FileNode, SymlinkNode
from clients.castore.streams import put_bytes
from clients.store.model import with_name
from nixcompat.derivation import Derivation
from nixcompat.storepath import StorePath, make_text_path
from tests.build.helpers import Store, read_output_file, sh_derivation
from tests.conftest import require_tool
from tvixd.build.oci.farm import UnsafeCacheEntry, link_tree, scan_tree
from tvixd.build.oci.service import OciBuildService, OciConfig

pytestmark = [pytest.mark.runc]


@pytest_asyncio.fixture(params=[None, 0], ids=["linked", "mounted"])
async def any_builder(
    request: pytest.FixtureRequest, tmp_path: Path, store: Store
) -> AsyncIterator[OciBuildService]:
    """A builder linking every input, and one bind-mounting every input (``link_limit=0``)."""
    require_tool("runc")
    config = OciConfig(link_limit=request.param)
    service = await OciBuildService.open(tmp_path / "state", store.blobs, store.directories, config)
    yield service
    await service.close()


async def _inputs(store: Store, busybox: StorePath, tmp_path: Path) -> tuple[StorePath, ...]:
    """A file input, a directory input (with a subdirectory and a symlink) and a symlink input."""
    text = b"a text file\n"
    note = make_text_path("note.txt", text, [])
    digest = await put_bytes(store.blobs, text)
    store.nodes[note] = FileNode(note.basename.encode(), digest, len(text))
    store.references[note] = frozenset()
    tree = tmp_path / "tree-src"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "data").write_bytes(b"data\n")
    (tree / "top").write_bytes(b"top\n")
    os.symlink("sub/data", tree / "link")
    tree_path = await store.add_tree(tree, "tree")
    link = StorePath.from_absolute_path("/nix/store/" + "3" * 32 + "-link")
    store.nodes[link] = with_name(
        SymlinkNode(b"x", f"{tree_path.absolute}/sub".encode()), link.basename.encode()
    )
    store.references[link] = frozenset({tree_path})
    return busybox, note, tree_path, link


def _with_sources(drv: Derivation, sources: tuple[StorePath, ...]) -> Derivation:
    return Derivation(
        outputs=drv.outputs,
        input_derivations={},
        input_sources=tuple(sorted(p.absolute for p in sources)),
        system=drv.system,
        builder=drv.builder,
        arguments=drv.arguments,
        environment=drv.environment,
    )


def _snapshot(directory: Path) -> dict[str, tuple[int, int, float, str]]:
    """Mode, owner, mtime and content digest (or link target) of everything below ``directory``."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    what = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            else:
                what = "dir"
            seen[os.path.relpath(path, directory)] = (st.st_mode, st.st_uid, st.st_mtime, what)
    return seen


@pytest.mark.asyncio
async def test_inputs_cannot_be_changed_and_only_the_closure_is_visible(
    any_builder: OciBuildService, store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    bb, note, tree, link = await _inputs(store, busybox, tmp_path)
    # a first build puts another path (only in its own closure) into the cache
    secret = make_text_path("secret.txt", b"secret\n", [])
    store.nodes[secret] = FileNode(
        secret.basename.encode(), await put_bytes(store.blobs, b"secret\n"), 7
    )
    store.references[secret] = frozenset()
    first = _with_sources(sh_derivation("first", f"cat {secret.absolute} > $out", bb), (bb, secret))
    await store.build(any_builder, first)
    cache = tmp_path / "state" / "inputs"
    before = await anyio.to_thread.run_sync(_snapshot, cache)

    n, t, lk = note.absolute, tree.absolute, link.absolute
    attempts = {
        "file_write": f"echo x > {n}",
        "file_append": f"echo x >> {n}",
        "file_truncate": f"truncate -s 0 {n}",
        "file_delete": f"rm -f {n} && ! test -e {n}",
        "file_rename": f"mv {n} /nix/store/{'4' * 32}-moved",
        "file_chmod": f"chmod 777 {n}",
        "file_touch": f"touch -d 2001-01-01 {n}",
        "dir_write": f"echo x > {t}/top",
        "dir_new_file": f"echo x > {t}/new",
        "dir_mkdir": f"mkdir {t}/sub/new",
        "dir_delete_file": f"rm -f {t}/sub/data && ! test -e {t}/sub/data",
        "dir_rename_file": f"mv {t}/top {t}/moved",
        "dir_rename_sub": f"mv {t}/sub /build/sub",
        "dir_chmod": f"chmod 777 {t}/sub",
        "dir_remove": f"rm -rf {t} && ! test -e {t}",
        "dir_rename": f"mv {t} /nix/store/{'5' * 32}-moved",
        "dir_symlink_replace": f"rm -f {t}/link && ln -s /etc {t}/link",
        "symlink_remove": f"rm -f {lk} && ! test -L {lk}",
        "symlink_rename": f"mv {lk} /nix/store/{'6' * 32}-moved",
        "store_new": f"mkdir /nix/store/{'7' * 32}-new",
    }
    reads = (
        f"cat {n} > $out/note; cat {t}/sub/data > $out/data; cat {t}/link > $out/via_link;"
        f" ls {lk}/ > $out/via_input_link; ls -a /nix/store | sort > $out/store;"
        f" (ls {secret.absolute} || echo absent) > $out/secret 2>/dev/null;"
        " (find / -path /proc -prune -o -name '*secret.txt*' -print 2>/dev/null; true) > $out/found;"
        f" stat -c '%a %u %Y' {n} {t} {t}/sub {t}/sub/data > $out/stat"
    )
    script = (
        "mkdir $out\n"
        + "\n".join(
            f"if ({c}) 2>/dev/null; then echo {k}=ok >> $out/r; else echo {k}=denied >> $out/r; fi"
            for k, c in attempts.items()
        )
        + "\n"
        + reads
    )
    drv = _with_sources(sh_derivation("attack", script, bb), (bb, note, tree, link))
    build = await store.build(any_builder, drv)

    async def read(name: bytes) -> bytes:
        return await read_output_file(store, build, name)

    got = dict(line.split("=") for line in (await read(b"r")).decode().split())
    assert got == {k: "ok" if k == "store_new" else "denied" for k in attempts}
    assert await read(b"note") == b"a text file\n"
    assert await read(b"data") == b"data\n"
    assert await read(b"via_link") == b"data\n"
    assert await read(b"via_input_link") == b"data\n"
    out = drv.outputs["out"].path.rsplit("/", 1)[1]
    expected = {".", "..", out, "7" * 32 + "-new"} | {p.basename for p in (bb, note, tree, link)}
    assert set((await read(b"store")).decode().split()) == expected
    assert await read(b"secret") == b"absent\n"
    assert await read(b"found") == b""
    # like a Nix store: read-only, root-owned, mtime 1
    assert (await read(b"stat")).decode().split("\n")[:4] == [
        "444 0 1", "555 0 1", "555 0 1", "444 0 1"
    ]  # fmt: skip
    after = await anyio.to_thread.run_sync(_snapshot, cache)
    assert {k: after[k] for k in before} == before


@pytest.mark.asyncio
async def test_a_recycled_store_directory_shows_only_the_next_closure_unchanged(
    any_builder: OciBuildService, store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    bb, note, tree, link = await _inputs(store, busybox, tmp_path)
    # a build without them plants names of the next build's inputs, and junk hard to remove
    plant = (
        f"echo evil > {note.absolute}; mkdir -p {tree.absolute}/sub;"
        f" echo evil > {tree.absolute}/sub/data; ln -s /etc {link.absolute};"
        f" mkdir -p /nix/store/{'7' * 32}-junk/a/b; chmod 0 /nix/store/{'7' * 32}-junk/a/b"
        f" /nix/store/{'7' * 32}-junk/a; echo done > $out"
    )
    await store.build(any_builder, _with_sources(sh_derivation("plant", plant, bb), (bb,)))
    reads = (
        f"mkdir $out; cat {note.absolute} > $out/note; cat {tree.absolute}/sub/data > $out/data;"
        f" readlink {link.absolute} > $out/link; ls -a /nix/store | sort > $out/store;"
        f" stat -c '%a %u %Y' {note.absolute} {tree.absolute}/sub/data > $out/stat"
    )
    drv = _with_sources(sh_derivation("reads", reads, bb), (bb, note, tree, link))
    build = await store.build(any_builder, drv)

    async def read(build: Build, name: bytes) -> bytes:
        return await read_output_file(store, build, name)

    assert await read(build, b"note") == b"a text file\n"
    assert await read(build, b"data") == b"data\n"
    assert await read(build, b"link") == f"{tree.absolute}/sub\n".encode()
    assert (await read(build, b"stat")).decode().split("\n")[:2] == ["444 0 1", "444 0 1"]
    out = drv.outputs["out"].path.rsplit("/", 1)[1]
    expected = {".", "..", out} | {p.basename for p in (bb, note, tree, link)}
    assert set((await read(build, b"store")).decode().split()) == expected
    # and the next build, with a smaller closure, no longer sees them
    drv = _with_sources(sh_derivation("lists", "mkdir $out; ls -a /nix/store > $out/ls", bb), (bb,))
    build = await store.build(any_builder, drv)
    listing = (await read(build, b"ls")).decode().split()
    assert set(listing) == {".", "..", drv.outputs["out"].path.rsplit("/", 1)[1], bb.basename}
    (recycled,) = any_builder.store_dirs.idle  # all three builds used one directory
    assert sorted(recycled.entries) == [bb.basename.encode()]


@pytest.mark.asyncio
async def test_build_results_are_the_same_linked_or_mounted(
    store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    bb, note, tree, link = await _inputs(store, busybox, tmp_path)
    # without the link count: linked files have one more (the cache's), like an optimised store
    listing = f"ls -laR {tree.absolute}/ {link.absolute}/ {note.absolute}"
    script = f"mkdir $out; {listing} | awk '{{$2=\"\"; print}}' > $out/ls"
    drv = _with_sources(sh_derivation("ls", script, bb), (bb, note, tree, link))
    outputs = []
    for limit in (None, 0, 2):  # 2: the tree is mounted, busybox (3 entries) too, the note linked
        builder = await OciBuildService.open(
            tmp_path / f"state-{limit}", store.blobs, store.directories, OciConfig(link_limit=limit)
        )
        try:
            build = await store.build(builder, drv)
        finally:
            await builder.close()
        outputs.append(await read_output_file(store, build, b"ls"))
    assert outputs[0] == outputs[1] == outputs[2]
    assert b"-r--r--r--  root root 5 Jan 1 1970 data" in outputs[0]


@pytest.mark.asyncio
async def test_cache_on_another_file_system_falls_back_to_bind_mounts(
    store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    require_tool("runc")
    inputs = tmp_path / "state" / "inputs"
    inputs.mkdir(parents=True)
    await anyio.run_process(["mount", "-t", "tmpfs", "-o", "size=64m", "tvixd-test", inputs])
    try:
        builder = await OciBuildService.open(tmp_path / "state", store.blobs, store.directories)
        try:
            drv = sh_derivation("elsewhere", f"ls {busybox.absolute}/bin > $out", busybox)
            build = await store.build(builder, drv)
        finally:
            await builder.close()
        assert isinstance(build.outputs[0], FileNode)
        assert build.outputs[0].size == len(b"busybox\n")
    finally:
        await anyio.run_process(["umount", inputs])


@pytest.mark.asyncio
async def test_tampered_cache_entries_are_replaced(
    store: Store, busybox: StorePath, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    builder = await OciBuildService.open(state, store.blobs, store.directories)
    await store.build(builder, sh_derivation("one", "mkdir $out", busybox))
    await builder.close()
    (entry,) = (state / "inputs").iterdir()
    os.chmod(entry / "bin" / "busybox", 0o755)  # writable by its owner: unsafe to link
    again = await OciBuildService.open(state, store.blobs, store.directories)
    try:
        await store.build(again, sh_derivation("two", "mkdir $out", busybox))
    finally:
        await again.close()
    assert stat.S_IMODE(os.lstat(entry / "bin" / "busybox").st_mode) == 0o555


def test_scan_tree_accepts_store_like_trees_and_links_them(tmp_path: Path) -> None:
    root = tmp_path / "entry"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "f").write_bytes(b"f")
    os.symlink("a/f", root / "l")
    for path in (root / "a" / "f", root / "a" / "b", root / "a", root):
        os.chmod(path, 0o444 if path.is_file() else 0o555)
    tree = scan_tree(root)
    assert (tree.dirs, tree.files, tree.symlinks) == (
        (b"", b"a", b"a/b"),
        (b"a/f",),
        ((b"l", b"a/f"),),
    )
    assert tree.size == 5
    dest = tmp_path / "farm"
    link_tree(tree, os.fsencode(dest))
    assert os.lstat(dest / "a" / "f").st_ino == os.lstat(root / "a" / "f").st_ino
    assert os.readlink(dest / "l") == "a/f"
    for path in (dest, dest / "a", dest / "a" / "b"):
        st = os.lstat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o555, 1.0)
    assert os.lstat(dest / "l").st_mtime == 1.0


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("writable_file", "has mode 0644"),
        ("writable_dir", "has mode 0755"),
        ("setuid", "has mode 4555"),
        ("fifo", "is neither a file, a directory nor a symlink"),
        ("foreign_owner", "is owned by uid 1000"),
    ],
)
def test_scan_tree_refuses_what_a_build_could_modify(
    tmp_path: Path, what: str, message: str
) -> None:
    root = tmp_path / "entry"
    root.mkdir()
    target = root / "x"
    if what == "fifo":
        os.mkfifo(target)
    elif what == "writable_dir":
        target.mkdir()
        os.chmod(target, 0o755)
    else:
        target.write_bytes(b"x")
        os.chmod(target, {"writable_file": 0o644, "setuid": 0o4555}.get(what, 0o444))
        if what == "foreign_owner":
            os.chown(target, 1000, 100)
    os.chmod(root, 0o555)
    with pytest.raises(UnsafeCacheEntry, match=message) as info:
        scan_tree(root)
    assert str(target) in str(info.value)
