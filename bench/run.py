"""Run every benchmark side by side with Nix, print one table, write the results.

``.venv/bin/python bench/run.py [--quick] [--only NAME ...] [--out DIR]`` runs,
each as its own process (one failing does not stop the others):

=================  ====================================================
``graph``          :mod:`bench.graph` — graph build, no-op rebuild, coordinator overhead
``lookup``         :mod:`bench.lookup` — path-info lookups per second
``store_ingest``   ``bench/store_ingest.py`` — ingest of a large tree
``nar_hash``       ``bench/nar_hash.py`` — NAR hashing
=================  ====================================================

then writes ``DIR/<date>-<host>.json`` (every figure, the machine, what failed)
and ``DIR/<date>-<host>.md`` (the tables), and prints the Markdown.  ``DIR``
defaults to ``bench/results``.  ``--render RESULTS.json`` only writes the
Markdown of an earlier run again.  Timings are never asserted anywhere: the
targets are reported as met or missed.  Nix's sandbox needs root.

It first syncs and waits ``--settle`` seconds (370; 0 with ``--quick``): on
ext4 without a journal, files created within ~6 minutes of a mass delete —
such as the previous run's cleanup — cost far more CPU (the allocator skips
every recently deleted inode), which the benches would otherwise measure
(``bench/store_ingest.py`` waits again, after the benches before it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PYTHON, ROOT, machine

__all__ = ["BENCHES", "TARGETS", "main", "markdown", "targets"]

BENCH_DIR = Path(__file__).resolve().parent
BENCHES = ("graph", "lookup", "store_ingest", "nar_hash")
TARGETS = {
    "graph_build_ratio": 1.5,
    "dummy_ms_per_drv": 2.0,
    "noop_s": 0.5,
}
"""Graph build (1000, OCI) ≤ 1.5x Nix; coordinator overhead ≤ 2 ms/derivation; no-op ≤ 0.5 s."""


def run_bench(name: str, quick: bool, extra: list[str], work: Path) -> dict[str, Any]:
    """Run ``bench/<name>.py``; ``{"seconds", "output", "result" | "error"}``."""
    out = work / f"{name}.json"
    argv = [PYTHON, str(BENCH_DIR / f"{name}.py"), "--json", str(out), *extra]
    if quick:
        argv.append("--quick")
    print(f"== {name}: {' '.join(argv[1:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    print(proc.stdout, end="", flush=True)
    entry: dict[str, Any] = {"seconds": seconds, "output": proc.stdout}
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        print(f"!! {name} failed (exit {proc.returncode}):\n{tail}", flush=True)
        entry["error"] = f"exit {proc.returncode}: {tail}"
    else:
        entry["result"] = json.loads(out.read_text())
    return entry


def _largest(results: dict[str, Any], *, refs: bool) -> dict[str, Any] | None:
    graphs = results.get("graph", {}).get("result", {}).get("graphs", [])
    graphs = [g for g in graphs if g.get("refs", True) is refs]
    return max(graphs, key=lambda g: g["nodes"]) if graphs else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets on the largest graph measured (and the graph build on the largest shallow
    one), each with its figure and verdict."""
    g = _largest(results, refs=True)
    if g is None:
        return []
    n = g["nodes"]
    rows: list[dict[str, Any]] = []

    def add(what: str, value: float | None, goal: float, unit: str, note: str = "") -> None:
        met = None if value is None else value <= goal
        rows.append(
            {"target": what, "value": value, "goal": goal, "unit": unit, "met": met, "note": note}
        )

    add(
        f"graph build, {n} derivations, OCI builder: tvixd / sandboxed nix-build",
        g.get("tvixd_over_nix_build"),
        TARGETS["graph_build_ratio"],
        "x",
        "tvixd {:.1f} s vs Nix {:.1f} s".format(g["tvixd_build_s"], g["nix_build_s"])
        if "tvixd_over_nix_build" in g
        else "not measured",
    )
    shallow = _largest(results, refs=False)
    if shallow is not None:
        add(
            f"graph build, {shallow['nodes']} derivations, shallow (outputs refer to nothing), "
            "OCI builder: tvixd / sandboxed nix-build",
            shallow.get("tvixd_over_nix_build"),
            TARGETS["graph_build_ratio"],
            "x",
            "tvixd {:.1f} s vs Nix {:.1f} s".format(
                shallow["tvixd_build_s"], shallow["nix_build_s"]
            )
            if "tvixd_over_nix_build" in shallow
            else "not measured",
        )
    add(
        f"coordinator overhead with dummy://, {n} derivations (coordinator alone, wall minus eval)",
        g["alone_ms_per_drv_minus_eval"],
        TARGETS["dummy_ms_per_drv"],
        "ms/drv",
        "CPU {:.2f} ms/drv; memory stores, no gRPC".format(g["alone_cpu_ms_per_drv"]),
    )
    own_eval = "dummy_ms_per_drv_minus_job_eval" in g  # results from before it lack it
    add(
        f"coordinator overhead with dummy://, {n} derivations (through the daemon, wall minus "
        + ("the job's own evaluation)" if own_eval else "eval)"),
        g["dummy_ms_per_drv_minus_job_eval" if own_eval else "dummy_ms_per_drv_minus_eval"],
        TARGETS["dummy_ms_per_drv"],
        "ms/drv",
        "tvixctl build against tvixd (SQLite/objectstore, gRPC watch); daemon CPU "
        "{:.2f} ms/drv".format(g["dummy_cpu_ms_per_drv"])
        + (
            "; minus a separate nix-instantiate instead: {:.2f} ms/drv".format(
                g["dummy_ms_per_drv_minus_eval"]
            )
            if own_eval
            else ""
        ),
    )
    if "tvixd_noop_s" in g:
        add(
            f"no-op rebuild, {n} derivations, including evaluation (tvixctl build)",
            g["tvixd_noop_s"],
            TARGETS["noop_s"],
            "s",
            "at the API {:.2f} s; nix-instantiate alone {:.2f} s; nix-build no-op {:.2f} s".format(
                g["tvixd_noop_api_s"], g["nix_instantiate_again_s"], g["nix_noop_s"]
            ),
        )
    return rows


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> Iterator[str]:
    """The results as Markdown (see the module docstring)."""
    m = report["machine"]
    yield f"# tvixd benchmarks, {report['date']} on {m['host']}"
    yield ""
    command = f"python bench/run.py{' --quick' if report['quick'] else ''}"
    yield f"`{command}`: tvixd and Nix measured in the same run on the same machine."
    yield ""
    yield "| machine | |"
    yield "|---|---|"
    yield f"| CPU | {m['cpu']} ({m['cores']} cores) |"
    yield f"| RAM | {m['memory_bytes'] / 2**30:.1f} GiB |"
    yield f"| kernel / OS | {m['kernel']} / {m['os']} |"
    yield f"| Nix | {m['nix']} |"
    yield f"| runc | {m['runc']} |"
    yield f"| Python | {m['python']} |"
    yield f"| load average at start | {' '.join(f'{x:.2f}' for x in m['load_average'])} |"
    yield f"| commit | {m['git_commit'][:12]}{' (with local changes)' if m['git_dirty'] else ''} |"
    yield ""
    rows = report["targets"]
    if rows:
        yield "## Targets"
        yield ""
        yield "| target | measured | goal | | notes |"
        yield "|---|---|---|---|---|"
        for t in rows:
            verdict = "n/a" if t["met"] is None else "met" if t["met"] else "**missed**"
            yield (
                f"| {t['target']} | {_fmt(t['value'])} {t['unit']} | ≤ {t['goal']} {t['unit']} "
                f"| {verdict} | {t['note']} |"
            )
        yield ""
    results = report["results"]
    graphs = results.get("graph", {}).get("result", {}).get("graphs", [])
    if graphs:
        yield "## Graph build (`bench/graph.py`)"
        yield ""
        yield (
            "Outputs name their inputs, so a derivation's input closure grows by ~10 paths per "
            "layer below it (up to ~N/2 on average); *shallow*: the same graph, outputs refer "
            "to nothing, each build's closure is its direct inputs. All times are wall times of "
            "the whole command; ms/drv are per derivation."
        )
        yield ""
        yield (
            "| derivations | nix-instantiate fresh / again | nix-build sandbox | tvixd OCI "
            "| ratio | no-op nix-build | no-op tvixctl / API | dummy through daemon: wall, "
            "minus the job's evaluation (minus nix-instantiate), daemon CPU "
            "| coordinator alone: minus eval, CPU |"
        )
        yield "|---|---|---|---|---|---|---|---|---|"
        for g in graphs:
            yield (
                f"| {g['nodes']}{'' if g.get('refs', True) else ' shallow'} "
                f"| {_fmt(g['nix_instantiate_s'])} / "
                f"{_fmt(g['nix_instantiate_again_s'])} s | {_fmt(g.get('nix_build_s'))} s "
                f"| {_fmt(g.get('tvixd_build_s'))} s | {_fmt(g.get('tvixd_over_nix_build'))}x "
                f"| {_fmt(g.get('nix_noop_s'))} s | {_fmt(g.get('tvixd_noop_s'))} / "
                f"{_fmt(g.get('tvixd_noop_api_s'))} s | {_fmt(g['dummy_ms_per_drv'])}, "
                f"{_fmt(g.get('dummy_ms_per_drv_minus_job_eval'))} "
                f"({_fmt(g['dummy_ms_per_drv_minus_eval'])}), {_fmt(g['dummy_cpu_ms_per_drv'])} "
                f"ms/drv | {_fmt(g['alone_ms_per_drv_minus_eval'])}, "
                f"{_fmt(g['alone_cpu_ms_per_drv'])} ms/drv |"
            )
        yield ""
    lookup = results.get("lookup", {}).get("result")
    if lookup:
        yield f"## Path-info lookups (`bench/lookup.py`, {lookup['paths']} paths)"
        yield ""
        yield "| clients | tvixd lookups/s | nix-daemon lookups/s | ratio | tvixd CPU per lookup |"
        yield "|---|---|---|---|---|"
        for r in lookup["rates"]:
            yield (
                f"| {r['clients']} | {r['tvixd_per_s']:.0f} | {r['nix_per_s']:.0f} "
                f"| {r['tvixd_over_nix']:.2f} | {r['tvixd_server_cpu_us_per_get']:.0f} µs |"
            )
        yield ""
    for name, title in (
        ("store_ingest", "Store ingest (`bench/store_ingest.py`)"),
        ("nar_hash", "NAR hashing (`bench/nar_hash.py`)"),
    ):
        entry = results.get(name, {})
        if "output" in entry and "result" in entry:
            yield f"## {title}"
            yield ""
            yield "```"
            yield entry["output"].rstrip()
            yield "```"
            yield ""
    failed = [name for name, entry in results.items() if "error" in entry]
    if failed:
        yield "## Failed"
        yield ""
        for name in failed:
            yield f"* `{name}`: {results[name]['error'].splitlines()[0]}"
        yield ""


