"""A short, bounded atheris run of every fuzz target in tests/fuzz/.

A crash (any exception other than nixcompat's typed errors) fails the test
and atheris prints the input that caused it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FUZZ_DIR = Path(__file__).parent / "fuzz"
TARGETS = sorted(FUZZ_DIR.glob("fuzz_*.py"))
RUNS = 20000


def test_there_are_fuzz_targets() -> None:
    assert TARGETS, f"no fuzz targets in {FUZZ_DIR}"


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS, ids=[t.stem for t in TARGETS])
def test_fuzz_target_finds_no_crash(target: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(target),
            f"-runs={RUNS}",
            "-max_total_time=60",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, f"{target.name} crashed:\n{proc.stderr[-4000:]}"
