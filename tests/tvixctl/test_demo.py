"""The README's demo command, ``./dev demo``, on a fresh state directory — and Nix as the reference.

``./dev demo`` installs what is missing and then runs ``python -m
tvixd.demo``: a real tvixd with the embedded default backends (objectstore
blobs, SQLite, the runc builder, the Nix evaluator) builds examples/demo.nix
through ``tvixctl build -o``.  Here ``./dev`` runs with ``TVIXD_VENV``
pointing at a stand-in for ``.venv`` that is already "installed" (so
nothing is downloaded); everything after that is the real thing.  The
result must be what ``nix-build`` makes of the same file: the same store
path, the same NAR hash, the same files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.tvixctl.helpers import ROOT, environment

pytestmark = [pytest.mark.nix, pytest.mark.runc, pytest.mark.slow]

GREETING = "Hello, world! Greetings from five derivations in examples/demo.nix."


def tree(root: Path) -> dict[str, tuple[str, bool, bytes]]:
    """``relative path -> (type, executable, contents or symlink target)`` of everything under root."""
    entries = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            entries[name] = ("symlink", False, os.readlink(path).encode())
        elif path.is_dir():
            entries[name] = ("directory", False, b"")
        else:
            entries[name] = ("file", os.access(path, os.X_OK), path.read_bytes())
    return entries


def nix_build_demo() -> str:
    """``nix-build examples/demo.nix`` (the reference; no substituters): its output path."""
    require_tool("nix-build")
    done = subprocess.run(
        ["nix-build", "--no-out-link", "--option", "substituters", "", "examples/demo.nix"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=100,
    )  # fmt: skip
    return done.stdout.strip()


def fake_venv(directory: Path) -> Path:
    """A stand-in for ``.venv`` that ``./dev`` takes as installed: ``bin/python`` is this Python."""
    (directory / "bin").mkdir(parents=True)
    python = directory / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    (directory / ".tvixd-installed").touch()  # newer than pyproject.toml: no pip install
    return directory


def test_dev_demo_builds_what_nix_builds(tmp_path: Path) -> None:
    require_tool("runc")
    require_tool("nix-instantiate")
    reference = nix_build_demo()
    state = tmp_path / "state"
    env = environment(TVIXD_VENV=str(fake_venv(tmp_path / "venv")))
    done = subprocess.run(
        [str(ROOT / "dev"), "demo", "--state-dir", str(state)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "--listen unix:" in out
    assert "$ tvixctl build --socket " in out
    assert f"{ROOT}/examples/demo.nix -o {state}/result" in out
    assert reference in out.splitlines()  # the output path tvixctl printed is Nix's
    assert f"$ {state}/result/bin/hello\n{GREETING}\n" in out
    assert f"    | {GREETING}" in out  # the result's files are shown
    assert "5 derivations: 5 built, 0 present" in done.stderr  # tvixctl's progress

    result = state / "result"
    assert tree(result) == tree(Path(reference))
    nix_hash = subprocess.run(
        ["nix-hash", "--type", "sha256", "--base32", str(result)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    reference_hash = subprocess.run(
        ["nix-store", "--query", "--hash", reference], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert f"sha256:{nix_hash}" == reference_hash  # the same NAR, byte for byte

    # The state persists: a second run is answered by the store.
    again = subprocess.run(
        [sys.executable, "-m", "tvixd.demo", "--state-dir", str(state)],
        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=100, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 derivation: 0 built, 1 present" in again.stderr
    assert tree(result) == tree(Path(reference))
    assert (state / "tvixd.log").read_text().count("tvixd ready") == 2
