"""Benchmark: building a generated graph of trivial derivations, tvixd vs sandboxed ``nix-build``.

The graph (:func:`graph_deps`, :func:`write_graph`): ``N`` derivations; all
but the last sit in layers of ``--width`` (10), each depending on two
derivations of the layer below (the one at its position and one more, picked
with a fixed seed), so two builders always have work; the last one, the
single root the file evaluates to, depends on every derivation nothing else
depends on.  Each build is ``busybox sh -c 'echo $name $deps > $out'`` — a
small output referring to its inputs, so a derivation's input closure grows
with its depth (~10 paths per layer below it, as closures do in real
package sets) — with a static busybox imported as a Nix source path
(``builtins.path``), the same store path for both sides.  The *shallow*
variant (``--shallow N``) writes ``echo $name > $out``: the same graph, but
no output refers to anything, so every build's closure is its direct
inputs.  Every measured build gets a fresh ``salt``, so both sides really
build.

Measured in one run, for each ``N`` (default 200 and 1000, and 1000 shallow;
``--quick``: 100):

* Nix's evaluation alone: ``nix-instantiate`` with a fresh salt (writes the
  ``.drv`` files) and again (they exist: the floor of any no-op rebuild);
* **graph build**: ``nix-build --option sandbox true`` (``--max-jobs J
  --cores 1``) vs ``tvixctl build`` against a running tvixd (embedded default
  backends, OCI builder, ``--max-jobs J``);
* **no-op rebuild**: the same command again, same salt (Nix: ``nix-build``;
  tvixd: ``tvixctl build``, i.e. evaluation + a lookup of the root);
* **coordinator overhead**: ``tvixctl build`` against a second tvixd with the
  ``dummy://`` builder (builds nothing, outputs empty): wall time per
  derivation, the same minus Nix's own evaluation time, and the daemon's CPU
  time per derivation; and the coordinator alone, in this process
  (:func:`coordinator_alone`: memory stores, ``dummy://``, no gRPC, the same
  file and ``--jobs``), wall minus evaluation and CPU per derivation.

The overhead of every graph (Nix's evaluation, the ``dummy://`` daemon, the
coordinator alone) is measured first, then the real builds of every graph,
and nothing is deleted before the end (:func:`run_all`): the builds and the
cleanups delete thousands of files, and on ext4 without a journal every inode
created in the next minutes skips the recently deleted ones
(``recently_deleted()``), which once doubled the dummy daemon's blob-writing
CPU.  Its overhead subtracts the job's own evaluation (from the
job's events: ``EVALUATING`` to its next state), not the separate
``nix-instantiate`` run (reported beside it).

The no-op rebuild through tvixd is also timed at the API (Submit + Watch
from this process, :func:`api_build`), which leaves out ``tvixctl``'s own
start-up.

Nix's outputs and every ``.drv`` written are deleted afterwards (best effort).
Run: ``.venv/bin/python bench/graph.py --quick`` (as root: Nix's sandbox);
``--json PATH`` writes the results; ``--profile DIR`` runs each daemon under
cProfile and leaves ``DIR/tvixd-<builder>.prof``; ``--only dummy`` measures
the coordinator overhead alone (as ``--no-nix --no-oci``).  The dummy build
through the daemon also reports ``tvixctl``'s own CPU time (it shares the
machine), the 1-minute load average before and after, the daemon's main
thread's CPU (the event loop) apart from its other threads', and the
context switches of all its threads (each hand-over to a worker thread costs
a few).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import betterproto
from grpclib.client import Channel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PYTHON, ROOT, BenchError, TvixDaemon, run, timed
from proto.gen.tvixd import v1 as tvixd_pb
from tvixd.build.dummy import DummyBuildService
from tvixd.castore.blobs.memory import MemoryBlobService
from tvixd.castore.directories.memory import MemoryDirectoryService
from tvixd.coordinator import Coordinator
from tvixd.daemon import tune_gc, tune_threads
from tvixd.eval.nix import NixEvaluator
from tvixd.eval.protocol import NixArg
from tvixd.journal.model import JobSpec, NixFileSource
from tvixd.store.pathinfo.memory import MemoryPathInfoService

__all__ = [
    "GraphRun",
    "Measurement",
    "api_build",
    "coordinator_alone",
    "graph_deps",
    "graph_nix",
    "main",
    "nix_cleanup",
    "run_all",
    "tvixctl_build",
    "write_graph",
]

BUSYBOX = Path("/bin/busybox")


def graph_deps(nodes: int, width: int = 10, seed: int = 1) -> list[list[int]]:
    """``deps[i]``: the earlier derivations derivation ``i`` depends on (see the module docstring)."""
    if nodes < 2 or width < 1:
        raise ValueError(f"need at least 2 nodes and width 1, got nodes={nodes} width={width}")
    rng = random.Random(seed)
    layered = nodes - 1
    deps: list[list[int]] = []
    for i in range(layered):
        layer, pos = divmod(i, width)
        if layer == 0:
            deps.append([])
            continue
        below = (layer - 1) * width
        other = rng.randrange(width - 1) if width > 1 else 0
        picks = {below + pos, below + (pos + 1 + other) % width}
        deps.append(sorted(picks))
    used = {d for ds in deps for d in ds}
    deps.append([i for i in range(layered) if i not in used])
    return deps


def graph_nix(deps: Sequence[Sequence[int]], *, refs: bool = True) -> str:
    """The Nix file for ``deps``: takes ``salt``, evaluates to the last derivation (the root).

    With ``refs`` each output names (refers to) its inputs' outputs.
    """
    script = "echo $name $deps > $out" if refs else "echo $name > $out"
    lines = [
        f"# Generated by bench/graph.py: {len(deps)} trivial derivations, one root.",
        '{ salt ? "" }:',
        "let",
        '  busybox = builtins.path { path = ./busybox; name = "busybox"; };',
        "  mk = name: deps: derivation {",
        "    inherit name salt deps;",
        "    system = builtins.currentSystem;",
        '    builder = "${busybox}/busybox";',
        f'    args = [ "sh" "-c" "{script}" ];',
        "  };",
    ]
    for i, inputs in enumerate(deps):
        names = " ".join(f"n{d}" for d in inputs)
        lines.append(f'  n{i} = mk "n{i}" [ {names} ];')
    lines.append(f"in n{len(deps) - 1}")
    return "\n".join(lines) + "\n"


def write_graph(directory: Path, nodes: int, width: int = 10, *, refs: bool = True) -> Path:
    """``directory/graph-N.nix`` (``graph-N-shallow.nix`` without ``refs``) and the busybox
    beside it; the file's path."""
    tree = directory / "busybox"
    tree.mkdir(parents=True, exist_ok=True)
    target = tree / "busybox"
    if not target.exists():
        shutil.copy2(BUSYBOX, target)
        target.chmod(0o555)
    path = directory / f"graph-{nodes}{'' if refs else '-shallow'}.nix"
    path.write_text(graph_nix(graph_deps(nodes, width), refs=refs))
    return path


