"""Test data for the NAR bridge, ingestion, nix+file and tvixctl suites.

* :func:`rich_tree` — a tree with every case Nix cares about (executables,
  empty files, symlinks, empty directories, unicode and sort-sensitive names,
  files around the 1 MiB chunk size, a 3 MiB file);
* :func:`materialize` — the vectors' declarative trees, on disk;
* :func:`nix_dump` / :func:`nix_add` — the real Nix as the reference;
* :func:`make_nar` — raw NAR token streams (for malicious NARs no writer emits);
* :func:`start_server` — ``python -m tvixd.store.serve`` as a subprocess.
"""

from __future__ import annotations

import base64
import os
import random
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import blake3

from clients.castore.model import B3Digest, DirectoryNode, FileNode, Node, SymlinkNode
from nixcompat.nar.model import encode_str, u64
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent.parent
MiB = 1 << 20


def rich_tree(root: Path, seed: int = 7) -> Path:
    """Create the rich test tree at ``root`` (which must not exist); returns ``root``."""
    rng = random.Random(seed)
    root.mkdir()
    (root / "hello.txt").write_text("Hello, world!\n")
    (root / "empty").write_bytes(b"")
    script = root / "bin" / "run.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    empty_exec = root / "bin" / "empty-exec"
    empty_exec.write_bytes(b"")
    empty_exec.chmod(0o700)
    group_x = root / "bin" / "group-x-only"  # Nix looks at the owner's x bit only
    group_x.write_bytes(b"not executable for nix\n")
    group_x.chmod(0o654)
    (root / "empty-dir").mkdir()
    (root / "nested" / "deeper" / "deepest").mkdir(parents=True)
    (root / "nested" / "deeper" / "file").write_bytes(b"\x00\x01\x02 binary \xff")
    (root / "unicode-ñame-✓").write_text("unicode\n")
    (root / "日本語").mkdir()
    (root / "日本語" / "ファイル").write_text("こんにちは\n")
    for name in ("B", "a", "a-b", "a.b", "a_b", "Z", "aa"):  # sort order is by bytes
        (root / "sorting" / name).parent.mkdir(exist_ok=True)
        (root / "sorting" / name).write_text(name)
    (root / "link-rel").symlink_to("hello.txt")
    (root / "link-abs").symlink_to("/nix/store/somewhere-else")
    (root / "link-dangling").symlink_to("does/not/exist")
    (root / "link-dir").symlink_to("nested")
    (root / "sizes").mkdir()
    for size in (1, 7, 8, 9, MiB - 1, MiB, MiB + 1):
        (root / "sizes" / f"size-{size}").write_bytes(rng.randbytes(size))
    (root / "big.bin").write_bytes(rng.randbytes(3 * MiB))
    (root / "dup-1").write_bytes(b"same contents\n")  # deduplicated blobs
    (root / "dup-2").write_bytes(b"same contents\n")
    return root


def materialize(spec: dict[str, Any], path: Path) -> None:
    """Create the vectors' declarative ``node`` at ``path``."""
    kind = spec["type"]
    if kind == "directory":
        path.mkdir()
        for name, child in spec["entries"].items():
            materialize(child, path / name)
    elif kind == "symlink":
        path.symlink_to(spec["target"])
    else:
        data = (
            spec["contents"].encode()
            if "contents" in spec
            else base64.b64decode(spec["contents_b64"])
        )
        path.write_bytes(data)
        path.chmod(0o755 if spec["executable"] else 0o644)


def node_from_json(spec: dict[str, Any], name: bytes = b"") -> Node:
    """A castore node from castore_directories.json's ``root_node`` form."""
    if spec["type"] == "directory":
        return DirectoryNode(name, bytes.fromhex(spec["digest"]), spec["size"])
    if spec["type"] == "file":
        return FileNode(name, bytes.fromhex(spec["digest"]), spec["size"], spec["executable"])
    return SymlinkNode(name, spec["target"].encode())


def nix_dump(path: Path) -> bytes:
    """``nix-store --dump path``."""
    nix_store = require_tool("nix-store")
    return subprocess.run([nix_store, "--dump", str(path)], capture_output=True, check=True).stdout


def nix_add(paths: list[Path]) -> list[str]:
    """``nix-store --add`` of several paths in one call; their store paths, in order."""
    nix_store = require_tool("nix-store")
    out = subprocess.run(
        [nix_store, "--add", *map(str, paths)], capture_output=True, check=True, text=True
    ).stdout
    return out.split()


def make_nar(*tokens: bytes | int) -> bytes:
    """A NAR from raw tokens: ``bytes`` are NAR strings, ``int`` a bare u64 (a file size)."""
    return b"".join(u64(t) if isinstance(t, int) else encode_str(t) for t in tokens)


def blob_files(root: Path) -> list[Path]:
    """The committed blob files of an objectstore directory (not its temp files)."""
    return [p for p in root.glob("??/*") if p.is_file()]


def corrupt_blobs(root: Path) -> list[Path]:
    """Blob files whose contents do not hash to their name."""
    return [
        p
        for p in blob_files(root)
        if B3Digest(blake3.blake3(p.read_bytes()).digest()).hex() != p.name
    ]


