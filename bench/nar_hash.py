"""Benchmark: NAR hashing of a directory tree, ours vs raw hashlib vs Nix.

Creates a tree of a few hundred files of mixed sizes in a temporary directory
(300 MiB; ``--quick``: 50 MiB), warms the page cache, then measures in the
same run, best of ``--repeat``:

(a) raw: single-thread ``hashlib.sha256`` over the same file contents, read
    from the page cache with ``readinto`` in 1 MiB chunks — the ceiling;
(b) ours: ``nixcompat.nar.nar_hash_path`` (NAR framing + contents);
(c) nix: ``nix hash path --type sha256`` (a process, like ``nix-store --dump | sha256sum``).

Prints MiB/s, ours/raw (target >= 0.70) and ours/nix; ``--json PATH`` writes
the results.  Run: ``.venv/bin/python bench/nar_hash.py --quick``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nixcompat.nar import nar_hash_path

MiB = 1 << 20


def make_tree(root: Path, total: int, seed: int = 1) -> list[Path]:
    """Files of mixed sizes (mostly small, some medium, a few large) adding up to ``total``."""
    rng = random.Random(seed)
    files: list[Path] = []
    written = 0
    while written < total:
        kind = rng.random()
        if kind < 0.75:
            size = rng.randint(0, 64 * 1024)
        elif kind < 0.97:
            size = rng.randint(128 * 1024, 2 * MiB)
        else:
            size = rng.randint(4 * MiB, 16 * MiB)
        size = min(size, total - written)
        n = len(files)
        path = root / f"d{n % 7}" / f"s{n % 3}" / f"file{n:04d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        if n % 5 == 0:
            path.chmod(0o755)
        files.append(path)
        written += size
    (root / "link").symlink_to("d0/s0/file0000")
    return files


def raw_sha256(files: list[Path]) -> int:
    """sha256 of all contents, read like nar_hash_path reads them; returns bytes hashed."""
    h = hashlib.sha256()
    buf = bytearray(MiB)
    view = memoryview(buf)
    total = 0
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
                total += n
    h.digest()
    return total


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def nix_hash(root: Path) -> str:
    nix = shutil.which("nix")
    if nix is None:
        raise SystemExit("nix is not installed (./dev test installs it)")
    cmd = [nix, "--extra-experimental-features", "nix-command", "hash", "path"]
    return subprocess.run(
        [*cmd, "--type", "sha256", "--base16", str(root)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 MiB instead of 300 MiB")
    parser.add_argument("--size-mib", type=float, help="tree size in MiB (overrides --quick)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    size_mib = args.size_mib if args.size_mib is not None else (50 if args.quick else 300)

    with tempfile.TemporaryDirectory(prefix="nar-hash-bench-") as tmp:
        root = Path(tmp) / "tree"
        files = make_tree(root, int(size_mib * MiB))
        raw_sha256(files)  # warm the page cache
        t_raw, content = best_of(args.repeat, lambda: raw_sha256(files))
        t_ours, (digest, nar_size) = best_of(args.repeat, lambda: nar_hash_path(root))
        t_nix, nix_hex = best_of(args.repeat, lambda: nix_hash(root))

    if digest.hex() != nix_hex:
        raise SystemExit(f"hash mismatch: ours {digest.hex()} vs nix {nix_hex}")
    rows = [
        ("raw hashlib.sha256", content, t_raw),
        ("nixcompat nar_hash_path", nar_size, t_ours),
        ("nix hash path", nar_size, t_nix),
    ]
    print(f"tree: {len(files)} files, {content / MiB:.1f} MiB contents, NAR {nar_size} bytes")
    print(f"{'what':<26}{'MiB':>9}{'seconds':>10}{'MiB/s':>10}")
    for name, nbytes, secs in rows:
        print(f"{name:<26}{nbytes / MiB:>9.1f}{secs:>10.3f}{nbytes / MiB / secs:>10.0f}")
    mibs = {name: nbytes / MiB / secs for name, nbytes, secs in rows}
    ours_raw = mibs["nixcompat nar_hash_path"] / mibs["raw hashlib.sha256"]
    ours_nix = mibs["nixcompat nar_hash_path"] / mibs["nix hash path"]
    print(f"ours/raw: {ours_raw:.2f} (target >= 0.70)   ours/nix: {ours_nix:.2f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "files": len(files),
                    "content_bytes": content,
                    "nar_size": nar_size,
                    "nar_sha256": nix_hex,
                    "seconds": {name: secs for name, _, secs in rows},
                    "mib_per_s": mibs,
                    "ours_over_raw": ours_raw,
                    "ours_over_nix": ours_nix,
                    "repeat": args.repeat,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
