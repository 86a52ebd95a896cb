"""Differential NAR tests against the real Nix 2.8 (``nix-store --dump/--restore``, ``nix hash path``)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from nixcompat.nar import (
    NarError,
    NarNode,
    dump_path,
    nar_bytes,
    nar_from_path,
    nar_hash_path,
    read_nar,
    read_tree,
    restore_nar,
)
from tests.conftest import require_tool
from tests.nixcompat.test_nar import TREES, materialise, tree_from_spec, trees

pytestmark = pytest.mark.nix


def nix_dump(path: Path | bytes) -> bytes:
    return subprocess.run(
        [require_tool("nix-store"), "--dump", os.fsencode(path)], capture_output=True, check=True
    ).stdout


def nix_hash_paths(paths: list[Path]) -> list[str]:
    """``nix hash path`` of many paths in one call (one hex digest per line)."""
    out = subprocess.run(
        [
            require_tool("nix"),
            "--extra-experimental-features",
            "nix-command",
            "hash",
            "path",
            "--type",
            "sha256",
            "--base16",
            *map(str, paths),
        ],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    return out.split()


def _write(path: Path | bytes, data: bytes, mode: int = 0o644) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _rich(root: Path) -> None:
    """Most of what a NAR can hold, in one directory."""
    root.mkdir()
    _write(root / "regular", b"hello\n")
    _write(root / "exec", b"#!/bin/sh\nexit 0\n", 0o755)
    _write(root / "owner-x-only", b"x", 0o700)
    _write(root / "group-x-only", b"x", 0o654)
    _write(root / "empty", b"")
    _write(root / "empty-exec", b"", 0o755)
    (root / "pad").mkdir()
    for n in range(18):
        _write(root / "pad" / f"size{n}", bytes(range(n)))
    os.symlink("regular", root / "rel-link")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("no/such/file", root / "dangling")
    os.symlink("sub", root / "dir-link")
    os.symlink("t" * 4000, root / "long-target")
    (root / "sub" / "inner" / "deeper").mkdir(parents=True)
    _write(root / "sub" / "inner" / "deeper" / "file", b"deep\n")
    (root / "empty-dir").mkdir()
    (root / "nested-empty" / "a" / "b").mkdir(parents=True)
    for name in ["räksmörgås", "日本語", "🌮", "with space", "new\nline", 'q"uote', "back\\slash"]:
        _write(root / name, name.encode())
    # names whose byte order differs from their (surrogate-escaped) str order
    for raw in [b"\xff", b"\xf5x", "\ue000".encode(), "\U0001f32e\U0001f32e".encode(), b"Z", b"a"]:
        _write(os.fsencode(root) + b"/" + raw, raw)
    _write(root / ("n" * 255), b"longest name")
    _write(root / "big", random.Random(7).randbytes(3 * 2**20 + 12345))


def _single(kind: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        if kind == "file":
            _write(path, b"just a file\n")
        elif kind == "exec":
            _write(path, b"#!/bin/sh\n", 0o755)
        elif kind == "empty":
            _write(path, b"")
        elif kind == "empty-dir":
            path.mkdir()
        else:
            os.symlink({"rel": "x/y", "abs": "/nix/store", "dangling": "missing"}[kind], path)

    return make


def _vector(spec: dict[str, Any]) -> Callable[[Path], None]:
    return lambda path: materialise(tree_from_spec(spec), path)


CASES: dict[str, Callable[[Path], None]] = {
    "rich": _rich,
    **{
        f"root-{k}": _single(k)
        for k in ("file", "exec", "empty", "empty-dir", "rel", "abs", "dangling")
    },
    **{f"vector-{v['id']}": _vector(v["tree"]) for v in TREES},
}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, bytes]]:
    """Every case built on disk, with Nix's dump of it."""
    base = tmp_path_factory.mktemp("nar-nix")
    made = {}
    for name, make in CASES.items():
        make(base / name)
        made[name] = (base / name, nix_dump(base / name))
    return made


@pytest.mark.parametrize("case", list(CASES))
def test_dump_equals_nix_store_dump(case: str, made: dict[str, tuple[Path, bytes]]) -> None:
    path, nix = made[case]
    assert dump_path(path) == nix
    assert b"".join(nar_from_path(path, chunk_size=65536)) == nix


def test_hash_equals_nix_hash_path(made: dict[str, tuple[Path, bytes]]) -> None:
    names = list(made)
    nix_hashes = nix_hash_paths([made[n][0] for n in names])
    assert len(nix_hashes) == len(names)
    for name, nix_hex in zip(names, nix_hashes, strict=True):
        path, nix = made[name]
        assert nar_hash_path(path) == (bytes.fromhex(nix_hex), len(nix)), name
        assert hashlib.sha256(nix).hexdigest() == nix_hex


def test_rich_tree_has_a_big_file(made: dict[str, tuple[Path, bytes]]) -> None:
    sizes = [e.size for e in read_nar(made["rich"][1]) if e.path == (b"big",)]
    assert sizes
    assert sizes[0] >= 3 * 2**20


@pytest.mark.parametrize("case", list(CASES))
def test_reader_roundtrips_nix_dumps(case: str, made: dict[str, tuple[Path, bytes]]) -> None:
    nix = made[case][1]
    assert nar_bytes(read_tree(nix)) == nix


@pytest.mark.parametrize("case", ["rich", "root-exec", "root-dangling", "vector-symlinks"])
def test_our_restore_of_nix_dump_dumps_back_identically(
    case: str, made: dict[str, tuple[Path, bytes]], tmp_path: Path
) -> None:
    nix = made[case][1]
    restore_nar(nix, tmp_path / "restored")
    assert nix_dump(tmp_path / "restored") == nix


def test_nix_restores_our_nar(made: dict[str, tuple[Path, bytes]], tmp_path: Path) -> None:
    ours = dump_path(made["rich"][0])
    subprocess.run(
        [require_tool("nix-store"), "--restore", str(tmp_path / "by-nix")], input=ours, check=True
    )
    assert dump_path(tmp_path / "by-nix") == ours


def test_unsupported_file_type_fails_like_nix(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "fifo")
    nix = subprocess.run(
        [require_tool("nix-store"), "--dump", str(tmp_path / "d")], capture_output=True, check=False
    )
    assert nix.returncode != 0
    assert b"unsupported type" in nix.stderr
    with pytest.raises(NarError, match="unsupported file type"):
        dump_path(tmp_path / "d")


@given(trees)
@settings(max_examples=25, deadline=None)
def test_random_trees_serialise_like_nix(tree: NarNode) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        materialise(tree, Path(tmp) / "t")
        assert nix_dump(Path(tmp) / "t") == nar_bytes(tree)


def test_bench_runs_and_agrees_with_nix(tmp_path: Path) -> None:
    """Keeps bench/nar_hash.py working (it exits non-zero when our hash differs from Nix's)."""
    require_tool("nix")
    bench = Path(__file__).resolve().parents[2] / "bench" / "nar_hash.py"
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(bench), "--size-mib", "2", "--repeat", "1", "--json", str(out)],
        check=True,
        capture_output=True,
    )
    result = json.loads(out.read_text())
    assert result["content_bytes"] == 2 * 2**20
    assert result["nar_size"] > result["content_bytes"]
    assert set(result["mib_per_s"]) == {
        "raw hashlib.sha256",
        "nixcompat nar_hash_path",
        "nix hash path",
    }
