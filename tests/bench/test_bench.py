"""Smoke tests of the benchmarks: they run, on tiny inputs, and write results of the right shape.

No timing is asserted (timings belong in bench/results, not in tests): only
that each figure is there and is a number, that the builds really built every
derivation, and that the generated graph is what the docstring says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.graph import graph_deps, write_graph
from bench.run import markdown, targets
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=110, check=False
    )


@pytest.mark.parametrize(("nodes", "width"), [(2, 1), (5, 2), (23, 10), (200, 10)])
def test_graph_shape(nodes: int, width: int) -> None:
    deps = graph_deps(nodes, width)
    assert len(deps) == nodes
    for i, inputs in enumerate(deps[:-1]):
        assert all(d < i for d in inputs)
        assert len(inputs) <= 2
        if i >= width:
            assert len(inputs) >= 1
    depended = {d for inputs in deps for d in inputs}
    assert depended == set(range(nodes - 1))  # one root; every other derivation is needed


def test_graph_file_evaluates_to_n_derivations(tmp_path: Path) -> None:
    require_tool("nix-instantiate")
    file = write_graph(tmp_path, 12, width=4)
    root = subprocess.run(
        ["nix-instantiate", str(file), "--argstr", "salt", "test-graph-shape"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    closure = subprocess.run(
        ["nix-store", "--query", "--requisites", root], capture_output=True, text=True, check=True
    ).stdout.split()
    drvs = [p for p in closure if p.endswith(".drv")]
    assert len(drvs) == 12
    assert root.endswith("-n11.drv")
    subprocess.run(["nix-store", "--delete", *drvs], capture_output=True, check=False)


@pytest.mark.nix
@pytest.mark.slow
def test_runner_with_a_tiny_graph(tmp_path: Path) -> None:
    """``run.py --only graph`` with 5 derivations, the dummy builder only: both result files."""
    require_tool("nix-instantiate")
    proc = _run(
        "bench/run.py", "--only", "graph", "--out", str(tmp_path), "--settle", "0",
        "--graph-args", "--nodes 5 --no-nix --no-oci",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [json_file] = tmp_path.glob("*.json")
    [md_file] = tmp_path.glob("*.md")
    report = json.loads(json_file.read_text())
    assert set(report["machine"]) >= {"cpu", "cores", "memory_bytes", "kernel", "nix", "python"}
    [graph] = report["results"]["graph"]["result"]["graphs"]
    assert graph["nodes"] == 5
    assert graph["dummy_derivations"] == 5  # tvixd really realised all five
    assert graph["alone_derivations"] == 5
    for key in (
        "nix_instantiate_s", "nix_instantiate_again_s", "dummy_build_s", "dummy_build_cpu_s",
        "dummy_noop_s", "dummy_ms_per_drv", "dummy_ms_per_drv_minus_eval",
        "dummy_cpu_ms_per_drv", "alone_wall_s", "alone_cpu_s", "alone_ms_per_drv_minus_eval",
        "dummy_job_eval_s", "dummy_ms_per_drv_minus_job_eval",
    ):  # fmt: skip
        assert isinstance(graph[key], float), key
    assert 0 < graph["dummy_job_eval_s"] < graph["dummy_build_s"]  # from the job's own events
    assert "nix_build_s" not in graph  # --no-nix
    verdicts = {t["target"].split(",")[0]: t["met"] for t in report["targets"]}
    assert verdicts["graph build"] is None  # not measured: neither met nor missed
    text = md_file.read_text()
    assert "## Targets" in text
    assert "| 5 |" in text
    assert text == "\n".join(markdown(report)) + "\n"


@pytest.mark.nix
@pytest.mark.slow
def test_lookup_bench(tmp_path: Path) -> None:
    """Five paths in both stores, one client each: a rate for both, the same store paths."""
    require_tool("nix-daemon")
    out = tmp_path / "lookup.json"
    proc = _run("bench/lookup.py", "--paths", "5", "--clients", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["paths"] == 5
    [rate] = result["rates"]
    assert rate["clients"] == 1
    assert rate["tvixd_per_s"] > 0
    assert rate["nix_per_s"] > 0


def test_targets_from_a_full_graph_result() -> None:
    graph = {
        "nodes": 1000, "tvixd_over_nix_build": 1.2, "tvixd_build_s": 36.0, "nix_build_s": 30.0,
        "alone_ms_per_drv_minus_eval": 1.5, "alone_cpu_ms_per_drv": 1.4,
        "dummy_ms_per_drv_minus_eval": 6.0, "dummy_cpu_ms_per_drv": 5.0,
        "tvixd_noop_s": 0.6, "tvixd_noop_api_s": 0.1, "nix_instantiate_again_s": 0.06,
        "nix_noop_s": 0.05,
    }  # fmt: skip
    small = {**graph, "nodes": 200, "tvixd_over_nix_build": 9.0}
    shallow = {**graph, "refs": False, "tvixd_over_nix_build": 1.7}
    rows = targets({"graph": {"result": {"graphs": [small, graph, shallow]}}})
    assert [row["met"] for row in rows] == [True, False, True, False, False]  # largest graphs
    assert [row["value"] for row in rows[:2]] == [1.2, 1.7]
    assert "shallow" in rows[1]["target"]
    assert rows[3]["value"] == 6.0  # an older result: minus a separate nix-instantiate
    # with the job's own evaluation time measured, the target uses it (the other is noted)
    timed = {**graph, "dummy_ms_per_drv_minus_job_eval": 1.8}
    [row] = [
        r for r in targets({"graph": {"result": {"graphs": [timed]}}}) if "daemon" in r["target"]
    ]
    assert (row["value"], row["met"]) == (1.8, True)
    assert "own evaluation" in row["target"]
    assert "6.00 ms/drv" in row["note"]