def fresh_salt() -> str:
    return os.urandom(8).hex()


# -- Nix -----------------------------------------------------------------------------------------


def nix_instantiate(file: Path, salt: str) -> str:
    """The root ``.drv`` of ``file`` with ``salt`` (written to the store if needed)."""
    argv = ["nix-instantiate", "--option", "substituters", "", str(file), "--argstr", "salt", salt]
    return run(argv).strip()


def nix_build(file: Path, salt: str, jobs: int) -> str:
    """``nix-build`` with Nix's sandbox on; the root's output path."""
    argv = [
        "nix-build", str(file), "--argstr", "salt", salt, "--no-out-link",
        "--option", "sandbox", "true", "--option", "substituters", "",
        "--max-jobs", str(jobs), "--cores", "1",
    ]  # fmt: skip
    return run(argv).strip()


def nix_cleanup(file: Path, salts: Sequence[str]) -> None:
    """Delete the ``.drv`` files and outputs ``file`` made with ``salts`` (best effort)."""
    doomed: list[str] = []
    for salt in salts:
        try:
            root = nix_instantiate(file, salt)
            closure = run(["nix-store", "--query", "--requisites", root]).split()
            drvs = [p for p in closure if p.endswith(".drv")]
            outputs = run(["nix-store", "--query", "--outputs", *drvs]).split()
        except (BenchError, OSError):
            continue
        doomed += [p for p in outputs if os.path.lexists(p)] + drvs
    if doomed:
        subprocess.run(["nix-store", "--delete", *doomed], capture_output=True, check=False)


# -- tvixd ---------------------------------------------------------------------------------------


