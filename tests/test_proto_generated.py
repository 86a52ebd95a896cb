"""The committed betterproto bindings in proto/gen are what the pinned compiler makes of proto/defs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "proto" / "gen"


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_bindings_are_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh, committed = _tree(tmp_path), _tree(GEN)
    stale = sorted(
        name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )
    assert not stale, (
        f"proto/gen is stale in {stale}; run `.venv/bin/python scripts/gen_proto.py` and commit the result"
    )


def test_generated_files_are_marked_do_not_edit() -> None:
    for path in GEN.rglob("v1/__init__.py"):
        assert "DO NOT EDIT" in path.read_text().splitlines()[0], path