#: Script text for a Python subprocess: a blob writer process it starts takes blobs at once
#: (a sink goes on writing itself until its writer said hello, ~0.1 s; a short test would
#: be over by then).
WRITER_READY_AT_START = """
import time
from tvixd.castore.blobs import writer

start = writer.WriterProcess.__init__


def started_and_ready(self, *args):
    start(self, *args)
    deadline = time.monotonic() + 30
    while not self.ready() and time.monotonic() < deadline:
        time.sleep(0.002)


writer.WriterProcess.__init__ = started_and_ready
"""


def blob_writer_pids(root: Path) -> set[str]:
    """Pids of live blob writer processes (``tvixd.castore.blobs.writer``) for the
    objectstore at ``root`` (an orphaned one included; a zombie has no command line)."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tvixd.castore.blobs.writer" in argv and str(root).encode() in argv:
            found.add(pid)
    return found


def python_env() -> dict[str, str]:
    """The environment for Python subprocesses: the checkout importable, no user socket."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.pop("TVIXD_SOCKET", None)
    return env


def tvixctl(
    *args: str, socket: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``tvixctl`` (as ``python -m clients.tvixctl``) and return the finished process."""
    extra = ["--socket", str(socket)] if socket is not None else []
    argv = [sys.executable, "-m", "clients.tvixctl", *args, *extra]
    environment = {**python_env(), **(env or {})}
    return subprocess.run(argv, capture_output=True, env=environment, timeout=60, check=False)


def store_urls(state: Path) -> list[str]:
    """Backend arguments for a persistent store under ``state``."""
    return [
        "--blob-service",
        f"objectstore+file://{state}/blobs",
        "--directory-service",
        f"sqlite://{state}/store.db",
        "--path-info-service",
        f"sqlite://{state}/store.db",
    ]


@contextmanager
def start_server(socket: Path, state: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m tvixd.store.serve`` on ``socket`` with a store under ``state``, until the block ends.

    Waits for the server's ``ready`` line (10 s deadline); stops it with
    SIGTERM (then SIGKILL) unless the block already ended it.
    """
    argv = [sys.executable, "-m", "tvixd.store.serve", "--listen", f"unix:{socket}"]
    argv += [*store_urls(state), "--log-level", "WARNING", "--grace", "2"]
    state.mkdir(parents=True, exist_ok=True)
    with (state / "server.log").open("ab") as log:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=python_env())
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 10
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                raise AssertionError("the store server did not become ready within 10 s")
        line = process.stdout.readline().decode()
        if not line.startswith("ready "):
            process.wait(timeout=10)
            log_text = (state / "server.log").read_text(errors="replace")
            raise AssertionError(f"the store server failed to start: {line!r} {log_text}")
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def stored(*services: object) -> int:
    """How many items memory:// blob/directory/path-info services hold (0: nothing stored)."""
    total = 0
    for service in services:
        for attr in ("_blobs", "_directories", "_infos"):
            total += len(getattr(service, attr, {}))
    return total


def listdir(path: Path) -> list[str]:
    """The names in ``path`` (a helper so async tests can check a directory is empty)."""
    return sorted(os.listdir(path))


def malicious_nars() -> list[tuple[str, bytes]]:
    """NARs no writer emits: traversal names, a file under a symlink, unsorted entries, …"""
    magic = b"nix-archive-1"

    def entry(name: bytes, *node: bytes | int) -> list[bytes | int]:
        return [b"entry", b"(", b"name", name, b"node", *node, b")"]

    regular: list[bytes | int] = [b"(", b"type", b"regular", b"contents", 1]  # 1 byte: "x"
    link: list[bytes | int] = [b"(", b"type", b"symlink", b"target", b"/etc", b")"]

    def directory(*entries: list[bytes | int]) -> list[bytes | int]:
        return [b"(", b"type", b"directory", *(t for e in entries for t in e), b")"]

    def nar(*tokens: bytes | int) -> bytes:
        # a regular file's contents are one raw byte "x" padded: inject after the size
        out = bytearray()
        for token in tokens:
            out += make_nar(token)
            if token == 1:
                out += b"x" + bytes(7)
        return bytes(out)

    one_file = [*regular, b")"]
    return [
        ("dotdot", nar(magic, *directory(entry(b"..", *one_file)))),
        ("dot", nar(magic, *directory(entry(b".", *one_file)))),
        ("traversal-slash", nar(magic, *directory(entry(b"../etc/passwd", *one_file)))),
        ("absolute-name", nar(magic, *directory(entry(b"/etc", *one_file)))),
        (
            "file-under-symlink",
            nar(
                magic,
                *directory(entry(b"l", *link), entry(b"l", *directory(entry(b"f", *one_file)))),
            ),
        ),
        (
            "unsorted",
            nar(magic, *directory(entry(b"b", *one_file), entry(b"a", *one_file))),
        ),
        ("nul-name", nar(magic, *directory(entry(b"a\0b", *one_file)))),
        ("empty-name", nar(magic, *directory(entry(b"", *one_file)))),
        ("trailing-data", nar(magic, *one_file) + b"garbage!"),
    ]