def rerender(path: Path) -> None:
    """Write ``path``'s Markdown again from the JSON results beside it (no benchmark runs)."""
    report = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".md").write_text("\n".join(markdown(report)) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short version of each")
    parser.add_argument("--only", nargs="+", choices=BENCHES, help="run only these")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="results dir")
    parser.add_argument(
        "--graph-args", default="", help="extra arguments for graph.py (e.g. '--nodes 5 --no-nix')"
    )
    parser.add_argument(
        "--render", type=Path, metavar="RESULTS.json", help="only rewrite the Markdown of a run"
    )
    parser.add_argument(
        "--settle", type=float, help="seconds to wait after a sync first (370; --quick: 0)"
    )
    args = parser.parse_args(argv)
    if args.render:
        rerender(args.render)
        return 0
    settle = args.settle if args.settle is not None else 0.0 if args.quick else 370.0
    if settle:
        print(f"letting the file system settle for {settle:g} s (--settle)", flush=True)
        os.sync()
        time.sleep(settle)
    now = datetime.datetime.now(datetime.UTC)
    report: dict[str, Any] = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "machine": machine(),
        "results": {},
    }
    extra = {"graph": args.graph_args.split()}
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        for name in args.only or BENCHES:
            report["results"][name] = run_bench(name, args.quick, extra.get(name, []), Path(tmp))
    report["targets"] = targets(report["results"])
    text = "\n".join(markdown(report)) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{now:%Y-%m-%d}-{platform.node() or 'host'}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(text)
    print()
    print(text, end="")
    print(f"written: {args.out / stem}.json and .md")
    return 1 if any("error" in entry for entry in report["results"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