def tvixctl_build(socket: Path, file: Path, salt: str) -> dict[str, Any]:
    """``tvixctl build FILE --argstr salt SALT --json`` against ``socket``; the final job.

    ``BenchError`` unless the job succeeded.
    """
    argv = [
        PYTHON, "-m", "clients.tvixctl", "build", str(file), "--argstr", "salt", salt,
        "--socket", str(socket), "--json",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("TVIXD_")}
    env["PYTHONPATH"] = str(ROOT)
    job: dict[str, Any] = json.loads(run(argv, env=env).strip().splitlines()[-1])
    if job.get("state") != "succeeded":
        raise BenchError(f"tvixctl build of {file} ended {job.get('state')}: {job.get('error')}")
    return job


async def api_build(socket: Path, file: Path, salt: str) -> str:
    """Submit ``file`` with ``salt`` over ``socket`` and watch the job to its end; its state."""
    channel = Channel(path=str(socket))
    try:
        stub = tvixd_pb.CoordinatorStub(channel)
        nix = tvixd_pb.NixFile(path=str(file), args=[tvixd_pb.NixArg(name="salt", str=salt)])
        job = await stub.submit(tvixd_pb.SubmitRequest(nix_file=nix), timeout=60)
        with anyio.fail_after(3600):
            async for _ in stub.watch(tvixd_pb.WatchRequest(job_id=job.id, follow=True)):
                pass
        final = await stub.get_job(tvixd_pb.GetJobRequest(id=job.id), timeout=60)
        return str(tvixd_pb.JobState(final.state).name)
    finally:
        channel.close()


async def coordinator_alone(file: Path, salt: str, jobs: int, state: Path) -> dict[str, float]:
    """Build ``file`` with a coordinator in this process: memory stores, ``dummy://``, no gRPC.

    ``{"wall_s", "cpu_s", "derivations"}``; CPU is this process's (not nix-instantiate's).
    """
    blobs, directories = MemoryBlobService(), MemoryDirectoryService()
    pathinfos = MemoryPathInfoService()
    evaluator = NixEvaluator(blobs, directories, pathinfos)
    coordinator = Coordinator(
        evaluator=evaluator,
        blobs=blobs,
        directories=directories,
        pathinfos=pathinfos,
        builder=DummyBuildService(blobs),
        journal_path=state / "jobs.db",
        signing_key=None,
        max_jobs=jobs,
    )
    spec = JobSpec(NixFileSource(str(file), (), (NixArg("salt", salt, is_string=True),)))
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(coordinator.run)
            wall, cpu = time.perf_counter(), time.process_time()
            job = await coordinator.submit(spec)
            async for _ in coordinator.watch(job.id):
                pass
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            final = await coordinator.get(job.id)
            tg.cancel_scope.cancel()
    finally:
        await evaluator.close()
    if final.state.value != "succeeded":
        raise BenchError(f"the in-process build of {file} ended {final.state}: {final.error}")
    return {"wall_s": wall, "cpu_s": cpu, "derivations": sum(final.counts.values())}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed_tvixd(daemon: TvixDaemon, file: Path, salt: str) -> tuple[float, float, float, int, str]:
    """``(wall seconds, daemon CPU seconds, tvixctl CPU seconds, derivations counted, job id)``
    of one ``tvixctl build``."""
    cpu, client = daemon.cpu(), _children_cpu()
    wall, job = timed(lambda: tvixctl_build(daemon.socket, file, salt))
    client = _children_cpu() - client
    return wall, daemon.cpu() - cpu, client, sum(job["counts"].values()), str(job["id"])


async def job_evaluation_s(socket: Path, job_id: str) -> float:
    """How long the daemon evaluated job ``job_id`` (``EVALUATING`` to its next state), from
    the job's own events (millisecond timestamps)."""
    channel = Channel(path=str(socket))
    try:
        stub = tvixd_pb.CoordinatorStub(channel)
        started = ended = None
        request = tvixd_pb.WatchRequest(job_id=job_id, follow=False)
        with anyio.fail_after(60):
            async for event in stub.watch(request):
                if betterproto.which_one_of(event, "event")[0] != "job_state":
                    continue
                if event.job_state.state == tvixd_pb.JobState.EVALUATING:
                    started = event.time_unix_ms
                elif started is not None and ended is None:
                    ended = event.time_unix_ms
    finally:
        channel.close()
    if started is None or ended is None:
        raise BenchError(f"job {job_id} has no evaluation in its events")
    return (int(ended) - int(started)) / 1e3


