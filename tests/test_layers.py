"""The import direction of DESIGN.md: proto, nixcompat, fsm are leaves; clients builds on them; tvixd on all.

Checked twice: by import-linter (the contract in pyproject.toml) and by a
small AST walk here, which also names the offending file and line.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED: dict[str, set[str]] = {
    "proto": set(),
    "nixcompat": set(),
    "fsm": set(),
    "clients": {"proto", "nixcompat"},
    "tvixd": {"proto", "nixcompat", "fsm", "clients"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_bytes(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_no_import_breaks_the_layers() -> None:
    violations = []
    for package, allowed in ALLOWED.items():
        for path in (ROOT / package).rglob("*.py"):
            for line, target in _imports(path):
                if target in ALLOWED and target != package and target not in allowed:
                    violations.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not violations, "layer violations:\n" + "\n".join(violations)


def test_import_linter_contract_holds() -> None:
    # next to our interpreter (the venv), whatever PATH says
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which(
        "lint-imports"
    )
    if exe is None:
        pytest.fail("lint-imports (import-linter) is not installed; run ./dev test")
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