ThreadStats = dict[int, tuple[float, int]]
"""Thread id → (CPU seconds, voluntary + involuntary context switches)."""


def daemon_threads(daemon: TvixDaemon) -> ThreadStats:
    """CPU and context switches of each of the daemon's threads now (from ``/proc``)."""
    assert daemon.process is not None
    pid, ticks, out = daemon.process.pid, os.sysconf("SC_CLK_TCK"), {}
    for name in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{name}/stat").read_text().rpartition(")")[2].split()
            status = Path(f"/proc/{pid}/task/{name}/status").read_text().splitlines()
        except OSError:  # the thread ended meanwhile
            continue
        switches = sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
        out[int(name)] = ((int(fields[11]) + int(fields[12])) / ticks, switches)
    return out


def _thread_delta(before: ThreadStats, after: ThreadStats, daemon: TvixDaemon) -> tuple[float, int]:
    """``(main thread CPU seconds, context switches)`` between two snapshots.

    Context switches of threads that ended in between are not counted
    (anyio's idle worker threads live 10 s, longer than most builds here).
    """
    assert daemon.process is not None
    pid = daemon.process.pid
    main = after[pid][0] - before[pid][0]
    switches = sum(n - before.get(tid, (0.0, 0))[1] for tid, (_, n) in after.items())
    return main, switches


# -- the measurement -----------------------------------------------------------------------------


class GraphRun:
    """The daemons and scratch space of one benchmark run (see :func:`run_all`)."""

    def __init__(self, work: Path, jobs: int, profile: Path | None = None) -> None:
        self.work = work
        self.jobs = jobs
        self.profile = profile
        self._stack = ExitStack()
        self._daemons: dict[str, TvixDaemon] = {}

    def daemon(self, builder: str) -> TvixDaemon:
        """The running daemon with ``builder`` (``oci`` or ``dummy``), started on first use."""
        if builder not in self._daemons:
            work = self.work / f"tvixd-{builder}"
            url = (
                f"oci://{work}/state/builds?max_builds={self.jobs}"
                if builder == "oci"
                else "dummy://"
            )
            profile = self.profile / f"tvixd-{builder}.prof" if self.profile else None
            daemon = TvixDaemon(work, url, max_jobs=self.jobs, profile=profile)
            self._daemons[builder] = self._stack.enter_context(daemon)
        return self._daemons[builder]

    def close(self) -> None:
        self._stack.close()


class Measurement:
    """One graph's figures (a JSON-ready dict), taken in two phases (see :func:`run_all`).

    The ``.drv`` files and outputs of every salt used are deleted by :meth:`cleanup`.
    """

    def __init__(self, graph: GraphRun, nodes: int, *, width: int = 10, refs: bool = True) -> None:
        self.graph = graph
        self.nodes = nodes
        self.file = write_graph(graph.work, nodes, width, refs=refs)
        self.result: dict[str, Any] = {
            "nodes": nodes,
            "width": width,
            "refs": refs,
            "jobs": graph.jobs,
        }
        self.salts: list[str] = []

    def salt(self) -> str:
        self.salts.append(fresh_salt())
        return self.salts[-1]

    def overhead(self) -> None:
        """Nix's evaluation, the ``dummy://`` daemon (build and no-op), the coordinator alone."""
        graph, file, result = self.graph, self.file, self.result
        eval_salt = self.salt()
        result["nix_instantiate_s"], _ = timed(lambda: nix_instantiate(file, eval_salt))
        result["nix_instantiate_again_s"], _ = timed(lambda: nix_instantiate(file, eval_salt))
        daemon, dummy_salt = graph.daemon("dummy"), self.salt()
        result["load_before"] = os.getloadavg()[0]
        threads = daemon_threads(daemon)
        wall, cpu, client, count, job_id = _timed_tvixd(daemon, file, dummy_salt)
        main_cpu, switches = _thread_delta(threads, daemon_threads(daemon), daemon)
        result.update(dummy_build_s=wall, dummy_build_cpu_s=cpu, dummy_derivations=count)
        result.update(dummy_tvixctl_cpu_s=client, load_after=os.getloadavg()[0])
        result.update(dummy_main_thread_cpu_s=main_cpu, dummy_context_switches=switches)
        result["dummy_job_eval_s"] = anyio.run(job_evaluation_s, daemon.socket, job_id)
        wall, cpu, _, _, _ = _timed_tvixd(daemon, file, dummy_salt)
        result.update(dummy_noop_s=wall, dummy_noop_cpu_s=cpu)
        alone_salt, alone_state = self.salt(), graph.work / f"alone-{file.stem}"
        alone = anyio.run(coordinator_alone, file, alone_salt, graph.jobs, alone_state)
        result.update({f"alone_{key}": value for key, value in alone.items()})

    def builds(self, *, nix: bool = True, oci: bool = True) -> None:
        """The real builds: sandboxed ``nix-build`` and tvixd's OCI builder, each with a no-op."""
        graph, file, result = self.graph, self.file, self.result
        if nix:
            nix_salt = self.salt()
            result["nix_build_s"], _ = timed(lambda: nix_build(file, nix_salt, graph.jobs))
            result["nix_noop_s"], _ = timed(lambda: nix_build(file, nix_salt, graph.jobs))
        if oci:
            daemon, oci_salt = graph.daemon("oci"), self.salt()
            wall, cpu, _, count, _ = _timed_tvixd(daemon, file, oci_salt)
            result.update(tvixd_build_s=wall, tvixd_build_cpu_s=cpu, tvixd_derivations=count)
            wall, cpu, _, _, _ = _timed_tvixd(daemon, file, oci_salt)
            result.update(tvixd_noop_s=wall, tvixd_noop_cpu_s=cpu)
            wall, state = timed(lambda: anyio.run(api_build, daemon.socket, file, oci_salt))
            if state != "SUCCEEDED":
                raise BenchError(f"the no-op rebuild through the API ended {state}")
            result["tvixd_noop_api_s"] = wall

    def cleanup(self) -> None:
        nix_cleanup(self.file, self.salts)

    def finished(self) -> dict[str, Any]:
        """The result with the derived figures."""
        return {**self.result, **_derived(self.result, self.nodes)}


def run_all(
    graph: GraphRun,
    runs: Sequence[tuple[int, bool]],
    *,
    width: int = 10,
    nix: bool = True,
    oci: bool = True,
) -> list[dict[str, Any]]:
    """Every figure of the module docstring for each ``(nodes, refs)`` graph.

    The overhead of every graph is measured first, then the real builds, and
    nothing is deleted before the end: the builds and the cleanups delete
    thousands of files, which slows the creation of files near them for
    minutes on ext4 without a journal (see the module docstring).
    """
    measurements: list[Measurement] = []
    try:
        for nodes, refs in runs:
            measurements.append(Measurement(graph, nodes, width=width, refs=refs))
            measurements[-1].overhead()
        for measurement in measurements:
            measurement.builds(nix=nix, oci=oci)
    finally:
        for measurement in measurements:
            measurement.cleanup()
    return [measurement.finished() for measurement in measurements]


def _derived(r: dict[str, Any], nodes: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "dummy_ms_per_drv": r["dummy_build_s"] / nodes * 1e3,
        "dummy_ms_per_drv_minus_eval": (r["dummy_build_s"] - r["nix_instantiate_s"]) / nodes * 1e3,
        "dummy_ms_per_drv_minus_job_eval": (r["dummy_build_s"] - r["dummy_job_eval_s"])
        / nodes
        * 1e3,
        "dummy_cpu_ms_per_drv": r["dummy_build_cpu_s"] / nodes * 1e3,
        "dummy_tvixctl_cpu_ms_per_drv": r["dummy_tvixctl_cpu_s"] / nodes * 1e3,
        "dummy_main_thread_cpu_ms_per_drv": r["dummy_main_thread_cpu_s"] / nodes * 1e3,
        "dummy_context_switches_per_drv": r["dummy_context_switches"] / nodes,
        "alone_ms_per_drv_minus_eval": (r["alone_wall_s"] - r["nix_instantiate_s"]) / nodes * 1e3,
        "alone_cpu_ms_per_drv": r["alone_cpu_s"] / nodes * 1e3,
    }
    if "nix_build_s" in r and "tvixd_build_s" in r:
        out["tvixd_over_nix_build"] = r["tvixd_build_s"] / r["nix_build_s"]
        out["tvixd_over_nix_noop"] = r["tvixd_noop_s"] / r["nix_noop_s"]
    return out


def table(results: Sequence[dict[str, Any]]) -> Iterator[str]:
    """Human-readable lines for :func:`run_all` results."""
    for r in results:
        n = r["nodes"]
        shallow = "" if r["refs"] else ", shallow: outputs refer to nothing"
        yield f"graph of {n} derivations (width {r['width']}, {r['jobs']} build jobs{shallow}):"
        yield (
            f"  nix-instantiate: {r['nix_instantiate_s']:.2f} s fresh, "
            f"{r['nix_instantiate_again_s']:.2f} s again"
        )
        if "nix_build_s" in r and "tvixd_build_s" in r:
            yield (
                f"  build:  tvixd {r['tvixd_build_s']:.2f} s (daemon CPU "
                f"{r['tvixd_build_cpu_s']:.2f} s)  nix-build (sandbox) {r['nix_build_s']:.2f} s  "
                f"ratio {r['tvixd_over_nix_build']:.2f}"
            )
            yield (
                f"  no-op:  tvixd {r['tvixd_noop_s']:.2f} s (at the API "
                f"{r['tvixd_noop_api_s']:.2f} s)  nix-build {r['nix_noop_s']:.2f} s"
            )
        yield (
            f"  dummy:  {r['dummy_build_s']:.2f} s = {r['dummy_ms_per_drv']:.2f} ms/drv "
            f"({r['dummy_ms_per_drv_minus_job_eval']:.2f} ms/drv without the job's own "
            f"evaluation, {r['dummy_job_eval_s']:.2f} s; "
            f"{r['dummy_ms_per_drv_minus_eval']:.2f} without the separate nix-instantiate; "
            f"daemon CPU {r['dummy_cpu_ms_per_drv']:.2f} ms/drv, tvixctl CPU "
            f"{r['dummy_tvixctl_cpu_ms_per_drv']:.2f} ms/drv); no-op {r['dummy_noop_s']:.2f} s "
            f"(1-minute load average {r['load_before']:.2f} before, {r['load_after']:.2f} after)"
        )
        yield (
            f"          daemon main thread {r['dummy_main_thread_cpu_ms_per_drv']:.2f} ms/drv, "
            f"other threads {r['dummy_cpu_ms_per_drv'] - r['dummy_main_thread_cpu_ms_per_drv']:.2f}"
            f" ms/drv; {r['dummy_context_switches_per_drv']:.1f} context switches/drv "
            "(thread hand-offs)"
        )
        yield (
            f"  coordinator alone (memory stores, no gRPC): "
            f"{r['alone_ms_per_drv_minus_eval']:.2f} ms/drv without Nix's evaluation, "
            f"CPU {r['alone_cpu_ms_per_drv']:.2f} ms/drv"
        )


def main(argv: list[str] | None = None) -> int:
    tune_threads()  # the coordinator alone runs as in tvixd: its GIL switch interval
    tune_gc()  # and its garbage collector settings
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one graph of 100 derivations")
    parser.add_argument("--nodes", type=int, nargs="+", help="graph sizes (default 200 1000)")
    parser.add_argument(
        "--shallow",
        type=int,
        nargs="*",
        help="sizes of the shallow variant (default 1000; none with --quick or --nodes)",
    )
    parser.add_argument("--width", type=int, default=10, help="derivations per layer (10)")
    parser.add_argument("--jobs", type=int, default=2, help="builds at a time, both sides (2)")
    parser.add_argument("--no-nix", action="store_true", help="skip nix-build (no sandbox here)")
    parser.add_argument("--no-oci", action="store_true", help="tvixd with the dummy builder only")
    parser.add_argument(
        "--only",
        choices=["dummy"],
        help="dummy: only the coordinator overhead (Nix's evaluation, the dummy:// daemon and "
        "the coordinator alone; as --no-nix --no-oci)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--profile", type=Path, help="write the daemons' cProfiles into DIR")
    args = parser.parse_args(argv)
    if args.only == "dummy":
        args.no_nix = args.no_oci = True
    sizes = args.nodes or ([100] if args.quick else [200, 1000])
    shallow = (
        args.shallow if args.shallow is not None else [] if args.quick or args.nodes else [1000]
    )
    runs = [(n, True) for n in sizes] + [(n, False) for n in shallow]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="graph-bench-") as tmp:
        graph = GraphRun(Path(tmp), args.jobs, args.profile)
        try:
            results = run_all(
                graph, runs, width=args.width, nix=not args.no_nix, oci=not args.no_oci
            )
        finally:
            graph.close()
    for line in table(results):
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"graphs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
